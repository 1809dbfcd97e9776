"""Issue 24, item 1: a worker SIGSTOPped inside the gateway client's retry loop for longer than its lease, its sales
delivered again to another worker (which takes them over), then SIGCONT: every sale charged exactly once."""
import pytest

from tests.reliability.scenarios import run_stalled_holder

# Minutes long (a 20 s stop, a 6 s outage, lease and horizon waits): PAYMENTS_SLOW_TESTS=1 runs it; the large run's
# figures (100 sales) are in docs/reliability.md.
pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def test_a_holder_stopped_inside_its_retry_loop_never_charges_a_second_time(rel_redis_url, rel_logdir):
    report = run_stalled_holder("stall", rel_redis_url, rel_logdir, payments=3, stop_for=20.0, log=print)
    print(report.row(), report.details, dict(report.statuses))
    assert report.problems == []
    assert report.payments == 3
    assert report.duplicates == report.lost == report.not_final == report.disagreements == report.card_hits == 0
    # the resumed holder met its fence (or the gateway's expiry) instead of sending a retry
    assert report.details["holder_fence_lost"] + report.details["holder_too_old"] > 0
