"""One checked request per operation, built once where a payment enters (the task edge, worker/tasks/payments.py).

What the producer gave (``sale.delay(amount=..., card=..., ...)``, docs/design.md) becomes a :class:`ChargeRequest`
(sale, auth) or a :class:`FollowUpRequest` (capture, refund, void) whose values are checked once, by the gateway's
own rules (``worker.gateway.validation``): the amount as :class:`~worker.gateway.validation.Money`, the card as a
:class:`~worker.gateway.validation.Card`, the customer as BluePay's fields. Or, when something does not pass, a
:class:`Refusal` holding what the refused request is recorded and bound by. The flow then runs the request without
checking it again.

Ids are named once: ``payment_id`` is ours (the record's name and the gateway's ORDER_ID), ``shown_key`` the
producer's idempotency key as the record shows it (masked when card-like), ``invoice_id`` the producer's
``order_id`` (BluePay's INVOICE_ID); BluePay's own id is a follow-up's ``trans_id``.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from worker.cards.numbers import card_fingerprints, mask_number
from worker.gateway import Card, InvalidInput, validation
from worker.gateway.scrub import scrub
from worker.gateway.validation import Money
from worker.payments.repeat import RepeatCharge, RepeatPlan, plan_repeat

__all__ = ["Delivery", "ChargeRequest", "FollowUpRequest", "Refusal", "PaymentRequest", "charge_request",
           "follow_up_request", "CHARGES", "FOLLOW_UPS", "request_fingerprints", "refusal_fingerprints", "short"]

ChargeOperation = Literal["sale", "auth", "credit"]
FollowUpOperation = Literal["capture", "refund", "void", "update"]
#: the operation names (worker/catalogue.py's) as the request types' words
CHARGES: dict[str, ChargeOperation] = {"sale": "sale", "auth": "auth", "credit": "credit"}
FOLLOW_UPS: dict[str, FollowUpOperation] = {"capture": "capture", "refund": "refund", "void": "void",
                                             "update": "update"}
TRANS_ID = re.compile(r"\d{12}")


def short(text: object, limit: int = 200) -> str:
    """What we record of a caller's value: scrubbed of anything card-like, and bounded."""
    cleaned = scrub(str(text))
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


@dataclass(frozen=True)
class Delivery:
    """This run of a request: the broker message (whose outbox entry the claim removes), whether it may have run
    before (stq is asked before the first send), and the producer's ``retry_failed`` (run again an ERROR of this
    key that provably charged nothing)."""

    message_id: str = ""
    redelivered: bool = False
    retry_failed: bool = False


@dataclass(frozen=True)
class ChargeRequest:
    """A checked SALE or AUTH."""

    operation: ChargeOperation
    payment_id: str
    amount: Money
    card: Card | None  # None: a repeat charge of a stored card (``repeat``: its token)
    customer: Mapping[str, str]  # BluePay's field names, checked
    invoice_id: str | None = None
    shown_key: str | None = None
    then_void: bool = False
    #: the record's fields as claimed (the card masked; never the number or CVV2)
    fields: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: a token, a customer token, a card being stored, stored-credential flags (docs/tokens.md)
    repeat: RepeatPlan = field(default_factory=RepeatPlan)

    def fingerprints(self, card_keys: Sequence[str]) -> list[str]:
        return request_fingerprints(self.operation, amount=str(self.amount), target=self.repeat.target,
                                    card_number=self.card.number if self.card else None, card_keys=card_keys)


@dataclass(frozen=True)
class FollowUpRequest:
    """A checked CAPTURE, REFUND or VOID of BluePay's transaction ``trans_id`` (``amount`` None: the whole, or what
    is left; always None for a void)."""

    operation: FollowUpOperation
    payment_id: str
    trans_id: str
    amount: Money | None = None
    fields: Mapping[str, str] = field(default_factory=dict, repr=False)

    def fingerprints(self, card_keys: Sequence[str] = ()) -> list[str]:
        return request_fingerprints(self.operation, amount=str(self.amount) if self.amount else None,
                                    target=self.trans_id)


@dataclass(frozen=True)
class Refusal:
    """A request that did not pass its checks: recorded as a final ERROR (InvalidInput) bound to what was given."""

    operation: str
    payment_id: str
    message: str
    fields: Mapping[str, str]
    fingerprints: Sequence[str]


PaymentRequest = ChargeRequest | FollowUpRequest


