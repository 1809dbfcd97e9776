"""A payment record decoded once: the store's hash (text fields, docs/design.md) as typed values.

The store keeps and shows its records as dicts of text (``payments show --json``, the results store contract);
the flow, the sweep and reconciliation read them through :class:`PaymentRecord` instead of parsing fields where
they use them (``float(record.get("sent_ts") or 0) or None``, ``== "1"``). Garbage in a field (a record written by
hand, an older version) decodes to "not set", never to an exception: a record must never crash a worker.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from worker.gateway import InvalidInput
from worker.gateway.validation import Money, money
from worker.states import NON_FINAL, Status
from worker.store import task_outcome

__all__ = ["PaymentRecord", "decode", "decode_or_none"]


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _time(value: object) -> float | None:
    """An epoch-seconds field: None when empty, zero or unreadable."""
    try:
        seconds = float(value) if isinstance(value, str | int | float) and value != "" else 0.0
    except ValueError:
        return None
    return seconds or None


def _count(value: object) -> int:
    try:
        return int(value) if isinstance(value, str | int) and value != "" else 0
    except ValueError:
        return 0


def _status(value: object) -> Status | None:
    try:
        return Status(_text(value))
    except ValueError:
        return None


@dataclass(frozen=True)
class PaymentRecord:
    """One operation's record as the flow reads it. ``fields``: the hash as the store gave it (what
    :meth:`outcome` shows, unchanged)."""

    payment_id: str
    operation: str
    status: Status | None
    amount: str  # as recorded: "3.00", "" (a void, an amount-less capture/refund), or a refused request's text
    trans_id: str = ""
    masked_account: str = ""
    card_type: str = ""
    target: str = ""  # the trans id a follow-up refers to
    parent: str = ""  # a follow-up's original
    message: str = ""
    error_class: str = ""
    created_at: str = ""
    created_ts: float | None = None  # Redis time of the claim that made it
    sent_ts: float | None = None  # by when the last attempt that may have reached the gateway had left
    next_check_ts: float | None = None
    lease_owner: str = ""
    lease_until: float | None = None
    in_flight: bool = False  # an attempt noted and not yet reported
    not_charged: bool = False
    needs_human: bool = False
    reconcile_tries: int = 0
    fields: Mapping[str, object] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def decode(cls, record: Mapping[str, object]) -> PaymentRecord:
        """The store's hash (or a task outcome) as a typed record."""
        get = record.get
        return cls(
            payment_id=_text(get("payment_id")), operation=_text(get("operation")), status=_status(get("status")),
            amount=_text(get("amount")), trans_id=_text(get("trans_id")),
            masked_account=_text(get("masked_account")), card_type=_text(get("card_type")),
            target=_text(get("target")), parent=_text(get("parent")), message=_text(get("message")),
            error_class=_text(get("error_class")), created_at=_text(get("created_at")),
            created_ts=_time(get("created_ts")), sent_ts=_time(get("sent_ts")),
            next_check_ts=_time(get("next_check_ts")), lease_owner=_text(get("lease_owner")),
            lease_until=_time(get("lease_until")), in_flight=get("in_flight") == "1",
            not_charged=get("not_charged") == "1", needs_human=get("needs_human") == "1",
            reconcile_tries=_count(get("reconcile_tries")), fields=record,
        )

    @property
    def final(self) -> bool:
        return self.status is not None and self.status not in NON_FINAL

    @property
    def money(self) -> Money | None:
        """The recorded amount as :class:`Money` (zero included), or None (none recorded, or not an amount)."""
        try:
            return money(self.amount, allow_zero=True) if self.amount else None
        except InvalidInput:
            return None

    @property
    def amount_value(self) -> Decimal | None:
        found = self.money
        return found.value if found is not None else None

    def outcome(self) -> dict[str, Any]:
        """What a task returns for this record (the contract's fields, worker.store.task_outcome)."""
        return task_outcome(self.fields)


def decode(record: Mapping[str, object]) -> PaymentRecord:
    return PaymentRecord.decode(record)


def decode_or_none(record: Mapping[str, object] | None) -> PaymentRecord | None:
    return PaymentRecord.decode(record) if record else None
