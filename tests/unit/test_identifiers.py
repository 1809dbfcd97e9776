"""Issue 25: identifiers that only look like card numbers are accepted, and never kept in clear.

A table of identifier shapes (issue 25's and more) x where they end up:

* **the broker**: published through Celery's real publish path (``ProtectingAMQP`` on kombu's ``memory://``), read
  back raw: a card-like identifier is encrypted (``{"sealed_id", "masked"}``) wherever it sits (keyword, positional,
  a chain's later link, a group member), opens to exactly what the producer gave (an ``int`` stays an ``int``);
  any other is published as it is; nothing is refused;
* **the record, the gateway, the outcome**: the encrypted message delivered to the real task (the worker's own wiring
  over the in-memory store and a fake gateway): a card-like idempotency key is kept under its keyed id
  (``kh-...``), which is also the ORDER_ID, and is shown masked; a card-like ``order_id`` reaches the gateway whole
  (INVOICE_ID) and is recorded masked; a second delivery returns the recorded outcome without a second send, and
  ``payments show KEY``'s lookup finds the record from the key.

Free text is the other side of the rule: a card-like value there is refused
(tests/unit/test_message_encryption.py), a near miss is accepted (below).
"""
from __future__ import annotations

import contextlib
import json
import uuid
from types import SimpleNamespace
from typing import Any

import celery
import pytest
from celery import Celery, chain, group

from tasks import sale
from tests.support.card_scan import scan_text
from tests.support.env import CUSTOMER, TEST_CARD, TEST_CARD_KEY
from tests.support.fake_gateway import FakeGateway, reply
from tests.support.unit_services import UnitServices
from worker.broker.app import ProtectingAMQP, create_app, current
from worker.cards.messages import protect_publish
from worker.cards.numbers import contains_card_number, keyed_ids, luhn_ok
from worker.cards.vault import CardVault
from worker.config import Settings
from worker.payments.lookup import record_ids
from worker.services import ProcessServices, attach

VAULT = CardVault([TEST_CARD_KEY])
CVV2 = TEST_CARD["cvv2"]


def luhn_complete(prefix: str) -> str:
    """``prefix`` + the check digit that makes it pass Luhn."""
    return next(prefix + d for d in "0123456789" if luhn_ok(prefix + d))


SNOWFLAKE = luhn_complete("175928847299117063")  # 19 digits, a Twitter/Discord-style id
INVOICE16 = luhn_complete("202612070000042")  # 16 digits
MILLIS = luhn_complete("176421345612")  # a 13-digit millisecond timestamp
NOT_LUHN16 = str(int(INVOICE16) + 1)
assert all(luhn_ok(v) for v in (SNOWFLAKE, INVOICE16, MILLIS)) and not luhn_ok(NOT_LUHN16)

SHAPES: list[tuple[str, Any, bool]] = [
    # (shape, value, card-like)
    ("snowflake str", SNOWFLAKE, True),
    ("snowflake int", int(SNOWFLAKE), True),
    ("order-time_ns", f"order-{SNOWFLAKE}", True),
    ("16-digit invoice str", INVOICE16, True),
    ("16-digit invoice int", int(INVOICE16), True),
    ("13-digit millis", MILLIS, True),
    ("dotted groups", "5555.5555.5555.4444", True),
    ("url-encoded groups", "5555%205555%205555%204444", True),
    # (no whitespace: an idempotency key with a space is refused as such, whatever it looks like: issue 24)
    ("mixed separator runs", "5555__5555_-5555+/4444", True),
    ("uuid", "cd27c305-6820-4063-903f-1a2b3c4d5e6f", False),
    ("ulid", "01ARZ3NDEKTSV4RRFFQ69G5FAV", False),
    ("idem_ + hex", "idem_" + uuid.UUID(int=7).hex, False),
    ("16 digits failing Luhn", NOT_LUHN16, False),
    ("small int", 42, False),
]
IDS = [shape for shape, _, _ in SHAPES]


# ---- the broker ------------------------------------------------------------------------------------------------
class _Outbox:
    def __init__(self) -> None:
        self.entries: dict[str, Any] = {}

    def put(self, task_id: str, message: Any) -> None:
        self.entries[task_id] = json.loads(json.dumps(message))


@pytest.fixture
def producer():
    app = Celery("unit-identifiers", broker="memory://", amqp=ProtectingAMQP, set_as_current=False)
    services = SimpleNamespace(vault=VAULT, store=SimpleNamespace(outbox=_Outbox()))
    attach(app, ProcessServices(given=services))  # type: ignore[arg-type]
    app.conf.update(task_serializer="json", accept_content=["json"], result_backend=None)
    app.services_for_test = services
    yield app
    drain(app)


def drain(app) -> list[dict]:
    out = []
    with app.connection_for_read() as conn:
        while (message := conn.default_channel.basic_get("celery")) is not None:
            out.append({"headers": message.headers, "raw": message.body.decode(), "body": message.decode()})
    return out


