"""Scenario 2: 30 % of gateway requests (bp10emu and stq) fail in six ways; unknown outcomes end reconciled."""
import pytest

from tests.reliability.scenarios import run_payments_under_chaos

pytestmark = pytest.mark.reliability


def test_gateway_faults_charge_once_and_unknown_outcomes_are_reconciled(rel_redis_url, rel_logdir):
    # OUTAGE_RETRIES=0: a worker that cannot tell an outcome leaves it UNKNOWN at once, for the sweep. The breaker
    # (on by default) off: a run of 5 of these faults would open it and, with no re-queue allowed, end the payments
    # it holds back ERROR unsent, so few faults would be met; this is about each fault's outcome, the breaker's own
    # test is test_gateway_guard.py.
    report = run_payments_under_chaos("faults", rel_redis_url, rel_logdir, payments=300, kill_every=None,
                                      faults=True, rate=20.0, seed=21,
                                      worker_overrides={"OUTAGE_RETRIES": "0", "GATEWAY_BREAKER_FAILURES": "0"},
                                      log=print)
    print(report.row(), report.details, dict(report.statuses))
    assert report.problems == []
    assert report.payments == 300
    assert report.faults >= 60  # ~30 % of some 400+ gateway requests
    assert report.details["adopted_from_stq"] > 0  # charges whose reply was lost were found through stq
    sweeps = report.details["sweeps"]
    assert sweeps.get("reconcile_adopted", 0) + sweeps.get("reconcile_not_charged", 0) > 0
    assert report.duplicates == report.lost == report.not_final == report.card_hits == 0
