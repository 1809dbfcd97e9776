"""Runs after the other end-to-end tests: nothing they made the system write holds card data in clear, and each
leak of issue 13 ("Card data v2") is closed, against the real worker, Redis and a real Flower.

The scan (tests/support/card_scan.py) decodes what the broker stores (kombu's base64 bodies inside JSON, the JSON
inside those) and reads every key of the e2e database (queues, ``unacked``, results, the store, the outbox, the
audit stream), the AOF if this Redis has one, the worker's log, and every page and API answer of a Flower that ran
while the payments were made (``/metrics`` included).

The leaks, each its own test below: an idempotency key holding a card (refused at the producer); a card in a
chain's later link, a ``link=`` or a ``link_error=`` (sealed: nothing clear in Redis); a card number in a
customer field (refused: nothing reaches Redis); a numeric ``int`` order id that passes Luhn (accepted and
kept in the outbox).
"""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
import requests
from celery import chain, group

from tests.support.card_scan import redis_items, scan_metrics, scan_redis, scan_redis_aof, scan_text
from tests.support.env import CUSTOMER, E2E_REDIS_URL, TEST_CARD
from tests.support.flower import running_flower
from tests.support.ports import free_port
from worker.carddata import CardDataRefused

PARKED = "parked-for-scan"  # a queue no worker consumes: what is published there stays for the scan
NUMBER, CVV2 = TEST_CARD["number"], TEST_CARD["cvv2"]
LUHN_ORDER = 1234567890123452  # a numeric order id that passes Luhn (about one 16-digit id in ten does)
OUTBOX = "payments:outbox"
TIMEOUT = 30


@pytest.fixture(scope="module")
def flower(celery_worker, tmp_path_factory):
    """A Flower that runs while this module's payments are made (it only knows the events it receives)."""
    with running_flower(E2E_REDIS_URL, tmp_path_factory.mktemp("flower-card-scan") / "flower.log") as client:
        yield client


@pytest.fixture(scope="module")
def seen_task_ids():
    return []


@pytest.fixture(scope="module", autouse=True)
def parked_queue_removed_at_the_end(e2e_redis):
    yield
    e2e_redis.delete(PARKED)


def snapshot(client) -> set[tuple[str, str]]:
    """Every key and value, but kombu's bookkeeping that changes on its own: the unacked_mutex lock a worker
    takes every few seconds, and the exchange bindings (_kombu.binding.*) Flower's and workers' control
    replies declare."""
    return {item for item in redis_items(client) if "unacked_mutex" not in item[0] and "_kombu." not in item[0]}


def new_hits(client, before, *, wait=0.0) -> list[str]:
    """Card data in what Redis holds now and did not hold in ``before`` (after ``wait`` seconds, for a worker)."""
    time.sleep(wait)
    hits = []
    for where, text in set(redis_items(client)) - before:
        hits += scan_text(text, cvv2=CVV2, where=where)
    return hits


# ---- the scanner ----------------------------------------------------------------------------------------
def kombu_envelope(body) -> str:
    """A message as kombu's Redis transport stores it: JSON, the body base64-encoded inside."""
    return json.dumps({"body": base64.b64encode(json.dumps(body).encode()).decode(), "content-encoding": "utf-8",
                       "content-type": "application/json",
                       "headers": {"task": "payments.sale", "id": str(uuid.uuid4())},
                       "properties": {"body_encoding": "base64", "delivery_tag": str(uuid.uuid4())}})


CLEAR_SIG = {"task": "payments.sale", "args": [], "kwargs": {"amount": "1.00", "card": TEST_CARD}, "options": {}}
SCANNER_TABLE = [
    # (what, text, is it a leak)
    ("card in JSON", '{"number": "4111111111111111"}', True),
    ("cvv2 in a form", f"CVCCVV2={CVV2}&x=1", True),
    ("cvv2 in JSON", f'{{"cvv2": "{CVV2}"}}', True),
    ("base64 in text", "eyJjYXJkIjogIjQxMTExMTExMTExMTExMTEiLCAiY3Z2MiI6ICI3MzkxIn0=", True),
    ("queued message, card in a chain's later link",
     kombu_envelope([[], {"amount": "3.00"}, {"chain": [CLEAR_SIG], "callbacks": None}]), True),
    ("unacked entry, card in a link=", json.dumps([json.loads(kombu_envelope(
        [[], {}, {"callbacks": [CLEAR_SIG]}])), "", "celery"]), True),
    ("idempotency key glued to letters", '{"payment_id": "ORD-4111111111111111-x"}', True),
    ("grouped in a customer field", '{"customer": {"name1": "4111 1111 1111 1111"}}', True),
    ("order id as a string", f'[[], {{"order_id": "{LUHN_ORDER}"}}, {{}}]', True),
    ("order id as an int (explicitly numeric)", f'[[], {{"order_id": {LUHN_ORDER}}}, {{}}]', False),
    ("a queued message with an int order id", kombu_envelope([[], {"order_id": LUHN_ORDER}, {}]), False),
    ("trans id, timestamps, masked", "trans 100000000123 at 1764213456.123 xxxxxxxxxxxx1111", False),
    ("a task id (holds 305-6820-4063-903)", "celery-task-meta-cd27c305-6820-4063-903f-1a2b3c4d5e6f", False),
    ("a runtime", "succeeded in 0.05183274700085167s", False),
    ("a sealed card", json.dumps({"card": {"sealed": "gAAAAABpZ3xBqf3-c1XJ1Q4h8Xb2mNn3X4i5Vt8m3q2lS1d3FfQ==",
                                           "masked": "xxxxxxxxxxxx1111"}}), False),
]


