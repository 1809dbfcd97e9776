"""Finding payments for the console: one search box over the lookups every face uses (worker/payments/lookup.py,
the store's trans id index, the archive's columns), Redis first, then the archive.

``q`` is tried as a payment id or idempotency key, a BluePay trans id, an invoice (order) id, or "LAST4 AMOUNT DAY"
(``1111 3.00 2026-12-07``: the masked card's last four digits, the amount and the UTC day it was made).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from worker.archive import ArchiveUnavailable
from worker.payments.lookup import ArchiveUnreadable, find_record

#: How many of Redis's newest records an invoice id is looked for in (Redis has no index of invoice ids).
INVOICE_SCAN = 5000
#: How many records of one day "last4 amount day" reads at most.
DAY_SCAN = 20000
MAX_QUERY = 200
CARD_AMOUNT_DAY = re.compile(r"^(\d{4})\s+(\d{1,9}(?:\.\d{1,2})?)\s+(\d{4}-\d{2}-\d{2})$")
TRANS_ID = re.compile(r"^\d{12}$")


@dataclass
class Found:
    records: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, record: dict[str, Any] | None, where: str) -> None:
        if record and all(r["payment_id"] != record["payment_id"] for r, _ in self.records):
            self.records.append((record, where))


def search(svc: Any, q: str) -> Found:
    found = Found()
    q = (q or "").strip()
    if not q:
        return found
    if len(q) > MAX_QUERY:
        found.notes.append(f"a search has at most {MAX_QUERY} characters")
        return found
    by_card = CARD_AMOUNT_DAY.match(q)
    if by_card:
        _by_card_amount_day(svc, found, *by_card.groups())
        return found
    try:
        record, where = find_record(svc, q)
        found.add(record, where)
    except ArchiveUnreadable as exc:
        found.notes.append(str(exc))
    if TRANS_ID.match(q):
        found.add(svc.store.find_by_trans_id(q), "redis")
        _archive(found, lambda: [svc.archive.find_by_trans_id(q)])
    for rec in svc.store.list(limit=INVOICE_SCAN):
        if rec.get("invoice_id") == q:
            found.add(rec, "redis")
    _archive(found, lambda: svc.archive.list(invoice_id=q, limit=50))
    return found


def _archive(found: Found, read: Any) -> None:
    try:
        for rec in read():
            found.add(rec, "archive")
    except ArchiveUnavailable as exc:
        found.notes.append(f"only Redis's records: {exc}")


def _by_card_amount_day(svc: Any, found: Found, last4: str, amount: str, day: str) -> None:
    from worker.store.reconciliations import Reconciliations

    try:
        wanted = Decimal(amount)
        start = datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC).timestamp()
    except (InvalidOperation, ValueError):
        found.notes.append("LAST4 AMOUNT DAY: the amount is like 3.00 and the day YYYY-MM-DD")
        return
    recon, seen = Reconciliations(svc.store), 0
    end = start + timedelta(days=1).total_seconds()
    for ids in recon.created_between(start, end):
        seen += len(ids)
        for rec in recon.records(ids).values():
            if _matches(rec, last4, wanted):
                found.add(dict(rec, payment_id=rec.get("payment_id") or ""), "redis")
        if seen >= DAY_SCAN:
            found.notes.append(f"only the first {DAY_SCAN} records of {day} were read")
            break
    if not found.records:
        found.notes.append("the archive is not searched by card and amount: search the payment id or trans id")


def _matches(record: dict[str, Any], last4: str, amount: Decimal) -> bool:
    if not str(record.get("masked_account") or "").endswith(last4):
        return False
    try:
        return Decimal(str(record.get("amount") or "")) == amount
    except InvalidOperation:
        return False
