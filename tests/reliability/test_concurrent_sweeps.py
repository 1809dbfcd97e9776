"""Scenario 5: sweeps at once (threads with and without the lock, `payments sweep` processes, beat) void each
stale authorization exactly once; a sweep while the gateway fails defers instead of raising."""
import pytest

from tests.reliability.scenarios import run_concurrent_sweeps

pytestmark = pytest.mark.reliability


def test_concurrent_sweeps_void_each_stale_auth_exactly_once(rel_redis_url, rel_logdir):
    report = run_concurrent_sweeps("sweeps", rel_redis_url, rel_logdir, auths=20, log=print)
    print(report.row(), report.details, dict(report.statuses))
    assert report.problems == []
    assert report.details["open_auths_before"] == 15  # 3 in 4 approve
    assert report.details["sweeps_that_ran"] >= 3  # two lock-free threads plus the lock holder
    assert report.statuses["VOIDED"] == 15 and report.statuses["DECLINED"] == 5
    assert report.duplicates == report.lost == report.not_final == report.card_hits == 0


def test_a_stale_auth_void_closed_by_another_sweeps_reconcile_is_still_voided(rel_redis_url):
    """Two sweeps interleaved: A parks its stale-auth void (every void request fails before reaching the gateway:
    RETRYING), B's reconcile pass finds that void unknown to the gateway and closes it as "not charged". The
    auth is still open: a later sweep must still void it (exactly once), not repeat B's recorded ERROR forever."""
    import time

    from tests.reliability.scenarios import new_key, services_for, settings_for
    from tests.support.env import TEST_CARD
    from tests.support.sandbox import running_sandbox
    from worker.payments.sweep import run_sweep

    with running_sandbox() as sandbox:
        svc = services_for(settings_for(rel_redis_url, sandbox, "payments:stalevoid:", stale_auth_age=1.0,
                                        reconcile_after=3600.0))
        pid = new_key("stale-auth")
        auth = svc.flow.charge("auth", pid, amount="5.00", card=dict(TEST_CARD))
        assert auth["status"] == "APPROVED"
        time.sleep(1.1)
        sandbox.set_faults({"probabilities": {"http_502": 1.0}})  # bp10emu only: stq proves the void absent
        first = run_sweep(svc)  # sweep A: the void is parked (deferred)
        assert first.get("stale_auth_void_deferred") == 1, first
        sandbox.set_faults({})
        # past RECONCILE_AFTER and the commit horizon (3 s here): a 502 may hide a commit until then
        time.sleep(svc.settings.commit_horizon + 1.2)
        parked = svc.store.get(f"{pid}:void-stale")
        assert parked["status"] in ("RETRYING", "UNKNOWN")
        # sweep B, in its reconcile pass (RECONCILE_AFTER of 1 s here), before any stale-auth pass resumes it
        assert svc.flow.reconcile(parked, give_up_after=86400) == "not_charged"
        later = run_sweep(svc)
        print(first, later, svc.store.get(pid)["status"])
        voids = [e for e in sandbox.ledger() if e["trans_type"] == "VOID" and e["status"] == "1"
                 and e["origin"] == auth["trans_id"]]
        assert len(voids) == 1, later
        assert svc.store.get(pid)["status"] == "VOIDED"
