"""worker.cards.messages through Celery's real publish paths, on an in-memory broker (kombu's ``memory://``).

The producer is a Celery app with the project's ``ProtectingAMQP``; ``services()`` is a fake with the real card vault
and an in-memory outbox (the project's ``after_task_publish`` hook writes there). Every message is read back raw
from the broker, the way a worker or a scan of Redis would see it.
"""
from __future__ import annotations

import json
from typing import Any

import pytest
from celery import Celery, chain, group
from celery.app.task import Context

from tests.support.env import CUSTOMER, TEST_CARD, TEST_CARD_KEY
from worker.broker.app import ProtectingAMQP, current, republish
from worker.cards.messages import protect_body, protect_publish, unencrypted_card_in
from worker.cards.numbers import CardDataRefused
from worker.cards.vault import CardVault
from worker.gateway import InvalidInput
from worker.services import ProcessServices, attach

NUMBER, CVV2 = TEST_CARD["number"], TEST_CARD["cvv2"]
LUHN_ORDER = 1234567890123452  # passes Luhn: a numeric order id like one in ten


class FakeOutbox:
    def __init__(self):
        self.entries: dict[str, dict] = {}

    def put(self, task_id, message):
        self.entries[task_id] = json.loads(json.dumps(message))  # what Redis would keep (JSON)


class FakeStore:
    def __init__(self):
        self.outbox = FakeOutbox()


class FakeServices:
    def __init__(self):
        self.vault = CardVault([TEST_CARD_KEY])
        self.store = FakeStore()


@pytest.fixture
def fake_services(monkeypatch):
    fake = FakeServices()
    return fake


@pytest.fixture
def app(fake_services):
    app = Celery("unit-sealing", amqp=ProtectingAMQP, broker="memory://", set_as_current=False)
    attach(app, ProcessServices(given=fake_services))
    app.conf.update(task_serializer="json", accept_content=["json"], result_backend=None)

    if "payments.sale" not in app.tasks:  # (tasks/payments.py's shared task when it was imported already)
        @app.task(bind=True, name="payments.sale", shared=False)
        def sale(self, *args, **kwargs):  # only its publishing matters here (retry builds from a request)
            return None

    yield app
    drain(app)


def drain(app) -> list[dict]:
    """Every message waiting in the broker, raw: headers, properties and the serialized body."""
    out = []
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        while (message := channel.basic_get("celery")) is not None:
            out.append({"headers": message.headers, "properties": message.properties,
                        "raw": message.body.decode(), "body": message.decode()})
    return out


def clear_card_in(message: dict) -> bool:
    text = json.dumps(message["headers"]) + message["raw"]
    return NUMBER in text or "4111 1111" in text or f'"{CVV2}"' in text or "'" + CVV2 + "'" in text


def sig(app, name, *args, **kwargs):
    return app.signature(name, args=args, kwargs=kwargs, immutable=True)


def card_sale(app, **extra):
    return sig(app, "payments.sale", amount="3.00", card=dict(TEST_CARD), **extra)


# ---- encrypted wherever a message carries a card ----------------------------------------------------
PUBLISH_PATHS = {
    "send_task kwargs": lambda app: app.send_task("payments.sale", kwargs={"amount": "3.00", "card": TEST_CARD}),
    "send_task args": lambda app: app.send_task("payments.auth", args=["3.00", TEST_CARD, CUSTOMER]),
    "signature.delay": lambda app: app.signature("payments.sale").delay(amount="3.00", card=TEST_CARD),
    "task.apply_async": lambda app: app.tasks["payments.sale"].apply_async(("3.00", TEST_CARD)),
    "chain: card in a later link": lambda app: chain(
        sig(app, "payments.auth", amount="1.00", card=TEST_CARD), card_sale(app),
        sig(app, "payments.void", "100000000001")).apply_async(),
    "link=": lambda app: app.send_task("payments.void", args=["100000000001"], link=card_sale(app)),
    "link_error=": lambda app: app.send_task("payments.void", args=["100000000001"], link_error=card_sale(app)),
    "link= a group of card tasks": lambda app: app.send_task(
        "payments.void", args=["100000000001"],
        link=group(card_sale(app), sig(app, "payments.auth", amount="1.00", card=TEST_CARD))),
    "chain holding a group holding a chain": lambda app: chain(
        sig(app, "payments.void", "100000000001"),
        group(chain(card_sale(app), card_sale(app)), card_sale(app))).apply_async(),
    "signature options link inside a chain": lambda app: chain(
        sig(app, "payments.void", "100000000001"),
        card_sale(app).set(link=card_sale(app), link_error=card_sale(app))).apply_async(),
    "retry (signature_from_request)": lambda app: app.tasks["payments.sale"].signature_from_request(
        Context(args=["3.00", TEST_CARD], kwargs={}, chain=[dict(card_sale(app))], callbacks=[dict(card_sale(app))],
                errbacks=[dict(card_sale(app))], delivery_info={})).apply_async(),
}


