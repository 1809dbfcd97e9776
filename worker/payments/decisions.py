"""What an operator may do to payments, one implementation for every face (``payments resolve`` / ``reconcile``,
the operator console): resolve a ``needs_human`` payment (refused where a kept report contradicts it) and run a
reconciliation day. Errors say what to do in one line (:class:`DecisionRefused`); the caller shows them.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from worker.merchants import DEFAULT
from worker.payments.reconciliation import DayResult, Reconciler, contradiction, days, kept_day
from worker.payments.record import PaymentRecord, decode

log = logging.getLogger("payments.reconcile")

#: At most this many days in one reconciliation run.
MAX_DAYS = 31


class DecisionRefused(Exception):
    """An operator's request that is refused (or cannot be carried out), with the reason in one line."""


@dataclass(frozen=True)
class Resolved:
    payment_id: str
    before: str
    record: dict[str, object]
    who: str
    report_kept: bool

    def line(self) -> str:
        return (f"{self.payment_id}: {self.before} -> {self.record.get('status')} "
                f"(trans {self.record.get('trans_id') or '-'}) by {self.who} at {self.record.get('resolved_at')}"
                + ("" if self.report_kept else "; no report of its day is kept: run payments reconcile for it"))


def reconciler(svc: Any, merchant: str = DEFAULT) -> Reconciler:
    """The services' reconciler of one merchant account's report (``svc.reconciliations`` when given: the unit tests'
    in-memory twin)."""
    from worker.store.reconciliations import Reconciliations

    kept = getattr(svc, "reconciliations", None) or Reconciliations(svc.store)
    gateway = svc.gateway if merchant == DEFAULT else svc.gateway_for(merchant)
    return Reconciler(store=svc.store, kept=kept, gateway=gateway, lease_seconds=svc.settings.lease_seconds,
                      merchant=merchant)


def merchants(svc: Any) -> tuple[str, ...]:
    """Every merchant account whose report is reconciled (``default`` first)."""
    names: tuple[str, ...] = getattr(svc.settings, "merchant_names", (DEFAULT,))
    return names


def reconcile_days(svc: Any, start: date, end: date, *, progress: Callable[[DayResult], None] | None = None
                   ) -> list[DayResult]:
    """Reconcile each day from ``start`` to ``end`` (inclusive); each day's result is kept in the store."""
    if end < start:
        raise DecisionRefused("the last day is before the first")
    if (end - start).days >= MAX_DAYS:
        raise DecisionRefused(f"at most {MAX_DAYS} days at a time")
    results = []
    for merchant in merchants(svc):
        rec = reconciler(svc, merchant)
        for day in days(start, end):
            result = rec.run_day(day)
            results.append(result)
            if progress is not None:
                progress(result)
    return results


def resolve(svc: Any, payment_id: str, status: str, *, reason: str, who: str, trans_id: str = "") -> Resolved:
    """Finalise the ``needs_human`` record ``payment_id`` as ``status`` with ``who``, the time and ``reason`` in its
    history and the audit stream. Raises :class:`DecisionRefused` for any other record, bad input, and when the
    gateway's kept report (``payments reconcile``) says otherwise."""
    from worker.gateway import InvalidInput, validation
    from worker.store.reconciliations import RESOLVE_STATUSES, Reconciliations, ResolveRefused

    status, reason = _decision(status, reason, who, RESOLVE_STATUSES)
    stored = svc.store.get(payment_id)
    if stored is None:
        raise DecisionRefused(f"no payment with id {payment_id!r} in Redis (only live records are resolved)")
    record = decode(stored)
    if not record.needs_human:
        raise DecisionRefused(f"refused: {payment_id} does not need a human (status {stored.get('status')}); "
                              "only records marked needs_human are resolved by hand")
    checked_trans = ""
    if trans_id:
        try:
            checked_trans = validation.trans_id(trans_id)
        except InvalidInput as exc:
            raise DecisionRefused(f"invalid input: {exc}") from None
    if record.trans_id and checked_trans and checked_trans != record.trans_id:
        raise DecisionRefused(f"refused: the record already has trans id {record.trans_id}")
    effective = checked_trans or record.trans_id
    if status in ("APPROVED", "VOIDED") and not effective:
        raise DecisionRefused(f"a trans id is required for {status}: the gateway's transaction")
    recon = Reconciliations(svc.store)
    rows, checked = kept_rows(recon, stored)  # the stored record: it names its merchant account
    why = contradiction(status, effective, rows)
    if why is not None:
        raise DecisionRefused(f"refused: it would contradict {checked}: {why}")
    try:
        done = recon.resolve(payment_id, status, who=who, reason=reason, trans_id=checked_trans,
                             checked=f"checked against {checked}" if rows is not None else "no report kept")
    except ResolveRefused as exc:
        raise DecisionRefused(f"refused: {exc.reason.replace('_', ' ')}") from None
    log.warning("resolve %s: %s by %s: %s", payment_id, status, who, reason)
    return Resolved(payment_id, str(stored.get("status")), done, who, rows is not None)


def _decision(status: str, reason: str, who: str, statuses: Sequence[str]) -> tuple[str, str]:
    """The operator's status and reason, checked: a known status, a reason, a name."""
    status = (status or "").strip().upper()
    if status not in statuses:
        raise DecisionRefused(f"status must be one of {', '.join(statuses)}")
    reason = (reason or "").strip()
    if not reason:
        raise DecisionRefused("a reason is required: say why (it is kept in the history and the audit stream)")
    if not (who or "").strip():
        raise DecisionRefused("who decides must be named")
    return status, reason


def kept_rows(recon: Any, record: Mapping[str, object] | PaymentRecord) -> tuple[list[dict[str, str]] | None, str]:
    """The kept reports' rows under the record's ORDER_ID on its creation day and the next (a transaction issued
    after midnight), and which reports they are; None when neither report looked at it."""
    ours = record if isinstance(record, PaymentRecord) else decode(record)
    created = datetime.fromtimestamp(ours.created_ts or 0.0, UTC).date()
    found: list[dict[str, str]] | None = None
    looked: list[str] = []
    merchant = str((record.get("merchant") if isinstance(record, Mapping) else None) or DEFAULT)
    for day in (created, created + timedelta(days=1)):
        rows = recon.kept_rows(kept_day(day, merchant), ours.payment_id)
        if rows is not None:
            looked.append(kept_day(day, merchant))
            found = (found or []) + rows
    return found, "the gateway's report of " + " and ".join(looked) if looked else "no report"
