"""The payment tasks' names and parameters, in one place.

Celery glue (``tasks/payments.py``: the task functions), the publish path (``worker/cards/messages.py``: which
argument is the card, how to name a positional argument in a refusal) and the outbox
(``worker/broker/app.py``: which messages it keeps) all read this table; a unit test checks that every task
function's signature matches it. Plain data: no Celery import.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PaymentTaskSpec", "PAYMENT_TASKS", "CARD_ARGUMENT", "PARAMETERS", "OUTBOX_TASKS"]


@dataclass(frozen=True)
class PaymentTaskSpec:
    name: str
    operation: str
    parameters: tuple[str, ...]
    #: the card travels in this parameter (encrypted on publish), or None
    card_parameter: str | None = None
    #: kept in the results store's outbox from publish until a worker claims it
    kept_in_outbox: bool = True

    @property
    def card_position(self) -> int | None:
        return self.parameters.index(self.card_parameter) if self.card_parameter else None


#: a repeat charge (issue 29, docs/tokens.md) names a token instead of a card; these come after the card ones
_CHARGE = ("amount", "card", "customer", "order_id", "idempotency_key", "token", "customer_token",
           "new_customer_token", "initiator", "scheduled")
_FOLLOW_UP = ("trans_id", "amount", "idempotency_key")
_CARD_ONLY = ("amount", "card", "customer", "order_id", "idempotency_key")

PAYMENT_TASKS: dict[str, PaymentTaskSpec] = {spec.name: spec for spec in (
    PaymentTaskSpec("payments.sale", "sale", _CHARGE, card_parameter="card"),
    PaymentTaskSpec("payments.auth", "auth", _CHARGE, card_parameter="card"),
    # money out to a card with no original: off unless PAYMENTS_ENABLE_CREDIT (docs/tokens.md)
    PaymentTaskSpec("payments.credit", "credit", _CARD_ONLY, card_parameter="card"),
    PaymentTaskSpec("payments.capture", "capture", _FOLLOW_UP),
    PaymentTaskSpec("payments.refund", "refund", _FOLLOW_UP),
    PaymentTaskSpec("payments.void", "void", ("trans_id", "idempotency_key")),
    # the new amount of an unsettled sale (an auth where the gateway allows it): docs/tokens.md
    PaymentTaskSpec("payments.update", "update", _FOLLOW_UP),
)}

#: Tasks that carry a card, and the position of ``card`` among their positional arguments.
CARD_ARGUMENT: dict[str, int] = {
    name: spec.card_position for name, spec in PAYMENT_TASKS.items() if spec.card_position is not None}
#: Positional parameters of the payment tasks (to name positional arguments in refusals).
PARAMETERS: dict[str, tuple[str, ...]] = {name: spec.parameters for name, spec in PAYMENT_TASKS.items()}
#: Messages kept in the outbox until claimed.
OUTBOX_TASKS: frozenset[str] = frozenset(name for name, spec in PAYMENT_TASKS.items() if spec.kept_in_outbox)
