"""A worker whose clock runs two minutes ahead (``faketime``) takes no live lease and charges nothing twice.

Seen before exactly-once v2: a worker 115 s ahead took duplicate deliveries of sales another worker had in
flight, judged their leases expired on its own clock, and recorded ERROR over live payments that were charged;
their chained voids were skipped. Leases, ages and the commit horizon now run on Redis server time.
"""
import pytest

from tests.reliability.scenarios import SKEW, faketime_offset, run_clock_skew

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
