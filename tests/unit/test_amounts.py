"""Amounts at delay(): an int (dollars or cents?) or a float is refused before anything is published, naming the
field; ``amount_cents=`` is the explicit way to count in cents. Through Celery's real publish path (ProtectingAMQP) on
kombu's in-memory broker, for every payment task that takes an amount and for signatures embedded in a message."""
from __future__ import annotations

from decimal import Decimal

import pytest
from celery import Celery, chain

from tests.support.env import TEST_CARD, TEST_CARD_KEY
from tests.unit.test_message_encryption import FakeServices, drain
from worker.broker.app import ProtectingAMQP
from worker.cards.messages import protect_body
from worker.cards.vault import CardVault
from worker.payments.amounts import AmountRefused, cents_to_amount, publish_amounts
from worker.services import ProcessServices, attach

CHARGES = ("payments.sale", "payments.auth")
FOLLOW_UPS = ("payments.capture", "payments.refund")


@pytest.fixture
def app():
    app = Celery("unit-amounts", amqp=ProtectingAMQP, broker="memory://", set_as_current=False)
    attach(app, ProcessServices(given=FakeServices()))  # type: ignore[arg-type]  # a fake: vault and outbox only
    app.conf.update(task_serializer="json", accept_content=["json"], result_backend=None)
    yield app
    drain(app)


def publish(app, name: str, *args, **kwargs) -> list[dict]:
    if name in CHARGES:
        kwargs.setdefault("card", dict(TEST_CARD))
    else:
        args = ("100000000001", *args)
    app.send_task(name, args=list(args), kwargs=kwargs)
    return drain(app)


@pytest.mark.parametrize("name", CHARGES + FOLLOW_UPS)
@pytest.mark.parametrize("how", ["keyword", "positional"])
def test_an_int_amount_is_refused_saying_why_and_nothing_is_published(app, name, how):
    with pytest.raises(AmountRefused) as info:
        if how == "keyword":
            publish(app, name, amount=300)
        elif name in CHARGES:
            app.send_task(name, args=[300, dict(TEST_CARD)])
        else:
            app.send_task(name, args=["100000000001", 300])
    message = str(info.value)
    assert info.value.field == "amount" and "ambiguous (dollars or cents?)" in message
    assert 'amount="300.00"' in message and "amount_cents=300 charges 3.00" in message
    assert drain(app) == []


@pytest.mark.parametrize("name", CHARGES + FOLLOW_UPS)
def test_a_float_amount_is_refused_at_delay_not_only_in_the_worker(app, name):
    with pytest.raises(AmountRefused, match="float, which cannot hold cents exactly"):
        publish(app, name, amount=3.0)
    assert drain(app) == []


@pytest.mark.parametrize("name", CHARGES + FOLLOW_UPS)
@pytest.mark.parametrize("cents,amount", [(300, "3.00"), (5, "0.05"), (0, "0.00"), (123456, "1234.56")])
def test_amount_cents_is_published_as_a_two_decimal_amount(app, name, cents, amount):
    [message] = publish(app, name, amount_cents=cents)
    kwargs = message["body"][1]
    assert kwargs["amount"] == amount and "amount_cents" not in kwargs


@pytest.mark.parametrize("value", ["3.00", Decimal("3.00"), None])
def test_strings_decimals_and_none_pass_unchanged(app, value):
    [message] = publish(app, "payments.refund", amount=value)
    amount = message["body"][1]["amount"]  # kombu's JSON carries a Decimal as a Decimal
    assert (None if amount is None else str(amount)) == (None if value is None else "3.00")


@pytest.mark.parametrize("kwargs,needle", [
    ({"amount": "3.00", "amount_cents": 300}, "not both"),
    ({"amount_cents": "300"}, "must be an int number of cents, not str"),
    ({"amount_cents": 3.0}, "not float"),
    ({"amount_cents": True}, "not bool"),
    ({"amount_cents": -1}, "must not be negative"),
])
def test_amount_cents_must_be_a_non_negative_int_alone(app, kwargs, needle):
    with pytest.raises(AmountRefused, match=needle):
        publish(app, "payments.sale", **kwargs)


def test_an_amount_in_a_chained_signature_is_checked_and_named_by_its_path(app):
    with pytest.raises(AmountRefused) as info:
        chain(app.signature("payments.auth", kwargs={"amount": "1.00", "card": dict(TEST_CARD)}),
              app.signature("payments.capture", args=("100000000001",), kwargs={"amount": 1})).apply_async()
    assert info.value.field == "chain[0].kwargs.amount"
    assert drain(app) == []


def test_a_message_published_again_keeps_its_amount():
    # the outbox re-publishes what was accepted once (perhaps by a producer from before the check)
    body = protect_body("payments.sale", [[3, dict(TEST_CARD)], {}, {}], vault=CardVault([TEST_CARD_KEY]))
    assert body[0][0] == 3


def test_tasks_without_an_amount_pass_through():
    assert publish_amounts("payments.void", ["1"], {"amount_cents": 1}) == (["1"], {"amount_cents": 1})
    assert publish_amounts("payments.sweep", [], {}) == ([], {})


def test_cents_to_amount_is_exact_for_large_values():
    assert cents_to_amount(10**12 + 1) == "10000000000.01"
