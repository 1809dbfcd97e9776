"""Which transitions are events, and what an event says. Pure: no Redis.

An event comes from one entry of the store's audit stream (written by the same Lua script as the transition):
its id is made from the entry's stream id (:func:`event_id`), so turning the same entry into an event twice gives
the same event.
Its ``data`` is the payment's public outcome (masked: the same fields as the stored outcome) with the status the
transition reached and ``sequence``, the payment's own event counter (1, 2, ...), for ordering.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from worker.cards.numbers import mask_text
from worker.states import NON_FINAL, Status
from worker.store.outcomes import public_outcome

#: Every event type, for ``--events`` filters and documentation.
EVENT_TYPES = (
    "payment.approved", "payment.declined", "payment.error", "payment.skipped", "payment.needs_human",
    "payment.voided", "payment.captured", "payment.refunded", "payment.partially_refunded", "payment.reopened",
    "payment.resolved",
)

_FIRST_OUTCOME = {
    Status.APPROVED: "payment.approved", Status.DECLINED: "payment.declined", Status.ERROR: "payment.error",
    Status.SKIPPED: "payment.skipped", Status.VOIDED: "payment.voided", Status.CAPTURED: "payment.captured",
    Status.REFUNDED: "payment.refunded", Status.PARTIALLY_REFUNDED: "payment.partially_refunded",
}
_LATER = {
    Status.VOIDED: "payment.voided", Status.CAPTURED: "payment.captured", Status.REFUNDED: "payment.refunded",
    Status.PARTIALLY_REFUNDED: "payment.partially_refunded",
    # a void of the capture or of the refund gave the original back
    Status.APPROVED: "payment.reopened",
}
#: fields a later change of the record adds (reflect, resolve): not part of an earlier transition's event
_LATER_FIELDS = ("voided_by", "captured_by", "refunded_by", "refunded_amount")
#: resolve.lua's history note
RESOLVED_NOTE = "resolved by "


def event_id(stream_id: str) -> str:
    """``evt_`` + the stream id's milliseconds in hex, ``s`` and its sequence: never a run of 13+ digits (a card-like
    identifier to every scanner), one id per entry."""
    ms, _, seq = stream_id.partition("-")
    return f"evt_{int(ms):x}s{int(seq or 0)}"


def event_type(entry: Mapping[str, str], needs_human: bool = False) -> str | None:
    """The event a transition (an audit entry: ``from``, ``to``, ``note``) is, or None (not one a merchant is told
    of: a claim, a parking, a retry)."""
    before, after, note = entry.get("from", ""), entry.get("to", ""), entry.get("note", "")
    if after in NON_FINAL or after not in Status.__members__:
        return None
    if note.startswith(RESOLVED_NOTE):
        return "payment.resolved"
    if before == after:
        return None
    if before == "" or before in NON_FINAL:
        if after == Status.ERROR and needs_human:
            return "payment.needs_human"
        return _FIRST_OUTCOME.get(Status(after))
    return _LATER.get(Status(after))


def _masked(value: Any) -> Any:
    # The store refuses card-like values already; this is the webhook's own guard (free text such as a message).
    return mask_text(value) if isinstance(value, str) else value


def event_data(entry: Mapping[str, str], record: Mapping[str, Any] | None) -> dict[str, Any]:
    """The event's ``data`` without ``sequence``: the record's public outcome as of the transition's status (the
    record may have moved on since; its other fields are read when the event is made), or, for a record that has
    left Redis, what the audit entry says."""
    if record:
        data = public_outcome(record)
        if record.get("status") != entry.get("to"):
            # the record moved on before the event was made: what later changes added is theirs to tell
            for later in _LATER_FIELDS:
                data.pop(later, None)
            data["updated_at"] = entry.get("at", "")
    else:
        data = {"payment_id": entry.get("payment_id", ""), "operation": entry.get("operation", ""),
                "trans_id": entry.get("trans_id", "")}
    data["status"] = entry.get("to", "")
    data["previous_status"] = entry.get("from", "")
    if entry.get("trans_id"):
        data["trans_id"] = entry["trans_id"]
    data["note"] = entry.get("note", "")
    data["changed_at"] = entry.get("at", "")
    return {k: _masked(v) for k, v in data.items()}


def event_body(kind: str, timestamp: str, data: Mapping[str, Any], sequence: int) -> str:
    """The JSON body every delivery of the event sends, byte for byte."""
    return json.dumps({"type": kind, "timestamp": timestamp, "data": {**data, "sequence": sequence}},
                      sort_keys=True, separators=(",", ":"))
