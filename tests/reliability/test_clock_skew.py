"""A worker whose clock runs two minutes ahead (``faketime``) takes no live lease and charges nothing twice.

Seen before exactly-once v2: a worker 115 s ahead took duplicate deliveries of sales another worker had in
flight, judged their leases expired on its own clock, and recorded ERROR over live payments that were charged;
their chained voids were skipped. Leases, ages and the commit horizon now run on Redis server time.
"""
import pytest

from tests.reliability.scenarios import CALENDAR_BEHIND, SKEW, faketime_offset, run_calendar_behind, run_clock_skew

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def skew_seconds():
    offset = faketime_offset(SKEW)
    if offset is None:
        pytest.skip("needs the faketime binary (Debian package: faketime) moving time.time() of a Python process, "
                    "with FAKETIME_DONT_FAKE_MONOTONIC honoured (timed waits return on time)")
    return offset


def test_a_worker_two_minutes_ahead_takes_no_live_lease_and_charges_nothing_twice(rel_redis_url, rel_logdir,
                                                                                  skew_seconds):
    assert 110 <= skew_seconds <= 130
    report = run_clock_skew("skew", rel_redis_url, rel_logdir, in_flight=16, late=6, log=print)
    print(report.row(), report.details, dict(report.statuses))
    print(*report.problems[:100], sep="\n")
    assert report.problems == []
    assert report.payments == 22
    # the duplicates really met calls in flight, and the skewed worker saw them held (it re-queued itself)
    assert report.details["duplicates_published_while_in_flight"] >= 12
    assert report.details["skewed_busy_requeues"] > 0
    # in the late-commit phase the skewed worker took parked sales over (their leases were free) and did not
    # send them again inside the commit horizon; the held requests committed and were adopted through stq
    assert report.details["takeovers"].get("skewed_from_UNKNOWN", 0) > 0
    assert report.details["late_commits"] == 6
    assert not any(k.endswith("_from_PENDING") for k in report.details["takeovers"])
    # every chained void ran as the chain's link, none had to wait for the sweep
    assert not any(k.startswith("chain_void") for k in report.details["sweeps"]), report.details["sweeps"]
    assert report.details["orders_charged_twice"] == 0
    assert report.duplicates == report.disagreements == report.lost == report.not_final == report.card_hits == 0


def test_a_worker_and_a_sweep_three_days_behind_find_late_commits_and_resend_none(rel_redis_url, rel_logdir):
    """stq's date window comes from the records' Redis times in the gateway's day, never the process's calendar
    (issue 24, item 3): three days behind, a late commit is found and adopted (not sent again, not closed as
    not_charged by the sweep)."""
    offset = faketime_offset(CALENDAR_BEHIND)
    if offset is None:
        pytest.skip("needs the faketime binary (Debian package: faketime)")
    assert -3 * 86400 - 60 <= offset <= -3 * 86400 + 60
    report = run_calendar_behind("behind", rel_redis_url, rel_logdir, sales=8, log=print)
    print(report.row(), report.details, dict(report.statuses))
    print(*report.problems[:100], sep="\n")
    assert report.problems == []
    assert report.payments == 8 and report.details["late_commits"] >= 8
    assert report.details["sweep_behind"].get("reconcile_adopted") == 4  # the sweep's share, adopted by it
    assert report.details["adopted_by_the_worker"] == 4  # the worker's share: found through stq, not resent
    assert report.details["orders_charged_twice"] == 0
    assert report.duplicates == report.disagreements == report.lost == report.not_final == report.card_hits == 0
