"""What a record shows outside the store: the contract's outcome fields."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.states import TASK_STATUSES, Status
from worker.store.encoding import to_str
from worker.store.fields import CONTRACT_FIELDS as CONTRACT_FIELDS
from worker.store.fields import OPTIONAL_PUBLIC_FIELDS as OPTIONAL_PUBLIC_FIELDS


def public_outcome(record: Mapping[str, Any] | None) -> dict[str, Any]:
    """The JSON-safe outcome the store shows: contract fields plus the optional public ones present
    (non-empty), without lease/internal/epoch fields and without history."""
    record = record or {}
    out: dict[str, Any] = {}
    for f in CONTRACT_FIELDS:
        v = record.get(f, "")
        if f == "attempts":
            try:
                out[f] = int(v or 0)
            except (TypeError, ValueError):
                out[f] = 0
        else:
            out[f] = to_str(v)
    for f in OPTIONAL_PUBLIC_FIELDS:
        v = record.get(f)
        if v not in (None, ""):
            out[f] = to_str(v)
    return out


def task_outcome(record: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a task returns: the public outcome, with an operation still in flight shown as UNKNOWN
    (the contract's statuses; never PENDING or RETRYING)."""
    out = public_outcome(record)
    if out["status"] not in TASK_STATUSES:
        out["status"] = Status.UNKNOWN.value
    return out
