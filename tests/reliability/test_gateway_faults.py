"""Scenario 2: 30 % of gateway requests (bp10emu and stq) fail in six ways; unknown outcomes end reconciled."""
import pytest

from tests.reliability.scenarios import run_payments_under_chaos

pytestmark = pytest.mark.reliability


def test_gateway_faults_charge_once_and_unknown_outcomes_are_reconciled(rel_redis_url, rel_logdir):
    # OUTAGE_RETRIES=0: a worker that cannot tell an outcome leaves it UNKNOWN at once, for the sweep.
    report = run_payments_under_chaos("faults", rel_redis_url, rel_logdir, payments=300, kill_every=None,
                                      faults=True, rate=20.0, seed=21, worker_overrides={"OUTAGE_RETRIES": "0"},
                                      log=print)
    print(report.row(), report.details, dict(report.statuses))
    assert report.problems == []
    assert report.payments == 300
    assert report.faults >= 60  # ~30 % of some 400+ gateway requests
    assert report.details["adopted_from_stq"] > 0  # charges whose reply was lost were found through stq
    sweeps = report.details["sweeps"]
    assert sweeps.get("reconcile_adopted", 0) + sweeps.get("reconcile_not_charged", 0) > 0
    assert report.duplicates == report.lost == report.not_final == report.card_hits == 0
