"""Payment records and their transitions (the layout and fields are described in :mod:`worker.store`).

Every hot-path call (:meth:`ResultsStore.claim`, :meth:`ResultsStore.transition`) is ONE round trip:
a single ``FCALL`` of the store's Redis function (``worker/store/scripts/*.lua``, :mod:`worker.store.lua`). Inside it
the record, its history, the indexes and the audit stream are updated together, so two workers can never
interleave a read-modify-write. Redis counts every command a function runs, so the hot paths run few: a new
record's claim and a transition touch only the indexes whose membership changes and answer with the record they
wrote instead of reading it back (10 commands each with the FCALL; the claim's include the ``EXISTS`` of the key
index entry a record leaves when retention removes it). The functions read Redis server time (``TIME``): leases,
ages, next-check times and the attempt journal use that one clock, whatever each worker's clock says.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from worker.merchants import DEFAULT as DEFAULT_MERCHANT
from worker.redis_connections import run_script_durably
from worker.states import FINAL, NON_FINAL, OPERATIONS, ClaimKind, Status
from worker.store.encoding import check_no_pan, history_of, pairs_to_dict, text, to_str, typed
from worker.store.final_write import FinalWrite, mark_written
from worker.store.health import Health
from worker.store.keys import StoreKeys
from worker.store.locks import Locks
from worker.store.lua import Functions
from worker.store.outbox import Outbox, server_time
from worker.store.outcomes import CONTRACT_FIELDS
from worker.store.retention import Retention

__all__ = ["ResultsStore", "Claim"]

# Managed by the store: ignored when passed in ``fields``.
_RESERVED = frozenset({
    "payment_id", "operation", "status", "attempts", "created_at", "updated_at", "created_ts",
    "updated_ts", "lease_owner", "lease_until", "history", "fingerprint", "sends", "attempt_ts", "in_flight",
    "sent_ts", "next_check_ts", "reflected", "fence_until",
})


@dataclass(frozen=True)
class Claim:
    """Result of :meth:`ResultsStore.claim`.

    ``kind``: ``claimed`` (new record, go ahead), ``final`` (return ``record`` as is), ``busy`` (another
    live worker holds the lease), ``resumed`` (lease taken over from ``previous_status``: reconcile before
    sending unless nothing may have been sent), ``mismatch`` (the key is bound to another request),
    ``exists`` (create_only found a record), ``missing`` (reconcile found none). ``now``: Redis server time.
    ``fenced_at``: a new record claimed with ``journal=True`` and ``fence_for``: the stamp of its first attempt,
    fenced in the same call (:meth:`ResultsStore.fence`), else None.
    """

    kind: ClaimKind | str
    record: dict[str, Any]
    previous_status: str | None = None
    now: float = 0.0
    #: Redis time of the first attempt's fence, checked by the claim itself (``fence_for``), or None
    fenced_at: float | None = None


class ResultsStore:
    FINAL = FINAL
    NON_FINAL = NON_FINAL
    STATUSES = FINAL | NON_FINAL

    def __init__(self, redis_client: redis.Redis, prefix: str = "payments:", *, replicas: int = 0,
                 replica_timeout: float = 1.0) -> None:
        """``replicas``: how many must acknowledge (WAIT) a claim, a journal entry or an outbox entry before the
        caller relies on it (REDIS_MIN_REPLICAS_ACK); ``ReplicaAckTimeout`` after ``replica_timeout`` seconds."""
        self.redis = redis_client
        self.prefix = prefix
        self.keys = StoreKeys(prefix)
        self.replicas, self.replica_timeout = replicas, replica_timeout
        self.outbox = Outbox(redis_client, self.keys, replicas=replicas, replica_timeout=replica_timeout)
        self.locks = Locks(redis_client, self.keys)
        self.retention = Retention(redis_client, self.keys)
        self.health = Health(redis_client, self.keys)
        self.functions = Functions(redis_client)
        self._claim = self.functions.function("claim")
        self._journal = self.functions.function("journal")
        self._transition = self.functions.function("transition")
        self._reflect = self.functions.function("reflect")
        self._renew = self.functions.function("renew")
        self._fence = self.functions.function("fence")

    # ---- keys -------------------------------------------------------------------------------
    def record_key(self, payment_id: str) -> str:
        return self.keys.record(payment_id)

    def history_key(self, payment_id: str) -> str:
        return self.keys.history(payment_id)

    def _keys(self, payment_id: str) -> list[str]:
        return self.keys.for_record(payment_id)

    # ---- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _field_args(fields: Mapping[str, Any] | None) -> list[str]:
        out: list[str] = []
        for name, value in (fields or {}).items():
            name = to_str(name)
            if name in _RESERVED:
                continue
            value = to_str(value)
            check_no_pan(name, value)
            out += [name, value]
        return out

    def now(self) -> float:
        """Redis server time: the one clock of leases, ages and next checks."""
        return server_time(self.redis)

    # ---- hot path ---------------------------------------------------------------------------
    def claim(self, payment_id: str, operation: str, *, fields: Mapping[str, Any] | None = None,
              owner: str, lease_seconds: float, dead_owner: str = "", message_id: str = "",
              mode: str = "run", journal: bool | str = False, fingerprints: Iterable[str] = (),
              fence_for: float | None = None) -> Claim:
        """Claim ``payment_id`` (see :class:`Claim`).

        ``dead_owner``: a lease holder known to be dead (its process is gone), whose live lease may be taken
        over as if it had expired. ``message_id``: the broker message being worked on; its outbox entry is
        removed in the same round trip, whatever the claim's result. ``journal``: a new record notes attempt 1
        at once (the caller sends right after); ``"prior"``: the message was delivered before, so a new record
        starts as if an attempt may have been sent until now (stq first, commit horizon). ``fingerprints``: the
        request's fingerprint under each card key (the first is stored); an existing record bound to another
        request answers ``mismatch``. ``mode="retry_failed"``: as ``run``, but a final ERROR that provably charged
        nothing (``not_charged``, or an ``InvalidInput`` refusal before any attempt) is reopened (``resumed``) with
        this request's fields, and bound to its fingerprint if the refusal had none. ``fence_for`` (with
        ``journal=True``): a new record's first attempt is also fenced, as :meth:`fence` with ``accepted_for``
        would be right after the claim (one round trip fewer per payment): ``Claim.fenced_at`` is its stamp.
        """
        payment_id, operation, owner = to_str(payment_id), to_str(operation), to_str(owner)
        if not payment_id:
            raise ValueError("payment_id must not be empty")
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}")
        if not owner:
            raise ValueError("owner must not be empty")
        if mode not in ("run", "retry_failed", "create_only", "reconcile"):
            raise ValueError(f"unknown claim mode {mode!r}")
        check_no_pan("payment_id", payment_id)
        fps = [to_str(f) for f in fingerprints if f]
        base = {f: "" for f in CONTRACT_FIELDS if f not in _RESERVED}
        base.update(fields or {})
        fence = repr(float(fence_for)) if fence_for is not None and journal is True else ""
        args = [owner, repr(float(lease_seconds)), payment_id, operation, to_str(dead_owner), to_str(message_id),
                mode, journal if journal == "prior" else ("1" if journal else "0"), fence, str(len(fps)), *fps]
        given = self._field_args(base)
        # An empty field is not sent, nor written (absent reads as '': public_outcome, decode; ~1 µs of Redis CPU
        # per field): only retry_failed's reopening needs '' to clear the refused request's fields.
        args += given if mode == "retry_failed" else [
            x for pair in zip(given[::2], given[1::2], strict=True) if pair[1] for x in pair]
        # A run's claim that took the lease (the caller may send next) must survive a failover: WAIT for replicas.
        kind, prev, now, flat, *stamp = run_script_durably(
            self.redis, self._claim, self._keys(payment_id), args, what="claim", replicas=self.replicas,
            timeout=self.replica_timeout,
            needed=lambda reply: mode in ("run", "retry_failed") and text(reply[0]) in ("claimed", "resumed"))
        if text(kind) == "claimed":  # a new record: the fields given and the claim's own (it answers only their times)
            flat = given + self._claimed_fields(payment_id, operation, owner, text(now), fps, journal,
                                                [text(v) for v in flat])
        return Claim(kind=text(kind), record=pairs_to_dict(flat) or {}, previous_status=text(prev) or None,
                     now=float(now), fenced_at=float(stamp[0]) if stamp else None)

    @staticmethod
    def _claimed_fields(payment_id: str, operation: str, owner: str, now_ts: str, fps: list[str],
                        journal: bool | str, times: list[str]) -> list[str]:
        """The fields claim.lua writes on a new record besides the caller's (in its order, history aside), from
        the claim's arguments and the times it answers: {created_at, lease_until[, fence_until]}."""
        created_at, lease_until, *fence_until = times
        flat = ["payment_id", payment_id, "operation", operation, "status", "PENDING", "attempts", "1",
                "created_at", created_at, "updated_at", created_at, "created_ts", now_ts, "updated_ts", now_ts,
                "lease_owner", owner, "lease_until", lease_until, "fingerprint", fps[0] if fps else ""]
        if journal == "prior":
            flat += ["sent_ts", now_ts]
        elif journal:
            flat += ["sends", "1", "attempt_ts", now_ts, "in_flight", "1"]
            if fence_until:
                flat += ["fence_until", fence_until[0]]
        return flat

    def journal(self, payment_id: str, owner: str, lease_seconds: float) -> float | None:
        """Note a money-moving send before making it; server time, or None when ``owner`` lost the lease."""
        args = [owner, repr(float(lease_seconds))]
        ok, now = run_script_durably(self.redis, self._journal, self._keys(payment_id), args, what="attempt journal",
                                     replicas=self.replicas, timeout=self.replica_timeout,
                                     needed=lambda reply: bool(int(reply[0])))
        return float(now) if int(ok) else None

    def fence(self, payment_id: str, owner: str, lease_seconds: float, accepted_for: float) -> float | None:
        """The check before each money-moving attempt (``scripts/fence.lua``): Redis server time (the attempt's
        stamp) while ``owner`` holds a live lease, else None (send nothing). Renews the lease and keeps, as
        ``fence_until``, the latest moment an attempt stamped now may be accepted (``accepted_for`` seconds on)."""
        args = [to_str(owner), repr(float(lease_seconds)), repr(float(accepted_for))]
        ok, now = run_script_durably(self.redis, self._fence, [self.record_key(payment_id)], args, what="fence",
                                     replicas=self.replicas, timeout=self.replica_timeout,
                                     needed=lambda reply: bool(int(reply[0])))
        return float(now) if int(ok) else None

    def transition(self, payment_id: str, status: str, *, fields: Mapping[str, Any] | None = None,
                   expect: Iterable[str] | str | None = None, owner: str | None = None, note: str = "",
                   sent: bool | None = None, check_in: float | None = None,
                   reflect: bool = False, then: FinalWrite | None = None) -> dict[str, Any] | None:
        """Move the record to ``status``; the record written, or None when refused.

        Refused when the current status is not in ``expect``, or the record is not final and ``owner`` does
        not hold its lease. ``sent``: how the attempt in flight ended (True: may have reached the gateway,
        False: provably not; None counts as True). A record that may have been sent is never parked
        ``RETRYING``: it becomes ``UNKNOWN``. ``check_in``: seconds until the next reconciliation.
        ``reflect``: an APPROVED follow-up is reflected on its original in the same script. ``then``: a final
        write's Celery result and ack, written in the same call only if the record is (:mod:`worker.store.final_write`);
        its answer is then only the record's public outcome (:func:`worker.store.outcomes.public_outcome`'s fields,
        ``attempts`` a string, ``status`` as written): all its caller reads, and half the reply's values.
        """
        if status not in self.STATUSES:
            raise ValueError(f"unknown status {status!r}")
        expect_list = [] if expect is None else [to_str(e) for e in ([expect] if isinstance(expect, str) else expect)]
        if expect is not None and not expect_list:
            return None  # "current status in an empty set" can never hold
        note = to_str(note)
        check_no_pan("note", note)
        args = [str(status), "1" if status in self.FINAL else "0", to_str(owner), note,
                "" if sent is None else ("1" if sent else "0"),
                "" if check_in is None else repr(max(0.0, float(check_in))),
                self.prefix if reflect else "", *(then.args() if then else ("", "", "")),
                str(len(expect_list)), *expect_list]
        args += self._field_args(fields)
        keys = self._keys(to_str(payment_id)) + (then.keys() if then else [])
        written, _now, flat = self._transition(keys=keys, args=args)
        if not written:
            return None
        if then is not None:
            mark_written(then)
        if isinstance(flat, (bytes, str)):  # a final write's answer: its public outcome, as JSON
            return typed(json.loads(flat))
        return pairs_to_dict(flat)

    def renew(self, payment_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend ``owner``'s lease (the heartbeat while a call is in flight)."""
        return bool(self._renew(keys=[self.record_key(payment_id)], args=[to_str(owner), repr(float(lease_seconds))]))

    def reflect(self, payment_id: str) -> str:
        """Reflect an APPROVED follow-up on its original, if not done yet (idempotent)."""
        return text(self._reflect(keys=self._keys(payment_id), args=[self.prefix]))

    # ---- reads ------------------------------------------------------------------------------
    def get(self, payment_id: str) -> dict[str, Any] | None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.record_key(payment_id))
        pipe.lrange(self.history_key(payment_id), 0, -1)
        raw, old = pipe.execute()
        if not raw:
            return None
        fields = {text(k): text(v) for k, v in raw.items()}
        history = history_of(fields.pop("history", None), old)
        rec: dict[str, Any] = typed(fields)
        rec["history"] = history
        return rec

    def history(self, payment_id: str) -> list[dict[str, Any]]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self.record_key(payment_id), "history")
        pipe.lrange(self.history_key(payment_id), 0, -1)
        field, old = pipe.execute()
        return history_of(field, old)

    def find_by_trans_id(self, trans_id: str) -> dict[str, Any] | None:
        if not trans_id:
            return None
        pid = self.redis.hget(self.keys.trans, trans_id)
        return self.get(text(pid)) if pid is not None else None

    def remember_customer_token(self, name: str, payment_id: str) -> None:
        """Note the payment that stored a card under customer token ``name`` (the first one stands: a name is unique
        at BluePay), so a later charge of the name finds the STORED_ID it was stored with. A look-up aid only,
        written after the record: lost, a later charge goes without STORED_ID (docs/tokens.md)."""
        if name and payment_id:
            self.redis.hsetnx(self.keys.customer_tokens, name, payment_id)

    def find_by_customer_token(self, name: str) -> dict[str, Any] | None:
        if not name:
            return None
        pid = self.redis.hget(self.keys.customer_tokens, name)
        return self.get(text(pid)) if pid is not None else None

    def _fetch(self, ids: list[Any]) -> list[dict[str, Any]]:
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for pid in ids:
            pipe.hgetall(self.record_key(text(pid)))
        return [typed({text(k): text(v) for k, v in raw.items()}) for raw in pipe.execute() if raw]

    def list(self, *, status: str | None = None, operation: str | None = None, merchant: str | None = None,
             limit: int = 100) -> list[dict[str, Any]]:
        """Records newest first (by creation time), optionally filtered. Filters read the records: pages of the time
        index, newest first, until ``limit`` match (a rare status reads many). An account other than ``default``
        has a time index of its own; its records written before that index existed are filtered from the shared one
        (docs/merchants.md)."""
        if limit <= 0:
            return []
        if merchant and merchant != DEFAULT_MERCHANT:
            return self._list_merchant(merchant, status, operation, limit)
        return self._list_index(self.keys.time, status, operation, merchant, limit)

    def _list_index(self, key: str, status: str | None, operation: str | None, merchant: str | None, limit: int,
                    max_score: float | None = None) -> builtins.list[dict[str, Any]]:
        """Pages of the zset ``key`` newest first (scores up to ``max_score``), its records that match."""
        out: list[dict[str, Any]] = []
        filtered = bool(status or operation or merchant)
        page = max(limit * 2, 100) if filtered else limit
        start = 0
        while len(out) < limit:
            if max_score is None:
                ids = self.redis.zrevrange(key, start, start + page - 1)
            else:
                ids = self.redis.zrevrangebyscore(key, max_score, "-inf", start=start, num=page)
            if not ids:
                break
            start += len(ids)
            out.extend(r for r in self._fetch(ids) if not filtered or _matches(r, status, operation, merchant))
        return out[:limit]

    def _list_merchant(self, merchant: str, status: str | None, operation: str | None,
                       limit: int) -> builtins.list[dict[str, Any]]:
        """The account's own index, then (fewer than ``limit``) the shared one's older records that name it: those
        created up to ``since``, the first record the claim indexed (none: all; 0 after a recount: none)."""
        out = self._list_index(self.keys.merchant_time(merchant), status, operation, None, limit)
        since = self.redis.get(self.keys.merchant_since)
        if len(out) >= limit or (since is not None and float(since) <= 0):
            return out
        seen = {r["payment_id"] for r in out}
        older = self._list_index(self.keys.time, status, operation, merchant, limit,
                                 None if since is None else float(since))
        out.extend(r for r in older if r["payment_id"] not in seen)
        return out[:limit]

    #: The indexes :meth:`indexed` pages through (the console's lists).
    LISTED = ("unknown", "retrying", "needs_human", "open_auths", "non_final")

    def indexed(self, index: str, *, offset: int = 0, limit: int = 50) -> builtins.list[dict[str, Any]]:
        """A page of the records the index ``index`` (one of :attr:`LISTED`) holds, highest score (newest) first;
        entries whose record is gone are skipped."""
        if index not in self.LISTED:
            raise ValueError(f"index must be one of {', '.join(self.LISTED)}")
        ids = self.redis.zrevrange(getattr(self.keys, index), offset, offset + limit - 1) if limit > 0 else []
        return self._fetch(ids)

    def audit_of(self, payment_id: str, *, scan: int = 5000) -> builtins.list[dict[str, Any]]:
        """The audit entries of ``payment_id`` among the newest ``scan`` of the stream, oldest first (older ones
        are in the archive once retention moved them)."""
        entries = self.redis.xrevrange(self.keys.audit, max="+", min="-", count=scan)
        found = [{"id": text(eid), **{text(k): text(v) for k, v in (data or {}).items()}}
                 for eid, data in entries or []]
        return [e for e in reversed(found) if e.get("payment_id") == payment_id]

    def audit(self, *, count: int = 100, after: str | None = None) -> builtins.list[dict[str, Any]]:
        """Audit entries oldest first, each with its stream ``id``; ``after`` is an exclusive id."""
        start = f"({after}" if after else "-"
        entries = self.redis.xrange(self.keys.audit, min=start, max="+", count=count)
        # (redis-py's stubs allow None for a reply and an entry; XRANGE gives neither)
        return [{"id": text(eid), **{text(k): text(v) for k, v in (data or {}).items()}} for eid, data in entries or []]

    def _range(self, key: str, max_score: float, limit: int | None) -> builtins.list[Any]:
        if limit is None:
            return self.redis.zrangebyscore(key, "-inf", max_score)
        return self.redis.zrangebyscore(key, "-inf", max_score, start=0, num=limit)

    def stale_non_final(self, older_than_seconds: float, *, limit: int | None = 1000) -> builtins.list[dict[str, Any]]:
        """RETRYING/UNKNOWN, and PENDING with an expired lease, not updated for ``older_than_seconds``."""
        now = self.now()
        cutoff = now - float(older_than_seconds)
        out = []
        for rec in self._fetch(self._range(self.keys.non_final, cutoff, limit)):
            st = rec.get("status")
            if st not in self.NON_FINAL or float(rec.get("updated_ts") or 0) > cutoff:
                continue
            if st == Status.PENDING and float(rec.get("lease_until") or 0) > now:
                continue
            out.append(rec)
        return out

    def open_auths(self, older_than_seconds: float, *, limit: int | None = 1000) -> builtins.list[dict[str, Any]]:
        """APPROVED auths (not yet captured or voided) created before now - ``older_than_seconds``."""
        cutoff = self.now() - float(older_than_seconds)
        return [r for r in self._fetch(self._range(self.keys.open_auths, cutoff, limit))
                if r.get("operation") == "auth" and r.get("status") == Status.APPROVED]

    def voids_due(self, older_than_seconds: float, *, limit: int | None = 1000) -> builtins.list[dict[str, Any]]:
        """APPROVED sales with then_void="1" (not voided) last updated before now - ``older_than_seconds``."""
        cutoff = self.now() - float(older_than_seconds)
        return [r for r in self._fetch(self._range(self.keys.voids_due, cutoff, limit))
                if r.get("operation") == "sale" and r.get("status") == Status.APPROVED and r.get("then_void") == "1"]

    def reflect_due(self, *, limit: int | None = 1000) -> builtins.list[str]:
        """APPROVED captures/refunds/voids not yet reflected on their original, oldest first."""
        return [text(i) for i in self._range(self.keys.reflect_due, float("inf"), limit)]


def _matches(record: Mapping[str, Any], status: str | None, operation: str | None, merchant: str | None) -> bool:
    """A record of ``default`` names no merchant (records are as before several accounts)."""
    return ((not status or record.get("status") == status) and (not operation or record.get("operation") == operation)
            and (not merchant or (record.get("merchant") or DEFAULT_MERCHANT) == merchant))
