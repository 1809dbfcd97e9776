"""What an operator (the metrics exporter, ``payments status``) asks of the store, in one cheap round trip.

Every read is an index's size or its first member, or a small hash: O(1) or O(log n) whatever the number of
records (a scrape with 1,000,000 records is measured in docs/monitoring.md). Kept by the record scripts
(``scripts/common.lua``): ``idx:status_counts`` (records by final status; PENDING, RETRYING and UNKNOWN are the
sizes of ``idx:non_final``, ``idx:retrying`` and ``idx:unknown``), ``idx:unknown`` and ``idx:retrying`` (by
creation time), ``idx:needs_human`` (by last update). Kept here: ``stats`` (counters: outbox re-publications and
give-ups) and ``sweep:last`` (the last sweep's report, with when it ended and how long it took).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from worker.merchants import DEFAULT as DEFAULT_MERCHANT
from worker.states import FINAL, Status
from worker.store.encoding import text
from worker.store.keys import StoreKeys
from worker.store.outbox import server_time

__all__ = ["Health", "OLDEST_OF"]

#: Indexes whose size and oldest member a snapshot reports, by the name it reports them under.
OLDEST_OF = ("unknown", "retrying", "needs_human", "non_final", "outbox", "open_auths")


class Health:
    def __init__(self, redis_client: redis.Redis, keys: StoreKeys) -> None:
        self.redis = redis_client
        self.keys = keys

    def _zset(self, name: str) -> str:
        return self.keys.outbox_ts if name == "outbox" else str(getattr(self.keys, name))

    def snapshot(self, *, stale_auth_age: float | None = None) -> dict[str, Any]:
        """``now`` (server time), ``by_status`` {status: records}, for each of :data:`OLDEST_OF` ``{"count",
        "oldest"}`` (epoch seconds or None), ``stats`` {name: int}, ``sweep`` (the last report or None) and, given
        ``stale_auth_age``, ``stale_auths``: approved auths older than that."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        pipe.hgetall(self.keys.status_counts)
        for name in OLDEST_OF:
            # The outbox's size is its entries (the sweep stamps them in idx:outbox only when it first sees them).
            pipe.hlen(self.keys.outbox) if name == "outbox" else pipe.zcard(self._zset(name))
            pipe.zrange(self._zset(name), 0, 0, withscores=True)
        pipe.hgetall(self.keys.stats)
        pipe.get(self.keys.sweep_last)
        replies = pipe.execute()
        seconds, micros = replies[0]
        now = int(seconds) + int(micros) / 1_000_000
        # The hash counts final statuses only (older code counted every status: its non-final entries are ignored);
        # non-final records are counted by their indexes, which the record scripts keep anyway.
        out: dict[str, Any] = {"now": now, "by_status": {k: v for k, v in _ints(replies[1]).items() if k in FINAL}}
        for i, name in enumerate(OLDEST_OF):
            count, first = replies[2 + 2 * i], replies[3 + 2 * i]
            out[name] = {"count": int(count), "oldest": float(first[0][1]) if first else None}
        non_final = {Status.UNKNOWN.value: out["unknown"]["count"], Status.RETRYING.value: out["retrying"]["count"]}
        non_final[Status.PENDING.value] = out["non_final"]["count"] - sum(non_final.values())
        out["by_status"].update({k: v for k, v in non_final.items() if v > 0})
        rest = replies[2 + 2 * len(OLDEST_OF):]
        out["stats"] = _ints(rest[0])
        out["sweep"] = json.loads(text(rest[1])) if rest[1] else None
        if stale_auth_age is not None:
            out["stale_auths"] = int(self.redis.zcount(self.keys.open_auths, "-inf", now - float(stale_auth_age)))
        return out

    #: What :meth:`merchants` reports of each account besides its records by status.
    MERCHANT_INDEXES = ("unknown", "retrying")

    def merchants(self, names: Iterable[str]) -> dict[str, dict[str, Any]]:
        """For each account other than ``default`` among ``names``: ``by_status`` {status: records} (every status)
        and ``unknown`` / ``retrying`` ``{"count", "oldest"}``, as :meth:`snapshot` has them for all accounts. One
        round trip. (``default``'s are the snapshot's minus these: its records name no merchant.)"""
        others = [n for n in names if n != DEFAULT_MERCHANT]
        pipe = self.redis.pipeline(transaction=False)
        for name in others:
            pipe.hgetall(self.keys.merchant_counts(name))
            for index in self.MERCHANT_INDEXES:
                pipe.zcard(self.keys.merchant_index(name, index))
                pipe.zrange(self.keys.merchant_index(name, index), 0, 0, withscores=True)
        replies = iter(pipe.execute() if others else [])
        out: dict[str, dict[str, Any]] = {}
        for name in others:
            entry: dict[str, Any] = {"by_status": _ints(next(replies))}
            for index in self.MERCHANT_INDEXES:
                count, first = next(replies), next(replies)
                entry[index] = {"count": int(count), "oldest": float(first[0][1]) if first else None}
            out[name] = entry
        return out

    def recount(self, *, batch: int = 1000) -> dict[str, int]:
        """Rebuild records by status, the UNKNOWN / RETRYING / needs_human indexes and the time index of each account
        other than ``default`` from the records themselves (every record is in ``idx:time``): once, after upgrading
        from a version that did not keep them. Reads every record in batches: run it with the workers stopped (a
        transition during the recount may be miscounted)."""
        counts: dict[str, int] = {}
        by_merchant: dict[str, dict[str, int]] = {}
        self._drop_merchant_counts()
        start = 0
        while True:
            ids = [text(i) for i in self.redis.zrange(self.keys.time, start, start + batch - 1)]
            if not ids:
                break
            start += len(ids)
            pipe = self.redis.pipeline(transaction=False)
            for pid in ids:
                pipe.hmget(self.keys.record(pid), "status", "created_ts", "updated_ts", "needs_human", "merchant")
            fix = self.redis.pipeline(transaction=False)
            for pid, fields in zip(ids, pipe.execute(), strict=True):
                if fields[0] is not None:
                    status = text(fields[0])
                    counts[status] = counts.get(status, 0) + 1
                    if fields[4]:
                        by = by_merchant.setdefault(text(fields[4]), {})
                        by[status] = by.get(status, 0) + 1
                    self._reindex(fix, pid, status, [text(f or "") for f in fields[1:]])
            fix.execute()
        final: dict[Any, Any] = {k: str(v) for k, v in counts.items() if k in FINAL}  # final statuses only
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.keys.status_counts)
        if final:
            pipe.hset(self.keys.status_counts, mapping=final)
        for merchant, by in by_merchant.items():
            pipe.hset(self.keys.merchant_counts(merchant), mapping={k: str(v) for k, v in by.items()})
        pipe.set(self.keys.merchant_since, "0")  # every account's records are in its index now
        pipe.execute()
        return counts

    def _drop_merchant_counts(self) -> None:
        """Every account's counts and UNKNOWN / RETRYING index (the recount writes them again); not its time index,
        which is only added to (its entries stay right)."""
        for key in self.redis.scan_iter(match=self.keys.merchant_index("*", "*"), count=1000):
            if not text(key).endswith(":time"):
                self.redis.delete(key)

    def _reindex(self, fix: Any, pid: str, status: str, fields: list[str]) -> None:
        created, updated, human, merchant = fields
        for name, member in (("unknown", status == "UNKNOWN"), ("retrying", status == "RETRYING")):
            if member:
                fix.zadd(str(getattr(self.keys, name)), {pid: float(created or 0)})
            else:
                fix.zrem(str(getattr(self.keys, name)), pid)
        if human == "1":
            fix.zadd(self.keys.needs_human, {pid: float(updated or 0)})
        else:
            fix.zrem(self.keys.needs_human, pid)
        if merchant:
            fix.zadd(self.keys.merchant_time(merchant), {pid: float(created or 0)})
            if status in ("UNKNOWN", "RETRYING"):
                fix.zadd(self.keys.merchant_index(merchant, status.lower()), {pid: float(created or 0)})

    def count(self, name: str, by: int = 1) -> None:
        """Add to one of the ``stats`` counters (``outbox_republished``, ``outbox_given_up``)."""
        self.redis.hincrby(self.keys.stats, name, by)

    def record_sweep(self, report: Mapping[str, Any], *, started: float) -> None:
        """Keep the sweep's report, with ``started`` and ``finished`` (server time) and its ``seconds``."""
        finished = server_time(self.redis)
        entry = dict(report, started=started, finished=finished, seconds=round(max(0.0, finished - started), 3))
        self.redis.set(self.keys.sweep_last, json.dumps(entry, separators=(",", ":"), sort_keys=True))

    def last_sweep(self) -> dict[str, Any] | None:
        raw = self.redis.get(self.keys.sweep_last)
        return json.loads(text(raw)) if raw else None


def _ints(raw: Mapping[Any, Any] | None) -> dict[str, int]:
    return {text(k): int(v) for k, v in (raw or {}).items() if int(v)}
