"""Scenario 4: the same message consumed by two workers at once is charged once."""
import pytest

from tests.reliability.scenarios import run_duplicate_delivery

pytestmark = pytest.mark.reliability


def test_the_same_message_consumed_twice_at_once_charges_once(rel_redis_url, rel_logdir):
    report = run_duplicate_delivery("dup", rel_redis_url, rel_logdir, pairs=20, log=print)
    print(report.row(), report.details, dict(report.statuses))
    assert report.problems == []
    assert report.payments == 40 and report.details["gateway_sends"] == 40
    # both deliveries really ran at once: the second found the operation held and was re-queued
    assert report.details["second_deliveries_requeued"] > 0
    assert report.duplicates == report.lost == report.not_final == report.card_hits == 0