def sig(app, **kwargs):
    return app.signature("payments.sale", kwargs={"amount": "3.00", "card": dict(TEST_CARD), **kwargs}, immutable=True)


#: Where an identifier sits: (publish with the value, read the value back from the published body)
PLACES = {
    "idempotency_key": (lambda app, v: app.send_task("payments.sale", kwargs={
        "amount": "3.00", "card": TEST_CARD, "idempotency_key": v}), lambda body: body[1]["idempotency_key"]),
    "order_id": (lambda app, v: app.send_task("payments.sale", kwargs={
        "amount": "3.00", "card": TEST_CARD, "order_id": v}), lambda body: body[1]["order_id"]),
    "order_id positional": (lambda app, v: app.send_task("payments.auth", args=["3.00", TEST_CARD, CUSTOMER, v]),
                            lambda body: body[0][3]),
    "chain[0].kwargs.order_id": (lambda app, v: chain(sig(app), sig(app, order_id=v)).apply_async(),
                                 lambda body: body[2]["chain"][0]["kwargs"]["order_id"]),
    "group member's idempotency_key": (
        lambda app, v: app.send_task("payments.void", args=["100000000001"], link=group(
            sig(app), sig(app, idempotency_key=v))),
        lambda body: body[2]["callbacks"][0]["kwargs"]["tasks"][1]["kwargs"]["idempotency_key"]),
}


@pytest.mark.parametrize("place", list(PLACES))
@pytest.mark.parametrize("shape,value,card_like", SHAPES, ids=IDS)
def test_in_the_broker_a_card_like_identifier_is_encrypted_and_no_identifier_is_refused(
        producer, place, shape, value, card_like):
    publish, read_back = PLACES[place]
    publish(producer, value)  # never CardDataRefused
    (message,) = drain(producer)
    travelled = read_back(message["body"])
    if card_like:
        assert VAULT.is_encrypted_identifier(travelled), f"{shape} at {place} not sealed"
        opened = VAULT.decrypt_identifier(travelled)
        assert opened == value and type(opened) is type(value)
        assert travelled["masked"] == "xxxxxxxxxxxx" + "".join(c for c in str(value) if c.isdigit())[-4:]
    else:
        assert travelled == value
    seen = json.dumps(message["headers"]) + message["raw"]
    assert scan_text(seen, cvv2=CVV2, where=place) == []  # reprs and body: nothing card-like in clear
    assert str(value) not in seen or not card_like
    kept = json.dumps(list(producer.services_for_test.store.outbox.entries.values()))
    assert not card_like or str(value) not in kept


# ---- the record, the gateway, the outcome ------------------------------------------------------------------------
SETTINGS = Settings(card_key=TEST_CARD_KEY)


@pytest.fixture
def wire(store):
    with contextlib.ExitStack() as stack:
        def wire(gateway):
            svc = UnitServices(SETTINGS, store, gateway)
            stack.enter_context(current(create_app(svc.settings, services=svc, main="unit-identifiers")))
            return svc

        yield wire


def deliver(task_id: str, kwargs: dict) -> dict:
    """One delivery of a sale message as the worker runs it; ``kwargs`` as published (encrypted)."""
    task = celery.current_app.tasks[sale.name]
    _, encrypted, _ = protect_publish(sale.name, [], kwargs, {"task_id": task_id}, vault=VAULT)
    task.push_request(id=task_id, task=task.name, args=[], kwargs=encrypted, retries=0, called_directly=False,
                      is_eager=True, delivery_info={})
    try:
        return task(**encrypted)
    finally:
        task.pop_request()


@pytest.mark.parametrize("shape,value,card_like", SHAPES, ids=IDS)
def test_an_idempotency_key_is_kept_under_its_keyed_id_when_card_like(store, wire, shape, value, card_like):
    gateway = FakeGateway([reply()])
    svc = wire(gateway)
    first = deliver("msg-1", {"amount": "3.00", "card": TEST_CARD, "idempotency_key": value})
    again = deliver("msg-2", {"amount": "3.00", "card": TEST_CARD, "idempotency_key": value})  # the producer's retry
    expected_id = keyed_ids(value, [TEST_CARD_KEY])[0] if card_like else str(value)
    assert first["status"] == "APPROVED" and first["payment_id"] == expected_id
    assert again == first and len(gateway.sends) == 1  # charged once
    assert gateway.sends[0]["order_id"] == expected_id  # the ORDER_ID: never the card-like key
    assert record_ids(svc, str(value))[0] == expected_id and store.get(expected_id) is not None  # payments show KEY
    if card_like:
        assert first["idempotency_key"] == "xxxxxxxxxxxx" + str(value)[-4:]  # shown masked
        assert str(value) not in store.dump() and scan_text(store.dump(), cvv2=CVV2, where="store") == []
    else:
        assert "idempotency_key" not in first


