"""One checked request per operation (worker/payments/requests.py): built once, refused with what binds the key."""
from __future__ import annotations

from decimal import Decimal
from typing import Any

from worker.cards.vault import DEVELOPMENT_KEY
from worker.gateway import Card
from worker.gateway.validation import Money
from worker.payments.requests import (
    ChargeRequest,
    FollowUpRequest,
    Refusal,
    charge_request,
    follow_up_request,
    refusal_fingerprints,
    request_fingerprints,
)

CARD = {"number": "4111111111111111", "expire": "1230", "cvv2": "987"}
KEYS = [DEVELOPMENT_KEY]


def test_a_charge_is_checked_once_into_typed_values() -> None:
    request = charge_request("sale", "order-1", amount=Decimal("3.5"), card=CARD, customer={"name1": " Ann "},
                             invoice_id=42, shown_key=None, then_void=True, card_keys=KEYS)
    assert isinstance(request, ChargeRequest)
    assert request.amount == Money(Decimal("3.50")) and isinstance(request.card, Card)
    assert request.customer == {"NAME1": "Ann"} and request.invoice_id == "42"
    assert request.fields == {"amount": "3.50", "order_id": "order-1", "masked_account": "xxxxxxxxxxxx1111",
                              "invoice_id": "42", "then_void": "1"}
    assert "4111111111111111" not in repr(request) and "987" not in repr(request.card)
    assert request.fingerprints(KEYS) == request_fingerprints("sale", amount="3.50",
                                                              card_number="4111111111111111", card_keys=KEYS)


def test_a_bad_charge_is_a_refusal_bound_to_what_was_given_never_an_exception() -> None:
    for bad in ({"amount": 3.0}, {"amount": "-1"}, {"card": {"number": "4111111111111112", "expire": "1230"}},
                {"customer": {"shoe_size": "9"}}, {"amount": "0.00"}):
        given: dict[str, Any] = {"amount": "3.00", "card": CARD, "customer": None, "invoice_id": None, **bad}
        refused = charge_request("sale", "order-2", card_keys=KEYS, **given)
        assert isinstance(refused, Refusal) and refused.message.startswith("invalid input: ")
        assert refused.fingerprints == refusal_fingerprints(
            "sale", {"amount": given["amount"], "card": given["card"], "customer": given["customer"],
                     "order_id": None}, KEYS)
        assert "4111111111111112" not in str(refused)
    assert isinstance(charge_request("auth", "order-3", amount="0.00", card=CARD), ChargeRequest)  # verification


def test_a_follow_up_names_bluepays_id_and_takes_money_or_none() -> None:
    capture = follow_up_request("capture", "cap-1", trans_id=100000000101, amount="2", parent="order-1")
    assert isinstance(capture, FollowUpRequest)
    assert capture.trans_id == "100000000101" and capture.amount == Money(Decimal("2.00"))
    assert capture.fields == {"target": "100000000101", "order_id": "cap-1", "amount": "2.00", "parent": "order-1"}
    void = follow_up_request("void", "v-1", trans_id="100000000101", amount="5.00")
    assert isinstance(void, FollowUpRequest) and void.amount is None  # a void moves no amount
    refused = follow_up_request("refund", "r-1", trans_id="12ab")
    assert isinstance(refused, Refusal) and refused.fields["target"] == "12ab"
