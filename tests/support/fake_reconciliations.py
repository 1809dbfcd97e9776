"""The in-memory twin of :class:`worker.store.reconciliations.Reconciliations`, over an
:class:`tests.support.fake_store.InMemoryStore` (its records, indexes, history and audit; its clock).

``resolve`` follows ``worker/store/scripts/resolve.lua`` step by step; tests/contract/test_reconciliations.py
runs the same contract against both.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from tests.support.fake_store import InMemoryStore, _iso, _ts
from worker.states import FINAL, FOLLOW_UPS, NON_FINAL
from worker.store.encoding import check_no_pan, to_str
from worker.store.reconciliations import RESOLVE_STATUSES, ResolveRefused

__all__ = ["InMemoryReconciliations"]


class InMemoryReconciliations:
    def __init__(self, store: InMemoryStore) -> None:
        self.store = store
        self._days: dict[str, tuple[str, float]] = {}
        self._orders: dict[str, dict[str, str]] = {}

    def records(self, payment_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        with self.store._lock:
            return {pid: self.store._copy(pid) for pid in payment_ids if pid in self.store._records}

    def payment_ids_for_trans(self, trans_ids: Sequence[str]) -> dict[str, str]:
        with self.store._lock:
            return {t: self.store._trans[t] for t in trans_ids if t in self.store._trans}

    def created_between(self, start_ts: float, end_ts: float, *, batch: int = 1000) -> Iterator[list[str]]:
        with self.store._lock:
            ids = [pid for pid, score in sorted(self.store._zsets["time"].items(), key=lambda kv: (kv[1], kv[0]))
                   if start_ts <= score < end_ts]
        for i in range(0, len(ids), batch):
            yield ids[i:i + batch]

    def keep(self, day: str, summary: Mapping[str, Any], rows: Mapping[str, list[dict[str, str]]]) -> None:
        body = json.dumps(summary, separators=(",", ":"), sort_keys=True)
        check_no_pan("reconciliation", body)
        items = {oid: json.dumps(list(r), separators=(",", ":"), sort_keys=True) for oid, r in rows.items()}
        for oid, value in items.items():
            check_no_pan("reconciliation row", oid + value)
        self._days[day] = (body, self.store.now())
        self._orders[day] = items

    def kept(self, day: str) -> dict[str, Any] | None:
        found = self._days.get(day)
        return json.loads(found[0]) if found else None

    def kept_days(self) -> list[str]:
        return [d for d, _ in sorted(self._days.items(), key=lambda kv: (kv[1][1], kv[0]))]

    def kept_rows(self, day: str, order_id: str) -> list[dict[str, str]] | None:
        raw = self._orders.get(day, {}).get(order_id)
        return json.loads(raw) if raw is not None else None

    def resolve(self, payment_id: str, status: str, *, who: str, reason: str, trans_id: str = "",
                checked: str = "") -> dict[str, Any]:
        if status not in RESOLVE_STATUSES or status not in FINAL:
            raise ValueError(f"status must be one of {', '.join(RESOLVE_STATUSES)}")
        who, reason, trans_id = to_str(who).strip(), to_str(reason).strip(), to_str(trans_id).strip()
        if not who or not reason:
            raise ValueError("who and reason are required")
        for name, value in (("who", who), ("reason", reason), ("trans_id", trans_id), ("checked", checked)):
            check_no_pan(name, value)
        s = self.store
        with s._lock:
            rec = s._records.get(payment_id)
            if rec is None:
                raise ResolveRefused("missing")
            if rec.get("needs_human") != "1":
                raise ResolveRefused("not_needs_human", s._copy(payment_id))
            old_status = rec["status"]
            if old_status in NON_FINAL:
                raise ResolveRefused("not_final", s._copy(payment_id))
            now = s.now()
            at = _iso(now)
            old_trans = rec.get("trans_id") or ""
            message = f"resolved by {who}: {reason}"
            rec.update(status=status, needs_human="", resolved_by=who, resolved_at=at, resolution=reason,
                       message=message, updated_at=at, updated_ts=_ts(now))
            if trans_id:
                rec["trans_id"] = trans_id
            trans = s._reindex(payment_id, old_trans)
            s._record_event(payment_id, rec.get("operation") or "", old_status, status,
                            f"{message} ({checked or 'no report kept'})", at, trans)
            if rec.get("operation") in FOLLOW_UPS and status == "APPROVED":
                s._reflect(payment_id, at, now)
            return s._copy(payment_id)
