"""Runs after the other end-to-end tests: nothing they made the system write holds card data in clear, and each
leak of issue 13 ("Card data v2") is closed, against the real worker, Redis and a real Flower.

The scan (tests/support/card_scan.py) decodes what the broker stores (kombu's base64 bodies inside JSON, the JSON
inside those) and reads every key of the e2e database (queues, ``unacked``, results, the store, the outbox, the
audit stream), the AOF if this Redis has one, the worker's log, and every page and API answer of a Flower that ran
while the payments were made (``/metrics`` included).

The leaks, each its own test below: a card in a chain's later link, a ``link=`` or a ``link_error=`` (encrypted:
nothing clear in Redis); a card number in a customer field, a header, a stamp or a publish option (refused:
nothing reaches Redis). Issue 25: identifiers that only look like card numbers (19-digit keys, 16-digit invoice
numbers, ``int`` order ids, any separator) are accepted, charged once, found by ``payments show KEY`` and never
kept in clear (encrypted in the broker and the outbox, a keyed id at rest, masked where shown).
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
import requests
from celery import chain, group

from tests.support.card_scan import redis_items, scan_metrics, scan_redis, scan_redis_aof, scan_text
from tests.support.env import CUSTOMER, E2E_REDIS_URL, TEST_CARD, TEST_CARD_KEY
from tests.support.flower import running_flower
from tests.support.ports import free_port
from worker.cards.numbers import CardDataRefused, keyed_ids, luhn_ok
from worker.cards.vault import CardVault

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
    ("order id as an int (no exception since issue 25)", f'[[], {{"order_id": {LUHN_ORDER}}}, {{}}]', True),
    ("a queued message with an int order id", kombu_envelope([[], {"order_id": LUHN_ORDER}, {}]), True),
    ("dotted in a header", json.dumps({"headers": {"ref": "5555.5555.5555.4444"}}), True),
    ("url-encoded in a form", "x=1&ref=5555%205555%205555%204444", True),
    ("a encrypted identifier", json.dumps({"order_id": {"sealed_id": "gAAAAABpZ3xBqf3-c1XJ1Q4h8Xb2mNn3X4i5Vt8m3q2lS",
                                                     "masked": "xxxxxxxxxxxx3452"}}), False),
    ("trans id, timestamps, masked", "trans 100000000123 at 1764213456.123 xxxxxxxxxxxx1111", False),
    ("a task id (holds 305-6820-4063-903)", "celery-task-meta-cd27c305-6820-4063-903f-1a2b3c4d5e6f", False),
    ("a runtime", "succeeded in 0.05183274700085167s", False),
    ("a encrypted card", json.dumps({"card": {"sealed": "gAAAAABpZ3xBqf3-c1XJ1Q4h8Xb2mNn3X4i5Vt8m3q2lS1d3FfQ==",
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
        "card number in a header": (
            lambda **o: sale.apply_async(kwargs={"amount": "61.00", "card": TEST_CARD},
                                         headers={"merchant_ref": "5555555555554444"}, **o),
            "headers.merchant_ref"),
        "card number in a stamped header": (
            lambda **o: sale.apply_async(kwargs={"amount": "62.00", "card": TEST_CARD}, stamped_headers=["mark"],
                                         mark="5555 5555 5555 4444", **o),
            "stamps.mark"),
        "card number in an extra publish option": (
            lambda **o: sale.apply_async(kwargs={"amount": "64.00", "card": TEST_CARD}, merchant_ref=NUMBER, **o),
            "merchant_ref"),
        "card number in customer.name1": (
            lambda **o: sale.apply_async(kwargs={"amount": "63.00", "card": TEST_CARD,
                                                 "customer": {**CUSTOMER, "name1": "4111 1111 1111 1111"}}, **o),
            "customer.name1"),
        "card number in customer.addr1 (positional)": (
            lambda **o: auth.apply_async(("65.00", TEST_CARD, {**CUSTOMER, "addr1": f"x{NUMBER}"}), **o),
            "customer.addr1"),
        "dotted card number in a chain's later link's customer": (
            lambda **o: chain(sale.si(amount="67.00", card=TEST_CARD),
                              sale.si(amount="69.00", card=TEST_CARD,
                                      customer={"addr2": "5555.5555.5555.4444"})).apply_async(**o),
            "chain[0].kwargs.customer.addr2"),
        "card number in a link='s customer": (
            lambda **o: sale.apply_async(kwargs={"amount": "71.00", "card": TEST_CARD},
                                         link=sale.si(amount="73.00", card=TEST_CARD, customer={"name1": NUMBER}), **o),
            "callbacks[0].kwargs.customer.name1"),
        "card number as a void's trans id, link_error=": (
            lambda **o: sale.apply_async(kwargs={"amount": "75.00", "card": TEST_CARD}, link_error=void.si(NUMBER),
                                         **o),
            "errbacks[0].args[0]"),
    }


REFUSED = ["card number in a header", "card number in a stamped header", "card number in an extra publish option",
           "card number in customer.name1", "card number in customer.addr1 (positional)",
           "dotted card number in a chain's later link's customer", "card number in a link='s customer",
           "card number as a void's trans id, link_error="]


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
    leaky = (f'# HELP x\npayments_operations_total{{merchant="default",operation="sale",payment_id="{NUMBER}"}} 1.0\n'
             f'payments_amount_total 4.111111111111111e+15\n')
    assert len(scan_metrics(leaky, cvv2=CVV2, where="m")) == 2
    clean = "payments_gateway_request_seconds_sum 0.4111111111111111\npayments_records 1.764425e+09\n"
    assert scan_metrics(clean, cvv2=CVV2, where="m") == []


# ---- encrypted wherever a message carries a card -----------------------------------------------------------
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
    # the embedded cards are there, encrypted
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


# ---- identifiers that look like card numbers (issue 25) ----------------------------------------------------
def test_a_card_like_order_id_is_accepted_and_kept_sealed_in_the_outbox(flower, e2e_redis):
    from tasks import sale, void

    vault = CardVault([TEST_CARD_KEY])
    before = snapshot(e2e_redis)
    single = sale.apply_async(kwargs={"amount": "105.00", "card": TEST_CARD, "order_id": LUHN_ORDER}, queue=PARKED)
    chained = chain(sale.si(amount="107.00", card=TEST_CARD, order_id=str(LUHN_ORDER)),
                    void.s()).apply_async(queue=PARKED)
    for task_id, given in ((single.id, LUHN_ORDER), (chained.parent.id, str(LUHN_ORDER))):
        kept = e2e_redis.hget(OUTBOX, task_id)
        assert kept, "not kept in the outbox"
        body = json.loads(kept)["message"]["body"]
        assert vault.decrypt_identifier(body[1]["order_id"]) == given  # encrypted; opens to what the producer sent
        assert '"sealed"' in kept and NUMBER not in kept and str(LUHN_ORDER) not in kept
    hits = new_hits(e2e_redis, before)
    assert hits == [], f"card data in clear in Redis: {hits}"


def luhn_complete(prefix: str) -> str:
    return next(prefix + d for d in "0123456789" if luhn_ok(prefix + d))


def test_card_like_keys_and_invoice_numbers_are_charged_once_found_and_never_in_clear(
        flower, e2e_redis, sandbox, worker_log, seen_task_ids):
    """Luhn-valid 19-digit idempotency keys (a str, an int, one written with dots) and 16-digit invoice numbers
    (a str, an int): all accepted, each charged once, the same outcome on a second delivery, found by ``payments
    show KEY``; none of the values in clear in Redis (bodies decoded), the worker's log or Flower (the final scan
    of this module reads /metrics and everything again, with these payments in it)."""
    from tasks import sale

    base = 1_759_288_472_991_170_000 + uuid.uuid4().int % 10_000 * 10
    keys: list[Any] = [luhn_complete(str(base)[:18]), int(luhn_complete(str(base + 1_000_000)[:18])),
                       ".".join(luhn_complete(str(base + 2_000_000)[:18])[i:i + 4] for i in range(0, 19, 4))]
    tail = f"{base % 10**7:07d}"
    invoices: list[Any] = [luhn_complete(f"20261207{tail}"), int(luhn_complete(f"30261207{tail}")),
                           luhn_complete(f"40261207{tail}")]
    values = [str(v) for v in keys + invoices]
    assert all(luhn_ok("".join(c for c in v if c.isdigit())) for v in values)
    before = snapshot(e2e_redis)
    outcomes = []
    for n, (key, invoice) in enumerate(zip(keys, invoices, strict=True)):
        amount = f"{111 + 2 * n}.00"  # (odd whole amounts: the sandbox approves them)
        first = sale.delay(amount=amount, card=TEST_CARD, order_id=invoice, idempotency_key=key)
        again = sale.delay(amount=amount, card=TEST_CARD, order_id=invoice, idempotency_key=key)  # delivered twice
        outcome = first.get(timeout=TIMEOUT)
        assert outcome["status"] == "APPROVED", outcome
        assert again.get(timeout=TIMEOUT) == outcome  # the recorded outcome: no second charge
        payment_id = keyed_ids(key, [TEST_CARD_KEY])[0]
        assert outcome["payment_id"] == outcome["order_id"] == payment_id  # the ORDER_ID: the keyed id
        assert outcome["idempotency_key"] == "xxxxxxxxxxxx" + "".join(c for c in str(key) if c.isdigit())[-4:]
        assert "xxxxxxxxxxxx" in outcome["invoice_id"]
        assert sandbox.charges(payment_id) == 1  # charged once
        (entry,) = [e for e in sandbox.ledger(order_id=payment_id) if e["trans_type"] == "SALE"]
        assert entry["invoice_id"] == str(invoice)  # INVOICE_ID: the merchant's number, whole (the gateway's own)
        outcomes.append(outcome)
        seen_task_ids += [first.id, again.id]
    for key, outcome in zip(keys, outcomes, strict=True):  # payments show KEY
        shown = subprocess.run([sys.executable, "-m", "worker.cli", "show", str(key)], capture_output=True, text=True,
                               timeout=TIMEOUT, env={**os.environ, "REDIS_URL": E2E_REDIS_URL,
                                                     "PAYMENTS_CARD_KEY": TEST_CARD_KEY})
        assert shown.returncode == 0, shown.stderr
        assert outcome["payment_id"] in shown.stdout and outcome["trans_id"] in shown.stdout
        assert str(key) not in shown.stdout + shown.stderr
    hits = new_hits(e2e_redis, before, wait=1)
    hits += scan_text(worker_log.read_text("utf-8", "replace"), cvv2=CVV2, where=str(worker_log))
    now = "\n".join(text for _, text in redis_items(e2e_redis)) + worker_log.read_text("utf-8", "replace")
    deadline = time.monotonic() + TIMEOUT
    while not all(i in flower.json("/api/tasks") for i in seen_task_ids) and time.monotonic() < deadline:
        time.sleep(0.5)
    flower.read_everything(seen_task_ids)
    for where, text in flower.texts():
        hits += scan_text(text, cvv2=CVV2, where=where)
        now += text
    assert hits == [], f"card data in clear: {hits[:20]}"
    for value in values:
        assert value not in now and value.replace(".", "") not in now


# ---- the outbox re-publish ----------------------------------------------------------------------------
def test_the_outbox_republish_seals_an_entry_kept_in_clear(flower, e2e_redis):
    """An outbox entry kept by older code with a clear card (here: a real entry, its card put back in clear by
    hand, chain included) is published again encrypted, its reprs masked."""
    from tasks import sale
    from worker.broker.app import republish

    published = sale.apply_async(kwargs={"amount": "109.00", "card": TEST_CARD}, queue=PARKED)
    message = json.loads(e2e_redis.hget(OUTBOX, published.id))["message"]
    e2e_redis.lpop(PARKED)  # the encrypted original: only the re-published copy is looked at below
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
    assert 'payments_operations_total{merchant="default",operation="sale",status="APPROVED"}' in worker
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