@pytest.mark.parametrize("what,text,leak", SCANNER_TABLE, ids=[row[0] for row in SCANNER_TABLE])
def test_the_scanner_finds_what_it_looks_for(what, text, leak):
    assert bool(scan_text(text, cvv2=CVV2, where=what)) is leak


# ---- refused at the door --------------------------------------------------------------------------------
def _refused_cases():
    """Each publishes with the given options (``queue=``): once where nobody reads, so that what reached Redis
    stays there for the scan, and once where the worker runs it."""
    from tasks import auth, sale, void

    return {
        "idempotency key holding a card": (
            lambda **o: sale.apply_async(kwargs={"amount": "61.00", "card": TEST_CARD,
                                                 "idempotency_key": f"ORD-{NUMBER}-{uuid.uuid4().hex[:6]}"}, **o),
            "idempotency_key"),
        "card number in customer.name1": (
            lambda **o: sale.apply_async(kwargs={"amount": "63.00", "card": TEST_CARD,
                                                 "customer": {**CUSTOMER, "name1": "4111 1111 1111 1111"}}, **o),
            "customer.name1"),
        "card number in customer.addr1 (positional)": (
            lambda **o: auth.apply_async(("65.00", TEST_CARD, {**CUSTOMER, "addr1": f"x{NUMBER}"}), **o),
            "customer.addr1"),
        "order id string in a chain's later link": (
            lambda **o: chain(sale.si(amount="67.00", card=TEST_CARD),
                              sale.si(amount="69.00", card=TEST_CARD, order_id=str(LUHN_ORDER))).apply_async(**o),
            "chain[0].kwargs.order_id"),
        "card number in a link='s customer": (
            lambda **o: sale.apply_async(kwargs={"amount": "71.00", "card": TEST_CARD},
                                         link=sale.si(amount="73.00", card=TEST_CARD, customer={"name1": NUMBER}), **o),
            "callbacks[0].kwargs.customer.name1"),
        "card number as a void's trans id, link_error=": (
            lambda **o: sale.apply_async(kwargs={"amount": "75.00", "card": TEST_CARD}, link_error=void.si(NUMBER),
                                         **o),
            "errbacks[0].args[0]"),
    }


REFUSED = ["idempotency key holding a card", "card number in customer.name1",
           "card number in customer.addr1 (positional)", "order id string in a chain's later link",
           "card number in a link='s customer", "card number as a void's trans id, link_error="]


@pytest.mark.parametrize("case", REFUSED)
def test_card_data_outside_the_card_is_refused_before_it_reaches_redis(flower, e2e_redis, case):
    publish, field = _refused_cases()[case]
    before = snapshot(e2e_redis)
    refusals = []
    for options in ({"queue": PARKED}, {}):
        try:
            publish(**options)
        except CardDataRefused as exc:
            refusals.append(exc)
    hits = new_hits(e2e_redis, before, wait=0 if len(refusals) == 2 else 3)  # let the worker run what went out
    assert hits == [], f"card data in clear in Redis: {hits}"
    assert len(refusals) == 2, "published: not refused at the producer"
    for refused in refusals:
        assert refused.field == field and field in str(refused)
        assert NUMBER not in str(refused) and str(LUHN_ORDER) not in str(refused)
    assert snapshot(e2e_redis) == before  # nothing at all reached Redis


def test_the_metrics_scan_reads_labels_and_whole_values_written_out():
    leaky = (f'# HELP x\npayments_operations_total{{operation="sale",payment_id="{NUMBER}"}} 1.0\n'
             f'payments_amount_total 4.111111111111111e+15\n')
    assert len(scan_metrics(leaky, cvv2=CVV2, where="m")) == 2
    clean = "payments_gateway_request_seconds_sum 0.4111111111111111\npayments_records 1.764425e+09\n"
    assert scan_metrics(clean, cvv2=CVV2, where="m") == []