def charge_request(operation: ChargeOperation, payment_id: str, *, amount: object, card: object,
                   customer: object = None, invoice_id: object = None, then_void: bool = False,
                   shown_key: str | None = None, card_keys: Sequence[str] = (),
                   repeat: RepeatCharge | None = None) -> ChargeRequest | Refusal:
    """SALE or AUTH as the producer gave it (``card``: the clear card dict, opened just before; None with a token
    or customer token in ``repeat``, docs/tokens.md)."""
    repeat = repeat or RepeatCharge()
    number = card.get("number") if isinstance(card, dict) else None
    if type(invoice_id) is int:  # a numeric order id travels as its digits (masked in the record if card-like)
        invoice_id = str(invoice_id)
    fields = {"amount": short(amount, 32) if amount is not None else "", "order_id": payment_id,
              "masked_account": mask_number(str(number)) if number else ""}
    if invoice_id is not None:
        fields["invoice_id"] = short(invoice_id, 64)
    if shown_key:
        fields["idempotency_key"] = shown_key
    if then_void:
        fields["then_void"] = "1"
    try:
        checked_card = validation.card(card) if card is not None else None
        checked_amount = validation.money(amount, allow_zero=(operation == "auth"))
        checked_customer = validation.customer(customer)
        checked_invoice = validation.invoice_id(invoice_id) if invoice_id is not None else None
        plan = plan_repeat(operation, payment_id, repeat, card_given=checked_card is not None,
                           amount=str(checked_amount))
    except InvalidInput as exc:
        given = {"amount": amount, "card": card, "customer": customer, "order_id": invoice_id, **repeat.as_request()}
        return Refusal(operation, payment_id, f"invalid input: {exc}", fields,
                       refusal_fingerprints(operation, given, card_keys))
    fields["amount"] = str(checked_amount)
    fields.update(plan.record_fields)
    return ChargeRequest(operation, payment_id, checked_amount, checked_card, checked_customer, checked_invoice,
                         shown_key, then_void, fields, plan)


def follow_up_request(operation: FollowUpOperation, payment_id: str, *, trans_id: object, amount: object = None,
                      parent: str | None = None, reason: str | None = None, shown_key: str | None = None,
                      card_keys: Sequence[str] = ()) -> FollowUpRequest | Refusal:
    """CAPTURE, REFUND or VOID of ``trans_id``; ``parent``: our record of it when known; ``reason`` is recorded."""
    target = trans_id if isinstance(trans_id, str) and TRANS_ID.fullmatch(trans_id) else short(trans_id, 32)
    fields = {"target": target, "order_id": payment_id}
    if shown_key:
        fields["idempotency_key"] = shown_key
    if amount is not None:
        fields["amount"] = short(amount, 32)
    if parent:
        fields["parent"] = parent
    if reason:
        fields["reason"] = short(reason)
    try:
        checked_id = validation.trans_id(trans_id)
        if operation == "update" and amount is None:
            raise InvalidInput("amount", "an update sets the new amount: required")
        checked_amount = validation.money(amount) if operation != "void" and amount is not None else None
    except InvalidInput as exc:
        given = {"trans_id": trans_id, "amount": amount}
        return Refusal(operation, payment_id, f"invalid input: {exc}", fields,
                       refusal_fingerprints(operation, given, card_keys))
    if checked_amount is not None:
        fields["amount"] = str(checked_amount)
    return FollowUpRequest(operation, payment_id, checked_id, checked_amount, fields)


def request_fingerprints(operation: str, *, amount: str | None, target: str = "", card_number: str | None = None,
                         card_keys: Sequence[str] = ()) -> list[str]:
    """What an idempotency key is bound to: operation, amount, target trans id and a keyed hash of the card
    number (never the number), one fingerprint per card key (the first is stored; the others still match a
    record stored before a key rotation)."""
    card_parts = card_fingerprints(card_number, card_keys) if card_number else [""]
    return [hashlib.sha256(f"v1|{operation}|{amount or ''}|{target}|{part}".encode()).hexdigest()
            for part in card_parts]


def refusal_fingerprints(operation: str, request: Mapping[str, object], card_keys: Sequence[str] = ()) -> list[str]:
    """What a key is bound to when its request was refused for bad input: the whole input as given (it was never
    sent, so nothing narrower identifies it), any card number as a keyed hash (never the number, never the CVV2).
    The ``refused`` namespace is no runnable request's: a later, different request under the key is an
    ``IdempotencyMismatch``, and the same request again gets the stored refusal. One fingerprint per card key."""
    keys = list(card_keys)
    return [hashlib.sha256(f"v1|refused|{operation}|{_canonical(request, keys, i)}".encode()).hexdigest()
            for i in range(max(len(keys), 1))]


def _canonical(value: object, card_keys: list[str], key_index: int) -> str:
    return json.dumps(_fingerprintable(value, card_keys, key_index), sort_keys=True, default=str)


def _fingerprintable(value: object, card_keys: list[str], key_index: int) -> object:
    """``value`` with every card (a mapping with a number) as a keyed hash of its number and its expiry."""
    if isinstance(value, Mapping):
        if "number" in value:
            number = value.get("number")
            hashed = (card_fingerprints(str(number), card_keys)[key_index]
                      if card_keys and isinstance(number, str | int) else "unhashed")
            return {"card": hashed, "expire": str(value.get("expire"))}
        return {str(k): _fingerprintable(v, card_keys, key_index) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_fingerprintable(v, card_keys, key_index) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    return f"{type(value).__name__}:{value}"
