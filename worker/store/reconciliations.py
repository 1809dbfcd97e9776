"""What settlement reconciliation (``worker/payments/reconciliation.py``) keeps and reads in the store.

Key layout (``P`` is the prefix)::

    P recon:<YYYY-MM-DD>          string  the day's reconciliation: summary, counts by kind, the findings (JSON)
    P recon:<YYYY-MM-DD>:orders   hash    ORDER_ID -> JSON list of the report's rows under it, for the records a
                                          person may have to decide on (differences, needs_human, not final);
                                          an empty list: the report has nothing under that ORDER_ID
    P idx:recon                   zset    the days kept, score = when (server time)

A day reconciled again replaces its keys in one MULTI. :meth:`Reconciliations.resolve` is one Lua script
(``scripts/resolve.lua``, on top of ``common.lua``): an operator's decision on a ``needs_human`` record with
who, when (Redis ``TIME``) and why, in its history and the audit stream.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

from worker.states import FINAL, FOLLOW_UPS
from worker.store.encoding import check_no_pan, pairs_to_dict, text, to_str, typed
from worker.store.records import ResultsStore

__all__ = ["Reconciliations", "ResolveRefused", "RESOLVE_STATUSES"]

#: What ``payments resolve`` may set.
RESOLVE_STATUSES = ("APPROVED", "DECLINED", "ERROR", "VOIDED")


class ResolveRefused(Exception):
    """The store refused a resolution (``reason``: missing, not_needs_human, not_final)."""

    def __init__(self, reason: str, record: Mapping[str, Any] | None = None) -> None:
        self.reason = reason
        self.record = dict(record or {})
        super().__init__(reason)


class Reconciliations:
    def __init__(self, store: ResultsStore) -> None:
        self.store = store
        self.redis = store.redis
        self.prefix = store.prefix
        self.k_days = store.prefix + "idx:recon"
        self._resolve = store.functions.function("resolve")

    def day_key(self, day: str) -> str:
        return f"{self.prefix}recon:{day}"

    def orders_key(self, day: str) -> str:
        return f"{self.prefix}recon:{day}:orders"

    # ---- batch reads --------------------------------------------------------------------------
    def records(self, payment_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The records that exist among ``payment_ids`` (no history), in one round trip."""
        if not payment_ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for pid in payment_ids:
            pipe.hgetall(self.store.record_key(pid))
        return {pid: typed({text(k): text(v) for k, v in raw.items()})
                for pid, raw in zip(payment_ids, pipe.execute(), strict=True) if raw}

    def payment_ids_for_trans(self, trans_ids: Sequence[str]) -> dict[str, str]:
        """trans id -> payment id, for those the store knows."""
        if not trans_ids:
            return {}
        found = self.redis.hmget(self.store.keys.trans, list(trans_ids))
        return {t: text(p) for t, p in zip(trans_ids, found, strict=True) if p is not None}

    def created_between(self, start_ts: float, end_ts: float, *, batch: int = 1000) -> Iterator[list[str]]:
        """Payment ids created in [start_ts, end_ts) (server time), oldest first, ``batch`` at a time.

        Pages go by score (each starts at the last one's last score, skipping the ids already given with it), so a
        page costs O(log N + batch) however deep into the day it is (an offset would make a day quadratic)."""
        low, skip = float(start_ts), 0
        while True:
            items = cast(list[tuple[Any, float]], self.redis.zrangebyscore(
                self.store.keys.time, repr(low), f"({float(end_ts)!r}", start=skip, num=batch, withscores=True))
            if not items:
                return
            yield [text(member) for member, _ in items]
            last = float(items[-1][1])
            ties = sum(1 for _, score in items if float(score) == last)
            low, skip = (low, skip + ties) if last == low else (last, ties)

    # ---- kept reports -------------------------------------------------------------------------
    def keep(self, day: str, summary: Mapping[str, Any], rows: Mapping[str, list[dict[str, str]]]) -> None:
        """Keep (replace) the day's reconciliation."""
        body = json.dumps(summary, separators=(",", ":"), sort_keys=True)
        check_no_pan("reconciliation", body)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.day_key(day), self.orders_key(day))
        pipe.set(self.day_key(day), body)
        items = {oid: json.dumps(list(r), separators=(",", ":"), sort_keys=True) for oid, r in rows.items()}
        for oid, value in items.items():
            check_no_pan("reconciliation row", oid + value)
        keys = list(items)
        for i in range(0, len(keys), 1000):
            pipe.hset(self.orders_key(day), mapping={k: items[k] for k in keys[i:i + 1000]})
        pipe.zadd(self.k_days, {day: self.store.now()})
        pipe.execute()

    def kept(self, day: str) -> dict[str, Any] | None:
        raw = self.redis.get(self.day_key(day))
        return json.loads(text(raw)) if raw is not None else None

    def kept_days(self) -> list[str]:
        return [text(d) for d in self.redis.zrange(self.k_days, 0, -1)]

    def kept_rows(self, day: str, order_id: str) -> list[dict[str, str]] | None:
        """The kept report's rows under ``order_id`` ([] when the day's report had none); None when no report of
        that day is kept, or it did not look at that ORDER_ID."""
        raw = self.redis.hget(self.orders_key(day), order_id)
        return json.loads(text(raw)) if raw is not None else None

    # ---- resolution ---------------------------------------------------------------------------
    def resolve(self, payment_id: str, status: str, *, who: str, reason: str, trans_id: str = "",
                checked: str = "") -> dict[str, Any]:
        """Finalise a ``needs_human`` record as ``status`` (who, when, why in its history and the audit stream).
        Raises :class:`ResolveRefused` when the record is missing, does not need a human, or is not final."""
        if status not in RESOLVE_STATUSES or status not in FINAL:
            raise ValueError(f"status must be one of {', '.join(RESOLVE_STATUSES)}")
        who, reason, trans_id = to_str(who).strip(), to_str(reason).strip(), to_str(trans_id).strip()
        if not who or not reason:
            raise ValueError("who and reason are required")
        for name, value in (("who", who), ("reason", reason), ("trans_id", trans_id), ("checked", checked)):
            check_no_pan(name, value)
        current = self.records([payment_id]).get(payment_id) or {}
        reflect = self.prefix if current.get("operation") in FOLLOW_UPS and status == "APPROVED" else ""
        result, flat = self._resolve(keys=self.store.keys.for_record(payment_id),
                                     args=[status, who, reason, trans_id, reflect, checked or "no report kept"])
        record = pairs_to_dict(flat) or {}
        if text(result) != "resolved":
            raise ResolveRefused(text(result), record)
        return record