# ---- sealed wherever a message carries a card -----------------------------------------------------------
def test_cards_in_embedded_signatures_are_sealed_in_the_broker(flower, e2e_redis):
    from tasks import auth, sale, void

    before = snapshot(e2e_redis)
    chain(auth.si(amount="81.00", card=TEST_CARD), sale.si(amount="83.00", card=TEST_CARD),
          void.s()).apply_async(queue=PARKED)
    sale.apply_async(kwargs={"amount": "85.00", "card": TEST_CARD}, queue=PARKED,
                     link=sale.si(amount="87.00", card=TEST_CARD, customer=CUSTOMER))
    sale.apply_async(kwargs={"amount": "89.00", "card": TEST_CARD}, queue=PARKED,
                     link_error=auth.si(amount="91.00", card=TEST_CARD))
    void.apply_async(args=["100000000001"], queue=PARKED,
                     link=group(sale.si(amount="93.00", card=TEST_CARD), auth.si(amount="95.00", card=TEST_CARD)))
    assert e2e_redis.llen(PARKED) >= 4
    hits = new_hits(e2e_redis, before)
    assert hits == [], f"card data in clear in Redis: {hits}"
    # the embedded cards are there, sealed
    parked = [json.loads(base64.b64decode(json.loads(m)["body"])) for m in e2e_redis.lrange(PARKED, 0, 3)]  # newest
    embedded = json.dumps([body[2] for body in parked])
    assert embedded.count('"sealed"') == 5 and NUMBER not in embedded


def test_cards_in_embedded_signatures_run_through_the_worker(flower, e2e_redis, sandbox, seen_task_ids):
    """Sealed embedded cards are opened by the worker: a chain's later card link and a link= callback charge."""
    from tasks import auth, sale

    before = snapshot(e2e_redis)
    later = sale.si(amount="97.00", card=TEST_CARD)
    result = chain(auth.si(amount="99.00", card=TEST_CARD), later).delay()
    assert result.get(timeout=TIMEOUT)["status"] == "APPROVED"
    assert result.parent.get(timeout=TIMEOUT)["status"] == "APPROVED"
    callback = sale.si(amount="101.00", card=TEST_CARD, customer=CUSTOMER)
    callback.freeze()  # its task id, known before it is published
    first = sale.apply_async(kwargs={"amount": "103.00", "card": TEST_CARD}, link=callback)
    assert first.get(timeout=TIMEOUT)["status"] == "APPROVED"
    linked = sale.AsyncResult(callback.id).get(timeout=TIMEOUT)
    assert linked["status"] == "APPROVED" and linked["masked_account"] == "xxxxxxxxxxxx1111"
    seen_task_ids += [result.id, result.parent.id, first.id, callback.id]
    hits = new_hits(e2e_redis, before)
    assert hits == [], f"card data in clear in Redis: {hits}"


# ---- a numeric order id ---------------------------------------------------------------------------------
def test_an_int_order_id_that_passes_luhn_is_accepted_and_kept_in_the_outbox(flower, e2e_redis):
    from tasks import sale, void

    before = snapshot(e2e_redis)
    single = sale.apply_async(kwargs={"amount": "105.00", "card": TEST_CARD, "order_id": LUHN_ORDER}, queue=PARKED)
    chained = chain(sale.si(amount="107.00", card=TEST_CARD, order_id=LUHN_ORDER), void.s()).apply_async(queue=PARKED)
    for task_id in (single.id, chained.parent.id):
        kept = e2e_redis.hget(OUTBOX, task_id)
        assert kept, "not kept in the outbox"
        body = json.loads(kept)["message"]["body"]
        assert body[1]["order_id"] == LUHN_ORDER  # kept as the producer sent it
        assert '"sealed"' in kept and NUMBER not in kept
        assert scan_text(kept.replace(str(LUHN_ORDER), f'"{LUHN_ORDER}"'), cvv2=CVV2, where="x")  # as a string: a hit
    hits = new_hits(e2e_redis, before)
    assert hits == [], f"card data in clear in Redis: {hits}"