@pytest.mark.parametrize("path", PUBLISH_PATHS)
def test_every_publish_path_seals_every_card_in_the_message(app, fake_services, path):
    PUBLISH_PATHS[path](app)
    messages = drain(app)
    assert messages, "nothing published"
    for message in messages:
        assert not clear_card_in(message), message["raw"][:500]
        assert unencrypted_card_in({"task": message["headers"]["task"], "args": message["body"][0],
                                 "kwargs": message["body"][1], **message["body"][2]}) is None
    raw = " ".join(m["raw"] for m in messages)
    assert '"sealed"' in raw  # the cards are there, encrypted
    for entry in fake_services.store.outbox.entries.values():  # what the outbox keeps is encrypted too
        assert NUMBER not in json.dumps(entry)


def test_sealed_cards_open_to_the_producer_s_card(app, fake_services):
    app.send_task("payments.void", args=["100000000001"],
                  link=sig(app, "payments.sale", amount="3.00", card=TEST_CARD), link_error=None)
    (message,) = drain(app)
    (callback,) = message["body"][2]["callbacks"]
    assert fake_services.vault.decrypt(callback["kwargs"]["card"]) == TEST_CARD


def test_the_producer_s_objects_are_not_changed(app):
    card = dict(TEST_CARD)
    link = sig(app, "payments.sale", amount="3.00", card=card)
    app.send_task("payments.sale", kwargs={"amount": "3.00", "card": card}, link=link)
    assert card == TEST_CARD and link["kwargs"]["card"] is card


def test_reprs_are_masked(app):
    app.send_task("payments.sale", args=["3.00", TEST_CARD, CUSTOMER, LUHN_ORDER])
    app.send_task("payments.auth", kwargs={"amount": "3.00", "card": TEST_CARD, "order_id": LUHN_ORDER})
    shown = " ".join(m["headers"]["argsrepr"] + m["headers"]["kwargsrepr"] for m in drain(app))
    assert "xxxxxxxxxxxx1111" in shown and "Testville" in shown
    assert NUMBER not in shown and CVV2 not in shown and "sealed" not in shown
    assert str(LUHN_ORDER) not in shown  # a repr is text: the numeric order id is masked there


def test_a_value_that_cannot_be_a_card_never_travels(app):
    app.send_task("payments.sale", kwargs={"amount": "3.00", "card": NUMBER})
    (message,) = drain(app)
    assert list(message["body"][1]["card"]) == ["invalid"] and NUMBER not in message["raw"]


def _name1_publisher(spelling: str) -> Any:
    return lambda app: app.send_task("payments.sale", kwargs={
        "amount": "3.00", "card": TEST_CARD, "customer": {**CUSTOMER, "name1": spelling}})