@pytest.mark.parametrize("shape,value,card_like", SHAPES, ids=IDS)
def test_an_order_id_reaches_the_gateway_whole_and_is_recorded_masked_when_card_like(store, wire, shape, value,
                                                                                     card_like):
    gateway = FakeGateway([reply()])
    wire(gateway)
    outcome = deliver("msg-1", {"amount": "3.00", "card": TEST_CARD, "order_id": value})
    assert outcome["status"] == "APPROVED"
    assert gateway.sends[0]["invoice_id"] == str(value)  # INVOICE_ID: what the merchant gave
    if card_like:
        assert "xxxxxxxxxxxx" in outcome["invoice_id"] and str(value) not in store.dump()
        assert scan_text(store.dump(), cvv2=CVV2, where="store") == []
    else:
        assert outcome["invoice_id"] == str(value)


# ---- free text: near misses are accepted as they are ---------------------------------------------------------------
@pytest.mark.parametrize("text", ["PO Box 4111 1111", "+1 (555) 123-4567", "ref 100000000123", "2026-12-07 10:00",
                                  "Apt #5555 5555", NOT_LUHN16])
def test_free_text_without_a_card_number_is_published_as_it_is(producer, text):
    assert not contains_card_number(text)
    producer.send_task("payments.sale", kwargs={"amount": "3.00", "card": TEST_CARD,
                                                "customer": {**CUSTOMER, "addr2": text}})
    (message,) = drain(producer)
    assert message["body"][1]["customer"]["addr2"] == text


# ---- the keyed id across a key rotation, the encrypted identifier itself ---------------------------------------------
def test_a_record_made_before_a_key_rotation_is_found_under_the_older_key_s_id(store):
    from tests.support.fake_gateway import FakeGateway as Gateway
    from worker.payments.flow import PaymentFlow

    new_key = "Zm9yLXRoZS1yb3RhdGlvbi10ZXN0LW9ubHktMzJieXQ="
    old_id, new_id = keyed_ids(SNOWFLAKE, [TEST_CARD_KEY, new_key])
    before = PaymentFlow(store=store, gateway=Gateway(), card_keys=[TEST_CARD_KEY])
    assert before.payment_id_for(SNOWFLAKE) == old_id
    rotated = PaymentFlow(store=store, gateway=Gateway(), card_keys=[new_key, TEST_CARD_KEY])
    assert rotated.payment_id_for(SNOWFLAKE) == keyed_ids(SNOWFLAKE, [new_key])[0] == new_id  # nothing kept yet
    before.refuse("sale", old_id, "kept before the rotation")  # a record under the old key's id
    assert rotated.payment_id_for(SNOWFLAKE) == old_id  # found: the same operation, not a second one
    assert rotated.payment_id_for("order-77") == "order-77"  # not card-like: the key itself, no lookup


@pytest.mark.parametrize("value", [SNOWFLAKE, int(SNOWFLAKE), "5555.5555.5555.4444"])
def test_a_sealed_identifier_opens_to_what_was_sealed_and_refuses_tampering(value):
    from worker.cards.vault import CardDecryptError

    encrypted = VAULT.encrypt_identifier(value)
    assert set(encrypted) == {"sealed_id", "masked"} and str(value) not in json.dumps(encrypted)
    assert VAULT.decrypt_identifier(encrypted) == value and type(VAULT.decrypt_identifier(encrypted)) is type(value)
    assert VAULT.encrypt_identifier(encrypted) is encrypted and VAULT.decrypt_identifier("plain") == "plain"
    with pytest.raises(CardDecryptError) as exc:
        VAULT.decrypt_identifier({**encrypted, "sealed_id": encrypted["sealed_id"][:-4] + "AAAA"})
    assert str(value) not in str(exc.value)
    with pytest.raises(CardDecryptError):
        CardVault(["Zm9yLXRoZS1yb3RhdGlvbi10ZXN0LW9ubHktMzJieXQ="]).decrypt_identifier(encrypted)  # another key


@pytest.mark.parametrize("task_name", ["payments.capture", "payments.refund", "payments.void"])
def test_a_follow_up_s_card_like_key_is_encrypted_then_kept_under_its_keyed_id(store, wire, task_name):
    from tests.support.fake_gateway import SALE_TRANS

    gateway = FakeGateway([reply(trans_type=task_name.split(".")[1].upper())])
    wire(gateway)
    task = celery.current_app.tasks[task_name]
    args, kwargs, _ = protect_publish(task_name, [SALE_TRANS], {"idempotency_key": int(SNOWFLAKE)}, {"task_id": "m-1"},
                                   vault=VAULT)
    assert VAULT.is_encrypted_identifier(kwargs["idempotency_key"])
    task.push_request(id="m-1", task=task_name, args=args, kwargs=kwargs, retries=0, called_directly=False,
                      is_eager=True, delivery_info={})
    try:
        outcome = task(*args, **kwargs)
    finally:
        task.pop_request()
    expected = keyed_ids(SNOWFLAKE, [TEST_CARD_KEY])[0]
    assert outcome["payment_id"] == expected and gateway.sends[0]["order_id"] == expected
    assert outcome["idempotency_key"] == "xxxxxxxxxxxx" + SNOWFLAKE[-4:] and SNOWFLAKE not in store.dump()
