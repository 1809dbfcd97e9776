"""Issue 18: payments through Redis Sentinel failovers (tests/reliability/sentinel_scenarios.py).

CI size: 150 payments through three SIGKILLs of the primary, 60 through one partition (SIGSTOP through a whole
failover); ``python -m tests.reliability.large --payments 1000 --only "Sentinel kills,Sentinel partition"``
runs the 1,000-payment version. Skipped without ``redis-server``.
"""
import shutil

import pytest

from tests.reliability.sentinel_scenarios import (
    run_beat_through_failovers,
    run_flower_through_failover,
    run_sentinel_failovers,
    run_worker_through_failover,
)

pytestmark = [pytest.mark.reliability,
              pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")]


def _check(report, failovers):
    print(report.row(), report.details, dict(report.statuses))
    assert report.problems == []
    assert report.restarts == failovers
    assert report.duplicates == report.lost == report.not_final == report.disagreements == report.card_hits == 0
    assert report.details["captures"] > 0 and report.details["chained"] > 0


def test_three_primary_kills_charge_nothing_twice_and_lose_nothing(rel_logdir):
    report = run_sentinel_failovers("sentinel-kill", rel_logdir, payments=150, failovers=3, mode="kill", log=print)
    _check(report, 3)
    assert report.faults > 0


# Once flaky (a payment left UNKNOWN at the deadline): a worker's UNKNOWN write lost in the failover leaves its attempt
# in flight, which the sweep rightly does not close before the attempt's stamp expired; the wait now counts that
# window (docs/reliability.md, "flakes understood and fixed on 2026-12-08"). Slow: 40-150 s, kept out of CI's
# budget (PAYMENTS_SLOW_TESTS=1).
@pytest.mark.slow
def test_a_partitioned_primary_loses_nothing_when_it_comes_back(rel_logdir):
    report = run_sentinel_failovers("sentinel-pause", rel_logdir, payments=60, failovers=1, mode="pause", log=print)
    _check(report, 1)


def test_beat_keeps_publishing_the_sweep_through_failovers_without_a_restart(rel_logdir):
    report = run_beat_through_failovers("sentinel-beat", rel_logdir, failovers=2, log=print)
    print(report.details)
    assert report.problems == [] and report.restarts == 2 and report.details["beat_alive"]


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "kombu 5.7.0 bug, not ours to fix here (the same as test_redis_restart.py's): a broker connection lost while "
    "the worker holds a message and polls BRPOP ends in AttributeError 'NoneType' object has no attribute "
    "'hostname' (Connection.collect() then close() restoring unacked messages) and the worker exits. A Sentinel "
    "failover is such a loss; celery#6348 and celery#10096 report failover breaking workers too. Run workers under "
    "a supervisor (the failover scenarios above do): the held message stays unacked and comes back"))
def test_a_worker_survives_a_failover_while_it_runs_a_payment(rel_logdir):
    report = run_worker_through_failover("sentinel-survive", rel_logdir)
    print(report.details, report.problems)
    assert report.problems == []


# Slow (~35 s): kept out of CI's 25-minute budget (PAYMENTS_SLOW_TESTS=1); the e2e Flower tests run in CI.
@pytest.mark.slow
def test_flower_shows_tasks_through_the_sentinels_before_and_after_a_failover(rel_logdir):
    report = run_flower_through_failover("sentinel-flower", rel_logdir, log=print)
    assert report.problems == [] and report.restarts == 1 and report.details["flower_alive"]
    assert report.details["broker_page"] == 200
