"""A fake BluePay gateway for the flow, task-policy and sweep unit tests: a scripted class, not a mock.

Moved here from tests/unit/test_flow.py (unchanged but for a type annotation), so that the flow, task-policy
and sweep tests use the same one.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from worker.gateway import OutcomeUnknown, Response

SALE_TRANS = "100000000101"


class UnexpectedCall(BaseException):
    """Not an Exception: the flow's "stq failed, cannot tell" handler must not swallow a test failure."""


def reply(status="APPROVED", message="Approved Sale", trans_type="SALE", trans_id=SALE_TRANS, **fields):
    base: dict[str, Any] = dict(amount="3.00", auth_code="AUTH42", avs="_", cvv2="M",
                                masked_account="xxxxxxxxxxxx1111", card_type="VISA")
    if status != "APPROVED" or trans_type in ("VOID", "CAPTURE", "REFUND"):
        base.update(auth_code="")
    base.update(fields)
    return Response(status=status, message=message, trans_id=trans_id, trans_type=trans_type, **base)


def duplicate():
    return OutcomeUnknown("DUPLICATE", duplicate=True, response=reply(message="DUPLICATE", trans_id=""))


class FakeGateway:
    """The client's verbs, answering from a script.

    ``script``: what each money-moving call does in turn (a Response to return, an exception to raise, or a
    function of the call to run: it returns or raises). ``stq``: what each ``query`` does in turn (a Response,
    None for "provably absent", or an exception). Calls are recorded; running out of script is a test failure
    (an unexpected call), raised as a BaseException so that no handler in the flow can take it for an answer.
    """

    def __init__(self, script=(), stq=()):
        self.script = list(script)
        self.stq = list(stq)
        self.sends: list[dict] = []
        #: the fence's answer before each send: (Redis time: TRANS_SUBMIT_TIMESTAMP, TRANS_EXPIRE_PERIOD minutes)
        self.stamps: list[tuple[float, int]] = []
        self.queries: list[dict] = []
        self.windows: list[tuple[float, float] | None] = []  # each query's ``between`` (Unix times)

    def _next(self, queue, what, call=None):
        if not queue:
            raise UnexpectedCall(f"unexpected gateway call: {what}")
        item = queue.pop(0)
        if callable(item) and not isinstance(item, (Response, BaseException)):
            item = item(call)
        if isinstance(item, BaseException):
            raise item
        return item

    def _send(self, verb, fence=None, **call):
        if fence is not None:  # as the client does before each attempt: FenceLost propagates, nothing is "sent"
            self.stamps.append(fence())
        self.sends.append({"verb": verb, **call})
        return self._next(self.script, f"{verb} {call}", call)

    def sale(self, amount, card, customer=None, order_id=None, duplicate_override=False, invoice_id=None, fence=None):
        return self._send("sale", fence, amount=amount, card=card, order_id=order_id,
                          duplicate_override=duplicate_override, invoice_id=invoice_id)

    def auth(self, amount, card, customer=None, order_id=None, duplicate_override=False, invoice_id=None, fence=None):
        return self._send("auth", fence, amount=amount, card=card, order_id=order_id,
                          duplicate_override=duplicate_override, invoice_id=invoice_id)

    def credit(self, amount, card, customer=None, order_id=None, duplicate_override=False, invoice_id=None,
               fence=None):
        return self._send("credit", fence, amount=amount, card=card, order_id=order_id,
                          duplicate_override=duplicate_override, invoice_id=invoice_id)

    def capture(self, trans_id, amount=None, order_id=None, fence=None):
        return self._send("capture", fence, trans_id=trans_id, amount=amount, order_id=order_id)

    def refund(self, trans_id, amount=None, order_id=None, fence=None):
        return self._send("refund", fence, trans_id=trans_id, amount=amount, order_id=order_id)

    def update(self, trans_id, amount=None, order_id=None, fence=None):
        return self._send("update", fence, trans_id=trans_id, amount=amount, order_id=order_id)

    def void(self, trans_id, order_id=None, fence=None):
        return self._send("void", fence, trans_id=trans_id, order_id=order_id)

    def query_all(self, *, trans_id=None, order_id=None, days_back=30, between=None):
        """The rows of the next ``stq`` item: None -> [] (absent), a Response -> [it], a list as it is. A scripted row
        without an order_id is a row under the ORDER_ID asked for (what stq searched by); a test of a row of another
        payment says so (``order_id=...``)."""
        self.queries.append({"trans_id": trans_id, "order_id": order_id})
        self.windows.append(between)
        item = self._next(self.stq, f"query {order_id or trans_id}")
        rows = [] if item is None else list(item) if isinstance(item, (list, tuple)) else [item]
        return [row if row.order_id or not order_id else dataclasses.replace(row, order_id=order_id) for row in rows]

    def query(self, *, trans_id=None, order_id=None, days_back=30, between=None):
        rows = self.query_all(trans_id=trans_id, order_id=order_id, days_back=days_back, between=between)
        return rows[0] if rows else None