# ---- the outbox re-publish ----------------------------------------------------------------------------
def test_the_outbox_republish_seals_an_entry_kept_in_clear(flower, e2e_redis):
    """An outbox entry kept by older code with a clear card (here: a real entry, its card put back in clear by
    hand, chain included) is published again sealed, its reprs masked."""
    from tasks import sale
    from worker.celery_app import republish

    published = sale.apply_async(kwargs={"amount": "109.00", "card": TEST_CARD}, queue=PARKED)
    message = json.loads(e2e_redis.hget(OUTBOX, published.id))["message"]
    e2e_redis.lpop(PARKED)  # the sealed original: only the re-published copy is looked at below
    clear_link: dict[str, Any] = {"task": "payments.sale", "args": ["1.00", dict(TEST_CARD)], "kwargs": {},
                                  "options": {}, "subtask_type": None, "immutable": True}
    message["body"][1]["card"] = dict(TEST_CARD)
    message["body"][2]["chain"] = [clear_link]
    message["headers"]["kwargsrepr"] = repr({"amount": "109.00", "card": TEST_CARD})
    before = snapshot(e2e_redis)
    republish(message)
    again = json.loads(e2e_redis.lindex(PARKED, 0))
    assert again["headers"]["id"] == published.id
    body = json.loads(base64.b64decode(again["body"]))
    assert "sealed" in body[1]["card"] and "sealed" in body[2]["chain"][0]["args"][1]
    hits = new_hits(e2e_redis, before)
    assert hits == [], f"card data in clear in Redis: {hits}"


# ---- everything, at the end -----------------------------------------------------------------------------
def metrics_pages(worker_metrics_port: int) -> list[tuple[str, str]]:
    """The worker's /metrics and the exporter's (``payments metrics`` started on the e2e database), as scraped."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "metrics", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                exported = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None, "the exporter did not come up"
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(10)
    worker = requests.get(f"http://127.0.0.1:{worker_metrics_port}/metrics", timeout=10).text
    assert 'payments_operations_total{operation="sale",status="APPROVED"}' in worker
    assert 'payments_records{status="APPROVED"}' in exported
    return [("worker /metrics", worker), ("exporter /metrics", exported)]


def test_no_card_number_or_cvv2_anywhere(celery_worker, flower, e2e_redis, worker_log, seen_task_ids,
                                         worker_metrics_port):
    from tasks import sale, void
    from worker import app

    run = sale.delay(amount="31.00", card=TEST_CARD, customer=CUSTOMER)
    assert run.get(timeout=TIMEOUT)["status"] == "APPROVED"
    numeric = sale.delay(amount="33.00", card=TEST_CARD, order_id=LUHN_ORDER)
    numeric.get(timeout=TIMEOUT)  # whatever the worker makes of an int order id, it writes no card data
    seen_task_ids += [run.id, numeric.id]
    # A message nobody consumes stays in its queue, so the scan also covers a queued card.
    sale.apply_async(kwargs={"amount": "35.00", "card": TEST_CARD}, queue=PARKED)
    (sale.s(amount="39.00", card=TEST_CARD) | void.s()).apply_async(queue=PARKED)
    # Publishers that bypass the task objects (Flower's send-task, other programs using this app).
    app.send_task("payments.sale", kwargs={"amount": "43.00", "card": TEST_CARD}, queue=PARKED)
    app.send_task("payments.auth", args=["45.00", TEST_CARD], queue=PARKED)
    sale.apply_async(kwargs={"amount": "47.00", "card": TEST_CARD["number"]}, queue=PARKED)
    assert e2e_redis.llen(PARKED) >= 5
    assert worker_log.exists() and worker_log.stat().st_size > 0

    # One message held unacknowledged (taken, not acked), as a worker holds it mid-payment: kombu's `unacked` hash.
    with app.connection_for_read() as conn:
        held = conn.SimpleQueue(PARKED, no_ack=False).get(timeout=5)
        assert e2e_redis.hlen("unacked") >= 1
        hits = scan_redis(e2e_redis, cvv2=CVV2)
        held.requeue()
    aof_hits, _aof_files = scan_redis_aof(e2e_redis, cvv2=CVV2)  # none when this Redis runs without AOF
    hits += aof_hits
    hits += scan_text(worker_log.read_text("utf-8", "replace"), cvv2=CVV2, where=str(worker_log))

    def flower_knows_them():
        tasks = flower.json("/api/tasks")
        return all(i in tasks for i in seen_task_ids)

    deadline = time.monotonic() + TIMEOUT
    while not flower_knows_them() and time.monotonic() < deadline:
        time.sleep(0.5)
    flower.read_everything(seen_task_ids)
    assert any("xxxxxxxxxxxx1111" in text for path, text in flower.seen if path.startswith("/api/task/info/"))
    assert any(path == "/metrics" for path, _ in flower.seen)
    for where, text in flower.texts():
        hits += scan_text(text, cvv2=CVV2, where=where)
    # Both metrics endpoints: the worker's own (its counters of every payment above) and the exporter's.
    for where, text in metrics_pages(worker_metrics_port):
        hits += scan_metrics(text, cvv2=CVV2, where=where)
    by_source: dict[str, int] = {}
    for hit in hits:
        source = "flower" if hit.startswith("flower") else "redis" if hit.startswith("redis") else "worker log"
        by_source[source] = by_source.get(source, 0) + 1
    assert hits == [], f"card data in clear, {len(hits)} hits {by_source}: {hits[:30]}"
