"""What ``payments enqueue`` refuses before anything is enqueued: what the worker would refuse, with the message it
would record (``FIELD: ...``), by the worker's own validation (worker/gateway/validation.py), in the order the flow
checks it (card, amount, customer, order id; trans id, amount)."""
from __future__ import annotations

from typing import Any

from worker.gateway import validation


def check_before_enqueue(op: str, *, amount: Any, card: Any = None, customer: Any = None, order_id: Any = None,
                         trans_id: Any = None) -> None:
    """Raises :class:`worker.gateway.InvalidInput` naming the field."""
    if op in ("sale", "auth"):
        validation.card(card)
        validation.amount(amount, allow_zero=(op == "auth"))
        validation.customer(customer)
        if order_id is not None:
            validation.invoice_id(order_id)
    else:
        validation.trans_id(trans_id)
        if op != "void" and amount is not None:
            validation.amount(amount)
