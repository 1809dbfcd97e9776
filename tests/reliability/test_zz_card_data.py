"""Scenario 7, after all the others: no card number and no CVV2 in clear anywhere they made the system write:
every key and value of database 12 and of our own AOF Redis (queues, unacked messages, results, the store,
its indexes and audit stream), the AOF files themselves, and every worker and beat log."""
import pytest

from tests.reliability.scenarios import producer_for, scan_card_data
from tests.support.card_scan import scan_text
from tests.support.env import CUSTOMER, TEST_CARD, TEST_CARD_KEY
from worker.config import Settings

pytestmark = pytest.mark.reliability

PARKED = "parked-for-card-scan"


def test_the_scanner_finds_card_data_in_clear():
    cvv2 = TEST_CARD["cvv2"]
    assert scan_text('{"number": "4111111111111111"}', cvv2=cvv2, where="x")
    assert scan_text("CC_NUM=4111 1111 1111 1111&x=1", cvv2=cvv2, where="x")
    assert scan_text(f'{{"cvv2": "{cvv2}"}}', cvv2=cvv2, where="x")
    assert scan_text("eyJjYXJkIjogIjQxMTExMTExMTExMTExMTEiLCAiY3Z2MiI6ICI3MzkxIn0=", cvv2=cvv2, where="x")


def test_no_card_data_in_clear_in_redis_the_aof_or_the_logs(rel_redis_url, rel_redis, own_redis, rel_logdir):
    from tasks import auth, sale, void

    # Messages nobody consumes stay queued, so the scan also covers queued cards (sale, chain, auth) ...
    for url, client in ((rel_redis_url, rel_redis), (own_redis.url, own_redis.client())):
        with producer_for(url, Settings(redis_url=url, key_prefix="payments:card-scan:", card_key=TEST_CARD_KEY)):
            sale.apply_async(kwargs={"amount": "31.00", "card": TEST_CARD, "customer": CUSTOMER}, queue=PARKED)
            (sale.s(amount="33.00", card=TEST_CARD) | void.s()).apply_async(queue=PARKED)
            auth.apply_async(args=["35.00", TEST_CARD], queue=PARKED)
        assert client.llen(PARKED) == 3
    logs = [p for p in rel_logdir.rglob("*") if p.is_file()]
    aof = [p for p in own_redis.files() if ".aof" in p.name]
    try:
        # ... and what the scenarios left: results, records, history, audit streams, unacked, logs, the AOF.
        assert len(logs) >= 5 and any("beat" in p.name for p in logs)
        assert aof and sum(p.stat().st_size for p in aof) > 10_000
        assert rel_redis.dbsize() > 100 and own_redis.client().dbsize() > 100
        hits = scan_card_data(clients=[rel_redis, own_redis.client()], files=logs + own_redis.files())
        assert hits == []
    finally:
        rel_redis.delete(PARKED)
        own_redis.client().delete(PARKED)
