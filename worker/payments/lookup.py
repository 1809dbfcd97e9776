"""Finding payments: Redis first (every live record), then the archive (records older than PAYMENTS_RETENTION).

Shared by every face that looks a payment up (the ``payments`` command, the operator console), so there is one
answer to "where is this payment".
"""
from __future__ import annotations

from typing import Any

from worker.archive import ArchiveUnavailable
from worker.cards.numbers import is_card_like_identifier, keyed_ids, mask_text


class ArchiveUnreadable(Exception):
    """Redis does not hold the payment and the archive cannot be read: the answer is not known."""


def record_ids(svc: Any, payment_id: str) -> list[str]:
    """Where a payment id or idempotency key is kept: itself, but a card-like key under its keyed ids (one per
    card key: a record made before a key rotation too), never under the key (worker.cards.numbers)."""
    return keyed_ids(payment_id, svc.card_keys) if is_card_like_identifier(payment_id) else [payment_id]


def find_record(svc: Any, payment_id: str) -> tuple[dict[str, Any] | None, str]:
    """The record and where it was found (``"redis"`` or ``"archive"``). ``payment_id``: a payment id or the
    idempotency key it was made from (a card-like key is looked up by its keyed id); errors never repeat a
    card-like key (masked)."""
    ids = record_ids(svc, payment_id)
    for pid in ids:
        record = svc.store.get(pid)
        if record is not None:
            return record, "redis"
    try:
        for pid in ids:
            record = svc.archive.get(pid)
            if record is not None:
                return record, "archive"
        return None, "archive"
    except ArchiveUnavailable as exc:
        raise ArchiveUnreadable(f"no payment with id {mask_text(payment_id)!r} in Redis, and the archive cannot be "
                                f"read: {exc}") from None


def list_records(svc: Any, *, status: str | None = None, operation: str | None = None, merchant: str | None = None,
                 limit: int = 50, warn: Any = None) -> list[dict[str, Any]]:
    """Redis's records newest first, then the archive's up to ``limit``; a record both hold (changed after it was
    copied: same key, same creation) is shown once, as Redis has it. ``warn(text)`` hears that only Redis's
    records could be read."""
    records: list[dict[str, Any]] = svc.store.list(status=status, operation=operation, merchant=merchant,
                                                   limit=limit)
    if len(records) >= limit:
        return records
    seen = {r["payment_id"] for r in records}
    try:
        archived = svc.archive.list(status=status, operation=operation, merchant=merchant, limit=limit)
    except ArchiveUnavailable as exc:
        if warn is not None:
            warn(f"only Redis's records: {exc}")
        return records
    for rec in archived:
        if len(records) >= limit:
            break
        live = None if rec["payment_id"] in seen else svc.store.get(rec["payment_id"])
        if rec["payment_id"] not in seen and (live is None or live.get("created_ts") != rec.get("created_ts")):
            records.append(rec)
    return records