# ---- refused at the door ---------------------------------------------------------------------------
REFUSED = {  # free text (identifiers are encrypted instead: tests/unit/test_identifiers.py)
    "customer name1": (lambda app: app.send_task("payments.sale", kwargs={
        "amount": "3.00", "card": TEST_CARD, "customer": {**CUSTOMER, "name1": "4111 1111 1111 1111"}}),
        "customer.name1"),
    "customer addr1, positional": (lambda app: app.send_task("payments.auth", args=[
        "3.00", TEST_CARD, {**CUSTOMER, "addr1": f"x{NUMBER}"}]), "customer.addr1"),
    "amount": (lambda app: app.send_task("payments.sale", kwargs={"amount": NUMBER, "card": TEST_CARD}), "amount"),
    "int amount": (lambda app: app.send_task("payments.sale", kwargs={"amount": LUHN_ORDER, "card": TEST_CARD}),
                   "amount"),
    "trans id": (lambda app: app.send_task("payments.capture", args=[NUMBER]), "trans_id"),
    "extra argument": (lambda app: app.send_task("payments.sale", args=["3.00", TEST_CARD, *[None] * 8, NUMBER]),
                       "args[10]"),
    "token": (lambda app: app.send_task("payments.sale", kwargs={"amount": "3.00", "token": NUMBER}), "token"),
    "task id": (lambda app: app.send_task("payments.sale", kwargs={"amount": "3.00", "card": TEST_CARD},
                                          task_id=NUMBER), "task_id"),
    "chain's later link": (lambda app: chain(
        card_sale(app), card_sale(app, customer={"addr2": str(LUHN_ORDER)})).apply_async(),
        "chain[0].kwargs.customer.addr2"),
    "link=": (lambda app: app.send_task("payments.void", args=["100000000001"], link=sig(
        app, "payments.sale", amount="3.00", card=TEST_CARD, customer={"name1": NUMBER})),
        "callbacks[0].kwargs.customer.name1"),
    "link_error=": (lambda app: app.send_task("payments.void", args=["100000000001"], link_error=sig(
        app, "payments.void", NUMBER)), "errbacks[0].args[0]"),
    "group member": (lambda app: app.send_task("payments.void", args=["100000000001"], link=group(
        card_sale(app), card_sale(app, customer={"name2": NUMBER}))),
        "callbacks[0].kwargs.tasks[1].kwargs.customer.name2"),
    # every spelling of the rule (issue 25: six of them went into the broker in clear)
    **{f"customer name1 as {spelling!r}": (_name1_publisher(spelling), "customer.name1")
       for spelling in ("5555.5555.5555.4444", "5555/5555/5555/4444", "5555_5555_5555_4444", "5555\t5555\t5555\t4444",
                        "5555+5555+5555+4444", "5555   5555   5555   4444", "5555%205555%205555%204444",
                        "5555 -_5555./5555\t+4444")},
    # every other part of a message (issue 25: a header went to the broker and the outbox in clear)
    "headers=": (lambda app: app.tasks["payments.sale"].apply_async(
        kwargs={"amount": "3.00", "card": TEST_CARD}, headers={"merchant_ref": "5555555555554444"}),
        "headers.merchant_ref"),
    "headers= of send_task, int": (lambda app: app.send_task(
        "payments.sale", kwargs={"amount": "3.00", "card": TEST_CARD}, headers={"n": 5555555555554444}), "headers.n"),
    "stamped header": (lambda app: app.send_task(
        "payments.sale", kwargs={"amount": "3.00", "card": TEST_CARD}, stamped_headers=["mark"],
        mark="5555 5555 5555 4444"), "stamps.mark"),
    "extra publish option": (lambda app: app.send_task(
        "payments.sale", kwargs={"amount": "3.00", "card": TEST_CARD}, merchant_ref="5555555555554444"),
        "merchant_ref"),
    "a signature's headers": (lambda app: app.send_task("payments.void", args=["100000000001"], link=app.signature(
        "payments.void", args=["100000000002"], headers={"x": NUMBER})), "callbacks[0].options.headers.x"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_card_data_outside_the_card_is_refused_before_anything_is_published(app, fake_services, case):
    publish, field = REFUSED[case]
    with pytest.raises(CardDataRefused) as exc:
        publish(app)
    assert exc.value.field == field
    assert field in str(exc.value) and NUMBER not in str(exc.value) and str(LUHN_ORDER) not in str(exc.value)
    assert drain(app) == [] and fake_services.store.outbox.entries == {}


BAD_KEYS = {
    "trailing space": (lambda app: app.send_task("payments.sale", kwargs={
        "amount": "3.00", "card": TEST_CARD, "idempotency_key": "checkout-1 "}), "idempotency_key"),
    "leading space, positional": (lambda app: app.send_task("payments.sale", args=[
        "3.00", TEST_CARD, None, None, " checkout-1"]), "idempotency_key"),
    "inner space": (lambda app: app.send_task("payments.refund", args=["100000000001"], kwargs={
        "idempotency_key": "refund 1"}), "idempotency_key"),
    "control character": (lambda app: app.send_task("payments.void", args=["100000000001"], kwargs={
        "idempotency_key": "void\t1"}), "idempotency_key"),
    "a chain's later link": (lambda app: chain(card_sale(app), card_sale(app, idempotency_key="k\r")).apply_async(),
                             "chain[0].kwargs.idempotency_key"),
    "task id standing for the key": (lambda app: app.send_task("payments.sale", kwargs={
        "amount": "3.00", "card": TEST_CARD}, task_id="pay 1"), "task_id"),
}


@pytest.mark.parametrize("case", BAD_KEYS)
def test_an_idempotency_key_with_spaces_or_control_characters_is_refused_at_delay(app, fake_services, case):
    """The key becomes the store's key and the gateway's ORDER_ID: refused at the door (a ValueError naming the
    field), never trimmed; nothing is published."""
    publish, field = BAD_KEYS[case]
    with pytest.raises(InvalidInput) as exc:
        publish(app)
    assert isinstance(exc.value, ValueError) and exc.value.field == field and field in str(exc.value)
    assert drain(app) == [] and fake_services.store.outbox.entries == {}


def test_a_visible_ascii_idempotency_key_is_published_as_given(app, fake_services):
    app.send_task("payments.sale", kwargs={"amount": "3.00", "card": TEST_CARD, "idempotency_key": "ORD:42/7~!"})
    [message] = drain(app)
    assert message["body"][1]["idempotency_key"] == "ORD:42/7~!"


def test_an_int_order_id_that_passes_luhn_is_accepted_sealed_and_kept_sealed_in_the_outbox(app, fake_services):
    result = app.send_task("payments.sale", kwargs={"amount": "3.00", "card": TEST_CARD, "order_id": LUHN_ORDER})
    chain(card_sale(app), card_sale(app, order_id=LUHN_ORDER)).apply_async()
    messages = drain(app)
    assert len(messages) == 2
    vault = fake_services.vault
    assert vault.decrypt_identifier(messages[0]["body"][1]["order_id"]) == LUHN_ORDER  # encrypted, opens to the int
    kept = fake_services.store.outbox.entries[result.id]
    assert vault.decrypt_identifier(kept["body"][1]["order_id"]) == LUHN_ORDER and kept["name"] == "payments.sale"
    assert len(fake_services.store.outbox.entries) == 2
    for text in [json.dumps(e) for e in fake_services.store.outbox.entries.values()] + [m["raw"] for m in messages]:
        assert NUMBER not in text and str(LUHN_ORDER) not in text


def test_a_message_another_app_in_the_process_publishes_is_not_kept_in_the_outbox(app, fake_services):
    # A merchant's own Celery app (current in its process) publishing a payments.sale with a clear card: it did
    # not go through ProtectingAMQP, so its body is not ours to keep (the outbox would hold the card in clear).
    other = Celery("merchant", broker="memory://", set_as_current=False)
    other.conf.update(task_serializer="json", accept_content=["json"], result_backend=None)
    with current(app):  # what services() answers here is the fake: a wrong keep would land in it
        other.send_task("payments.sale", kwargs={"amount": "3.00", "card": TEST_CARD})
        app.send_task("payments.sale", kwargs={"amount": "5.00", "card": TEST_CARD})
    assert len(fake_services.store.outbox.entries) == 1
    assert all(NUMBER not in json.dumps(e) for e in fake_services.store.outbox.entries.values())


def test_the_sweeps_re_publication_leaves_the_outbox_entry_it_counted_alone(app, fake_services):
    # The sweep counts a re-publication on the entry before it publishes: a put from the publish hook would reset
    # that count to 0, and a message lost over and over would never be given up.
    result = app.send_task("payments.sale", kwargs={"amount": "3.00", "card": TEST_CARD})
    kept = fake_services.store.outbox.entries[result.id]
    fake_services.store.outbox.entries[result.id] = "counted by the sweep"
    republish(kept, publisher=app)
    first, again = drain(app)
    assert again["headers"]["id"] == first["headers"]["id"] == result.id and again["headers"]["payments_republished"]
    assert fake_services.store.outbox.entries == {result.id: "counted by the sweep"}
    assert not clear_card_in(again)


# ---- protect_publish and protect_body directly (the chord path, the outbox re-publish) -------------------
def test_a_chord_body_is_encrypted():
    vault = CardVault([TEST_CARD_KEY])
    body_sig: dict[str, Any] = {"task": "payments.sale", "args": [],
                                "kwargs": {"amount": "1.00", "card": dict(TEST_CARD)},
                                "options": {}, "subtask_type": None, "immutable": True}
    chord_sig = {"task": "celery.chord", "args": [], "options": {}, "subtask_type": "chord", "immutable": False,
                 "kwargs": {"header": {"task": "celery.group", "args": [], "options": {}, "subtask_type": "group",
                                       "kwargs": {"tasks": [dict(body_sig)]}},
                            "body": dict(body_sig), "kwargs": {}}}
    args, kwargs, options = protect_publish("payments.void", ["100000000001"], {},
                                         {"chord": dict(body_sig), "callbacks": [chord_sig]}, vault=vault)
    text = json.dumps([args, kwargs, options])
    assert NUMBER not in text and text.count('"sealed"') == 3
    assert vault.decrypt(options["chord"]["kwargs"]["card"]) == TEST_CARD


def test_protect_body_encrypts_an_old_outbox_entry_and_refuses_card_data():
    vault = CardVault([TEST_CARD_KEY])
    old = [[], {"amount": "3.00", "card": dict(TEST_CARD)},
           {"chain": [{"task": "payments.sale", "args": ["1.00", dict(TEST_CARD)], "kwargs": {}, "options": {}}],
            "callbacks": None, "errbacks": None, "chord": None}]
    encrypted = protect_body("payments.sale", old, vault=vault)
    assert NUMBER not in json.dumps(encrypted) and vault.decrypt(encrypted[2]["chain"][0]["args"][1]) == TEST_CARD
    assert protect_body("payments.sale", encrypted, vault=vault) == encrypted  # already encrypted: as it is
    with pytest.raises(CardDataRefused) as exc:
        protect_body("payments.sale", [[], {"amount": "3.00", "card": TEST_CARD, "customer": {"name1": NUMBER}}, {}],
                  vault=vault)
    assert exc.value.field == "customer.name1"


def test_protect_body_refuses_an_old_outbox_entry_whose_headers_hold_card_data():
    vault = CardVault([TEST_CARD_KEY])
    body = [[], {"amount": "3.00", "card": vault.encrypt(TEST_CARD)}, {}]
    headers: dict[str, Any] = {"id": "cd27c305-6820-4063-903f-1a2b3c4d5e6f", "origin": "gen4111111111111111@host",
               "argsrepr": "()", "stamps": {}, "stamped_headers": None}
    assert protect_body("payments.sale", body, vault=vault, headers=headers)[1] == body[1]
    with pytest.raises(CardDataRefused) as exc:
        protect_body("payments.sale", body, vault=vault, headers={**headers, "merchant_ref": "5555/5555/5555/4444"})
    assert exc.value.field == "merchant_ref"


# ---- the worker's check -------------------------------------------------------------------------------
ENCRYPTED = CardVault([TEST_CARD_KEY]).encrypt(TEST_CARD)
CLEAR = dict(TEST_CARD)


def request(task="payments.sale", args=(), kwargs=None, **embedded):
    return Context(task=task, args=list(args), kwargs=kwargs or {}, chain=embedded.get("chain"),
                   callbacks=embedded.get("callbacks"), errbacks=embedded.get("errbacks"), chord=embedded.get("chord"))


def s(task, *args, **kwargs):
    return {"task": task, "args": list(args), "kwargs": kwargs, "options": {}, "subtask_type": None}


UNSEALED_TABLE = [
    (request(kwargs={"amount": "3.00", "card": ENCRYPTED}), None),
    (request(args=["3.00", ENCRYPTED, CUSTOMER, CardVault([TEST_CARD_KEY]).encrypt_identifier(LUHN_ORDER)]), None),
    (request(kwargs={"card": ENCRYPTED,
                     "idempotency_key": CardVault([TEST_CARD_KEY]).encrypt_identifier(NUMBER)}), None),
    (request(args=["3.00", ENCRYPTED, CUSTOMER, LUHN_ORDER]), "order_id"),  # an int is no exception
    (request(kwargs={"card": ENCRYPTED, "idempotency_key": f"k-{NUMBER}"}), "idempotency_key"),
    (request(kwargs={"amount": "3.00", "card": {"invalid": "card must be a dict"}}), None),
    (request(task="payments.void", args=[{"payment_id": "p", "trans_id": "100000000123",
                                          "masked_account": "xxxxxxxxxxxx1111"}]), None),
    (request(kwargs={"amount": "3.00", "card": CLEAR}), "card"),
    (request(args=["3.00", CLEAR]), "card"),
    (request(args=["3.00", NUMBER]), "card"),
    (request(kwargs={"amount": "3.00", "card": ENCRYPTED, "customer": {"name1": NUMBER}}), "customer.name1"),
    (request(args=["3.00", ENCRYPTED, None, str(LUHN_ORDER)]), "order_id"),
    (request(kwargs={"card": ENCRYPTED}, chain=[s("payments.void", "100000000001"), s("payments.sale", "1.00", CLEAR)]),
     "chain[0].args[1]"),
    (request(kwargs={"card": ENCRYPTED}, callbacks=[s("payments.sale", card=CLEAR)]), "callbacks[0].kwargs.card"),
    (request(kwargs={"card": ENCRYPTED}, errbacks=[s("payments.auth", card=ENCRYPTED), s("payments.auth", card=CLEAR)]),
     "errbacks[1].kwargs.card"),
    (request(task="payments.void", args=["100000000001"],
             callbacks=[s("celery.group", tasks=[s("payments.sale", card=ENCRYPTED), s("payments.sale", card=CLEAR)])]),
     "callbacks[0].kwargs.tasks[1].kwargs.card"),
    (request(kwargs={"card": ENCRYPTED}, chord=s("payments.sale", card=CLEAR)), "chord.kwargs.card"),
    ({"task": "payments.sale", "args": [], "kwargs": {"card": CLEAR}}, "card"),  # a plain dict works too
    ({"task": "payments.sale", "args": [], "kwargs": {"card": ENCRYPTED}, "headers": {"ref": "5555.5555.5555.4444"}},
     "headers.ref"),
    ({"task": "payments.sale", "args": [], "kwargs": {"card": ENCRYPTED}, "stamps": {"mark": 5555555555554444}},
     "stamps.mark"),
    ({"task": "payments.sale", "args": [], "kwargs": {"card": ENCRYPTED}, "headers": {"payments_republished": True}},
     None),
    # as the worker builds it: a custom message header becomes Context.headers
    (Context(task="payments.sale", args=[], kwargs={"card": ENCRYPTED}, merchant_ref="5555 5555 5555 4444"),
     "headers.merchant_ref"),
]


@pytest.mark.parametrize("req,where", UNSEALED_TABLE)
def test_unencrypted_card_in(req, where):
    assert unencrypted_card_in(req) == where


def test_a_retry_publishes_a_sealed_card_like_key_again_as_it_is():
    """A worker's retry (a busy lease, an outage) publishes the message it runs: its card-like key is already
    encrypted, and is neither refused as "not a string" nor encrypted twice (it made Celery's retry a Reject)."""
    vault = CardVault([TEST_CARD_KEY])
    key = 4111111111111111110  # a Luhn-valid 19-digit int
    _, kwargs, _ = protect_publish("payments.sale", [], {"amount": "3.00", "card": TEST_CARD, "idempotency_key": key},
                                   {}, vault=vault)
    assert CardVault.is_encrypted_identifier(kwargs["idempotency_key"])
    _, again, _ = protect_publish("payments.sale", [], kwargs, {"retries": 1}, vault=vault)
    assert again["idempotency_key"] == kwargs["idempotency_key"]
    assert vault.decrypt_identifier(again["idempotency_key"]) == key
