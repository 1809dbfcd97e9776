"""Scenario 7, after all the others: no card number and no CVV2 in clear anywhere they made the system write:
every key and value of database 12 and of our own AOF Redis (queues, unacked messages, results, the store,
its indexes and audit stream), the AOF files themselves (their commands parsed: what was deleted since is read
too), and every worker and beat log. Each leak of issue 13 is published into both, so the AOF holds them too."""
import json

import pytest
from celery import chain

from tests.reliability.scenarios import producer_for, producer_tasks, scan_card_data
from tests.support.card_scan import scan_aof, scan_text
from tests.support.env import CUSTOMER, TEST_CARD, TEST_CARD_KEY
from worker.cards.numbers import CardDataRefused
from worker.cards.vault import CardVault
from worker.config import Settings

pytestmark = pytest.mark.reliability

PARKED = "parked-for-card-scan"
NUMBER = TEST_CARD["number"]
LUHN_ORDER = 1234567890123452  # a numeric order id that passes Luhn


def test_the_scanner_finds_card_data_in_clear():
    cvv2 = TEST_CARD["cvv2"]
    assert scan_text('{"number": "4111111111111111"}', cvv2=cvv2, where="x")
    assert scan_text("CC_NUM=4111 1111 1111 1111&x=1", cvv2=cvv2, where="x")
    assert scan_text(f'{{"cvv2": "{cvv2}"}}', cvv2=cvv2, where="x")
    assert scan_text("eyJjYXJkIjogIjQxMTExMTExMTExMTExMTEiLCAiY3Z2MiI6ICI3MzkxIn0=", cvv2=cvv2, where="x")
    assert scan_text('{"payment_id": "ORD-4111111111111111-x"}', cvv2=cvv2, where="x")  # glued to letters
    assert scan_text(f'[[], {{"order_id": {LUHN_ORDER}}}, {{}}]', cvv2=cvv2, where="x")  # an int: no exception
    assert scan_text("ref=5555%205555%205555%204444 5555.5555.5555.4444", cvv2=cvv2, where="x")  # any separator


def test_the_aof_scan_reads_commands_not_the_numbers_redis_writes(tmp_path):
    cvv2 = TEST_CARD["cvv2"]

    def resp(*args):
        return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)

    aof = tmp_path / "appendonly.aof.1.incr.aof"
    aof.write_bytes(resp(b"SELECT", b"0") + resp(b"SET", b"k", b"v", b"PXAT", b"1764213456122")  # Luhn-valid ms
                    + resp(b"XADD", b"audit", b"MAXLEN", b"~", b"1000", b"1764213456122-0", b"to", b"PAID"))
    assert scan_aof(aof, cvv2=cvv2) == []
    aof.write_bytes(aof.read_bytes() + resp(b"RPUSH", b"q", b'{"card": "4111111111111111"}'))
    assert scan_aof(aof, cvv2=cvv2)


def test_no_card_data_in_clear_in_redis_the_aof_or_the_logs(rel_redis_url, rel_redis, own_redis, rel_logdir):
    # Messages nobody consumes stay queued, so the scan also covers queued cards (sale, chain, auth) ...
    for url, client in ((rel_redis_url, rel_redis), (own_redis.url, own_redis.client())):
        with producer_for(url, Settings(redis_url=url, key_prefix="payments:card-scan:", card_key=TEST_CARD_KEY)):
            auth, sale, void = producer_tasks("auth", "sale", "void")
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


def test_each_leak_of_issue_13_is_closed_in_redis_and_the_aof(rel_redis_url, rel_redis, own_redis):
    """Free text refused at the producer (nothing written), cards encrypted in embedded signatures, card-like
    identifiers (a key, a str order id in a chain's later link, an int order id) encrypted and kept encrypted in the
    outbox: published into database 12 and our own AOF Redis; then both and the AOF files are scanned."""
    # The lambdas below read auth/sale/void when called: each producer_for block's own tasks.
    auth, sale, void = producer_tasks("auth", "sale", "void")

    prefix = "payments:card-scan:"
    refused = [
        (lambda: sale.apply_async(kwargs={"amount": "61.00", "card": TEST_CARD},
                                  headers={"ref": "5555.5555.5555.4444"}), "headers.ref"),
        (lambda: sale.delay(amount="63.00", card=TEST_CARD, customer={**CUSTOMER, "name1": "4111 1111 1111 1111"}),
         "customer.name1"),
        (lambda: auth.delay("65.00", TEST_CARD, {**CUSTOMER, "addr1": f"x{NUMBER}"}), "customer.addr1"),
        (lambda: chain(sale.si(amount="67.00", card=TEST_CARD),
                       sale.si(amount="69.00", card=TEST_CARD, customer={"addr2": "5555/5555/5555/4444"})).delay(),
         "chain[0].kwargs.customer.addr2"),
    ]
    not_refused, kept_in_outbox = [], []
    for url, client in ((rel_redis_url, rel_redis), (own_redis.url, own_redis.client())):
        with producer_for(url, Settings(redis_url=url, key_prefix=prefix, card_key=TEST_CARD_KEY)):
            auth, sale, void = producer_tasks("auth", "sale", "void")
            for publish, field in refused:
                before = client.dbsize()
                try:
                    publish()
                except CardDataRefused as exc:
                    assert exc.field == field and client.dbsize() == before
                else:  # published: it stays in the queue (no worker here) for the scan below to judge
                    not_refused.append(field)
            chain(auth.si(amount="81.00", card=TEST_CARD), sale.si(amount="83.00", card=TEST_CARD),
                  void.s()).apply_async(queue=PARKED)
            sale.apply_async(kwargs={"amount": "61.00", "card": TEST_CARD, "idempotency_key": f"ORD-{NUMBER}-x"},
                             queue=PARKED)  # a card-like key: encrypted
            chain(sale.si(amount="67.00", card=TEST_CARD),
                  sale.si(amount="69.00", card=TEST_CARD, order_id=str(LUHN_ORDER))).apply_async(queue=PARKED)
            sale.apply_async(kwargs={"amount": "85.00", "card": TEST_CARD}, queue=PARKED,
                             link=sale.si(amount="87.00", card=TEST_CARD),
                             link_error=auth.si(amount="89.00", card=TEST_CARD))
            kept = sale.apply_async(kwargs={"amount": "91.00", "card": TEST_CARD, "order_id": LUHN_ORDER},
                                    queue=PARKED)
            entry = client.hget(prefix + "outbox", kept.id)
            kept_in_outbox.append(bool(entry) and CardVault([TEST_CARD_KEY]).decrypt_identifier(
                json.loads(entry)["message"]["body"][1]["order_id"]) == LUHN_ORDER)
        assert client.llen(PARKED) >= 3
    try:
        aof = [p for p in own_redis.files() if ".aof" in p.name]
        assert any(PARKED.encode() in p.read_bytes() for p in aof)  # the AOF holds these messages
        hits = scan_card_data(clients=[rel_redis, own_redis.client()], files=own_redis.files())
        in_aof = [h for h in hits if ".aof" in h.split(":")[0]]
        assert hits == [], f"card data in clear: {len(hits)} hits, {len(in_aof)} in the AOF: {(in_aof + hits)[:20]}"
        assert not_refused == [], "published, not refused at the producer"
        assert kept_in_outbox == [True, True], "the int order id's message was not kept (encrypted) in the outbox"
    finally:
        rel_redis.delete(PARKED)
        own_redis.client().delete(PARKED)
