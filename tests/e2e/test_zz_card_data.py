"""Runs after the other end-to-end tests: nothing they made the system write holds card data in clear."""
from tests.support.card_scan import scan_files, scan_redis, scan_text
from tests.support.env import TEST_CARD


def test_scanner_finds_what_it_looks_for():
    assert scan_text('{"number": "4111111111111111"}', cvv2="7391", where="x")
    assert scan_text('CVCCVV2=7391&x=1', cvv2="7391", where="x")
    assert scan_text("eyJjYXJkIjogIjQxMTExMTExMTExMTExMTEiLCAiY3Z2MiI6ICI3MzkxIn0=", cvv2="7391", where="x")
    assert not scan_text("trans 100000000123 at 1764213456.123 xxxxxxxxxxxx1111", cvv2="7391", where="x")


def test_no_card_number_or_cvv2_in_redis_or_the_worker_log(celery_worker, e2e_redis, worker_log):
    from tasks import sale, void
    from worker import app

    sale.delay(amount="31.00", card=TEST_CARD).get(timeout=30)
    # A message nobody consumes stays in its queue, so the scan also covers a queued card.
    sale.apply_async(kwargs={"amount": "33.00", "card": TEST_CARD}, queue="parked-for-scan")
    (sale.s(amount="39.00", card=TEST_CARD) | void.s()).apply_async(queue="parked-for-scan")
    # Publishers that bypass the task objects (Flower's send-task, other programs using this app).
    app.send_task("payments.sale", kwargs={"amount": "43.00", "card": TEST_CARD}, queue="parked-for-scan")
    app.send_task("payments.auth", args=["45.00", TEST_CARD], queue="parked-for-scan")
    sale.apply_async(kwargs={"amount": "47.00", "card": TEST_CARD["number"]}, queue="parked-for-scan")
    assert e2e_redis.llen("parked-for-scan") == 5
    assert worker_log.exists() and worker_log.stat().st_size > 0
    hits = scan_redis(e2e_redis, cvv2=TEST_CARD["cvv2"]) + scan_files([worker_log], cvv2=TEST_CARD["cvv2"])
    e2e_redis.delete("parked-for-scan")
    assert hits == []
