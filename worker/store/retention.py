"""Retention's side of the store: which records may leave Redis, and removing them once the archive holds them.

The sweep (:mod:`worker.archive.retention`) asks :meth:`Retention.due` for the oldest records older than a cutoff,
copies them to the archive, then calls :meth:`Retention.forget`, whose Lua script removes each record (hash,
history, every index) only if it is unchanged since the copy and still :func:`archivable`. A crash between copy and
delete leaves the record in Redis: the next sweep copies it again (the archive replaces its row). The audit stream
is trimmed by age the same way: :meth:`audit_before` to copy, :meth:`trim_audit` (``XTRIM MINID``) after.

The key index: a record removed leaves ``P key:<payment_id>``, a hash of its :data:`KEPT_FIELDS` (the fingerprint
its idempotency key is bound to, and its public outcome: no card data, the account masked as the record had it),
expiring ``key_retention`` seconds after the record's last change (``PAYMENTS_KEY_RETENTION``). The claim reads it
when the record is missing (``scripts/claim.lua``): the same request gets that outcome back and nothing is sent, a
different one is a mismatch. It lives in Redis and is written in the script that removes the record, so no moment
exists when a key is in neither, and claims never wait on the archive. :meth:`Retention.remember`
(``scripts/remember.lua``) gives records archived before the key index existed their entry back from the archive
(``payments archive --restore-keys``).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from worker.config import DEFAULT_KEY_RETENTION
from worker.states import FINAL, FOLLOW_UPS, Status
from worker.store.encoding import history_of, text, typed
from worker.store.keys import StoreKeys
from worker.store.lua import Functions
from worker.store.outcomes import CONTRACT_FIELDS, OPTIONAL_PUBLIC_FIELDS

__all__ = ["KEPT_FIELDS", "Retention", "archivable", "audit_cutoff_id", "kept_fields", "next_stream_id"]

#: What a key index entry keeps of a record (those not empty): what the claim compares (operation, fingerprint)
#: and what it answers (the public outcome, as the record's first delivery returned it).
KEPT_FIELDS = ("fingerprint", *CONTRACT_FIELDS, *OPTIONAL_PUBLIC_FIELDS)


def archivable(record: Mapping[str, Any], cutoff: float) -> bool:
    """May this record leave Redis for the archive (the rule ``scripts/forget.lua`` checks again, atomically)?

    Final, last changed at or before ``cutoff``, and nothing left to do on it: not ``needs_human``, not an open auth
    (APPROVED, not captured or voided), not a sale whose chained void is due, not a follow-up still to reflect."""
    status, op = record.get("status"), record.get("operation")
    try:
        updated = float(record.get("updated_ts") or "nan")
    except ValueError:
        return False
    approved = status == Status.APPROVED
    return (status in FINAL and updated <= cutoff and record.get("needs_human") != "1"
            and not (op == "auth" and approved)
            and not (op == "sale" and approved and record.get("then_void") == "1")
            and not (op in FOLLOW_UPS and approved and record.get("reflected") != "1"))


def kept_fields(record: Mapping[str, Any]) -> dict[str, str]:
    """What a key index entry keeps of ``record``: its :data:`KEPT_FIELDS` that are not empty, as strings."""
    return {name: str(record[name]) for name in KEPT_FIELDS if record.get(name) not in (None, "")}


def audit_cutoff_id(cutoff: float) -> str:
    """The last stream id (inclusive, as XRANGE's end) of entries added before ``cutoff``."""
    return str(int(cutoff * 1000) - 1)


def next_stream_id(stream_id: str) -> str:
    """The smallest stream id after ``stream_id`` (XTRIM MINID keeps it and everything later)."""
    ms, _, seq = stream_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


class Retention:
    def __init__(self, redis_client: redis.Redis, keys: StoreKeys) -> None:
        self.redis = redis_client
        self.keys = keys
        functions = Functions(redis_client)
        self._forget = functions.function("forget")
        self._remember = functions.function("remember")

    def due(self, cutoff: float, *, offset: int = 0, limit: int = 500) -> tuple[list[dict[str, Any]], int]:
        """Of the ``limit`` oldest records created before ``cutoff`` (skipping the first ``offset`` of them), those
        :func:`archivable`, each with its ``history``; and how many were looked at (0: none left)."""
        ids = [text(i) for i in self.redis.zrangebyscore(self.keys.time, "-inf", cutoff, start=offset, num=limit)]
        if not ids:
            return [], 0
        pipe = self.redis.pipeline(transaction=False)
        for pid in ids:
            pipe.hgetall(self.keys.record(pid))
            pipe.lrange(self.keys.history(pid), 0, -1)
        replies = pipe.execute()
        found = []
        for raw, hist in zip(replies[0::2], replies[1::2], strict=True):
            rec = {text(k): text(v) for k, v in raw.items()}
            if rec and archivable(rec, cutoff):
                history = history_of(rec.pop("history", None), hist)
                found.append(dict(typed(rec), history=history))
        return found, len(ids)

    def forget(self, records: Sequence[Mapping[str, Any]], cutoff: float, *,
               key_retention: float = DEFAULT_KEY_RETENTION) -> list[str]:
        """Remove these records (as :meth:`due` returned them and the archive now holds them) from Redis, each only
        if it is unchanged and still archivable, leaving each one's key index entry (expiring ``key_retention``
        seconds after the record's last change); the ids removed. One round trip."""
        if not records:
            return []
        args: list[str] = [self.keys.prefix, repr(float(cutoff)), repr(float(key_retention)), str(len(KEPT_FIELDS)),
                           *KEPT_FIELDS]
        for rec in records:
            args += [str(rec["payment_id"]), str(rec.get("status") or ""), str(rec.get("updated_ts") or "")]
        keys = [self.keys.trans, self.keys.time, self.keys.non_final, self.keys.open_auths, self.keys.voids_due,
                self.keys.reflect_due, self.keys.status_counts]
        return [text(pid) for pid in self._forget(keys=keys, args=args)]

    def remember(self, records: Sequence[Mapping[str, Any]], *,
                 key_retention: float = DEFAULT_KEY_RETENTION) -> list[str]:
        """Give archived records (as the archive returns them) their key index entry back, each unless Redis holds a
        record or an entry under its key already, or ``key_retention`` after its last change has passed; the ids
        given one (``scripts/remember.lua``; for records archived before the key index existed)."""
        if not records:
            return []
        args: list[str] = [self.keys.prefix, repr(float(key_retention))]
        for rec in records:
            args += [str(rec["payment_id"]), str(rec.get("updated_ts") or ""), json.dumps(kept_fields(rec))]
        return [text(pid) for pid in self._remember(keys=[], args=args)]

    def kept(self, payment_id: str) -> dict[str, str] | None:
        """The key index entry of ``payment_id`` (its record left Redis), or None."""
        entry = self.redis.hgetall(self.keys.kept(payment_id))
        return {text(k): text(v) for k, v in entry.items()} or None

    def audit_before(self, cutoff: float, *, count: int = 500) -> list[dict[str, Any]]:
        """The oldest audit entries added before ``cutoff`` (at most ``count``), each with its stream ``id``."""
        entries = self.redis.xrange(self.keys.audit, min="-", max=audit_cutoff_id(cutoff), count=count)
        return [{"id": text(eid), **{text(k): text(v) for k, v in (data or {}).items()}} for eid, data in entries or []]

    def trim_audit(self, through_id: str) -> int:
        """Remove audit entries up to and including ``through_id`` (once the archive holds them); how many."""
        return int(self.redis.xtrim(self.keys.audit, minid=next_stream_id(through_id), approximate=False))
