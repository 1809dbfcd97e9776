"""Results store: one Redis record per payment operation, with atomic state transitions.

Every hot-path call (:meth:`ResultsStore.claim`, :meth:`ResultsStore.transition`) is ONE round trip:
a single ``EVALSHA`` of a Lua script (``worker/store_scripts/*.lua``). Inside the script the record,
its history, the indexes and the audit stream are updated together, so two workers can never
interleave a read-modify-write. The scripts read Redis server time (``TIME``): leases, ages,
next-check times and the attempt journal use that one clock, whatever each worker's clock says.

Key layout (``P`` is the prefix, ``payments:`` by default)::

    P op:<payment_id>      hash    the record (see below)
    P hist:<payment_id>    list    history entries, JSON {"at", "status", "note"} (oldest first, capped)
    P idx:trans            hash    gateway trans id -> payment id (first writer wins)
    P idx:time             zset    payment id, score created_ts            (list(), newest first)
    P idx:non_final        zset    PENDING/RETRYING/UNKNOWN ids, score updated_ts (reconciliation)
    P idx:open_auths       zset    APPROVED auths, score created_ts        (stale-auth sweep)
    P idx:voids_due        zset    APPROVED sales with then_void="1", score updated_ts (chained void)
    P idx:reflect_due      zset    APPROVED captures/refunds/voids not yet reflected on their original
    P audit                stream  every transition {payment_id, operation, from, to, note, at,
                                   trans_id}, XADD MAXLEN ~ 1,000,000
    P outbox, idx:outbox   hash, zset  published payment messages not yet claimed (see ``outbox_put``)
    P lock:<name>          string  advisory locks (SET NX PX token; compare-and-delete release)

Internal record fields (dropped by :func:`public_outcome`): ``created_ts``/``updated_ts`` (epoch
seconds, server time), ``lease_owner``/``lease_until``, ``fingerprint`` (the request the idempotency key is
bound to), and the attempt journal: ``sends`` (money-moving sends noted), ``attempt_ts`` (when the last was
noted), ``in_flight`` ("1" between noting an attempt and saying how it ended), ``sent_ts`` (server time by
which the last attempt that may have reached the gateway had left; empty: none may have), ``next_check_ts``.

Card numbers and CVV2 are never stored: every value written is checked (``worker.carddata``) and a
card-like value raises ``ValueError`` naming the field (never the value).
"""

from __future__ import annotations

import builtins
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis

from worker.carddata import contains_card_number
from worker.states import FINAL, NON_FINAL, OPERATIONS, TASK_STATUSES, ClaimKind, Status

__all__ = ["ResultsStore", "Claim", "public_outcome", "task_outcome", "CONTRACT_FIELDS", "OPTIONAL_PUBLIC_FIELDS",
           "looks_like_card_number"]

CONTRACT_FIELDS = (
    "payment_id", "operation", "status", "message", "trans_id", "avs", "cvv2", "masked_account",
    "card_type", "auth_code", "amount", "order_id", "attempts", "created_at", "updated_at",
)
OPTIONAL_PUBLIC_FIELDS = ("target", "parent", "voided_by", "captured_by", "refunded_by", "refunded_amount", "bank_name",
                          "invoice_id", "refund_needed", "needs_human", "not_charged", "reconciled", "error_class",
                          "reason")

# Managed by the store: ignored when passed in ``fields``.
_RESERVED = frozenset({
    "payment_id", "operation", "status", "attempts", "created_at", "updated_at", "created_ts",
    "updated_ts", "lease_owner", "lease_until", "history", "fingerprint", "sends", "attempt_ts", "in_flight",
    "sent_ts", "next_check_ts", "reflected",
})

_HISTORY_CAP = 1000
_AUDIT_MAXLEN = 1_000_000


def looks_like_card_number(value: str, **_: object) -> bool:
    """What the store refuses to keep (the one rule: ``worker.carddata``)."""
    return contains_card_number(value)


def _check_no_pan(name: str, value: str) -> None:
    if contains_card_number(value):
        raise ValueError(f"refusing to store field {name!r}: its value looks like a card number")


def _to_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, (bytes, bytearray)) else str(v)


def _pairs_to_dict(flat: list | None) -> dict | None:
    if not flat:
        return None
    it = iter(flat)
    return _typed({_s(k): _s(v) for k, v in zip(it, it, strict=False)})  # flat pairs: even length


def _typed(rec: dict) -> dict:
    if "attempts" in rec:
        try:
            rec["attempts"] = int(rec["attempts"])
        except (TypeError, ValueError):
            rec["attempts"] = 0
    return rec


def _script(name: str) -> str:
    return (resources.files("worker") / "store_scripts" / f"{name}.lua").read_text()


def _record_script(name: str) -> str:
    common = _script("common").replace("__HISTORY_CAP__", str(_HISTORY_CAP)).replace(
        "__AUDIT_MAXLEN__", str(_AUDIT_MAXLEN))
    return common + "\n" + _script(name)


@dataclass(frozen=True)
class Claim:
    """Result of :meth:`ResultsStore.claim`.

    ``kind``: ``claimed`` (new record, go ahead), ``final`` (return ``record`` as is), ``busy`` (another
    live worker holds the lease), ``resumed`` (lease taken over from ``previous_status``: reconcile before
    sending unless nothing may have been sent), ``mismatch`` (the key is bound to another request),
    ``exists`` (create_only found a record), ``missing`` (reconcile found none). ``now``: Redis server time.
    """

    kind: ClaimKind | str
    record: dict
    previous_status: str | None = None
    now: float = 0.0


class ResultsStore:
    FINAL = FINAL
    NON_FINAL = NON_FINAL
    STATUSES = FINAL | NON_FINAL

    def __init__(self, redis_client: redis.Redis, prefix: str = "payments:") -> None:
        self.redis = redis_client
        self.prefix = prefix
        self._claim = redis_client.register_script(_record_script("claim"))
        self._journal = redis_client.register_script(_record_script("journal"))
        self._transition = redis_client.register_script(_record_script("transition"))
        self._reflect = redis_client.register_script(_record_script("reflect"))
        self._renew = redis_client.register_script(_script("renew"))
        self._release = redis_client.register_script(_script("release_lock"))
        self.k_trans = prefix + "idx:trans"
        self.k_time = prefix + "idx:time"
        self.k_non_final = prefix + "idx:non_final"
        self.k_open_auths = prefix + "idx:open_auths"
        self.k_voids_due = prefix + "idx:voids_due"
        self.k_reflect_due = prefix + "idx:reflect_due"
        self.k_audit = prefix + "audit"
        self.k_outbox = prefix + "outbox"
        self.k_outbox_ts = prefix + "idx:outbox"

    # ---- keys -------------------------------------------------------------------------------
    def record_key(self, payment_id: str) -> str:
        return f"{self.prefix}op:{payment_id}"

    def history_key(self, payment_id: str) -> str:
        return f"{self.prefix}hist:{payment_id}"

    def lock_key(self, name: str) -> str:
        return f"{self.prefix}lock:{name}"

    def _keys(self, payment_id: str) -> list[str]:
        return [self.record_key(payment_id), self.history_key(payment_id), self.k_trans, self.k_time,
                self.k_non_final, self.k_open_auths, self.k_voids_due, self.k_audit, self.k_outbox,
                self.k_outbox_ts, self.k_reflect_due]

    # ---- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _field_args(fields: Mapping[str, Any] | None) -> list[str]:
        out: list[str] = []
        for name, value in (fields or {}).items():
            name = _to_str(name)
            if name in _RESERVED:
                continue
            value = _to_str(value)
            _check_no_pan(name, value)
            out += [name, value]
        return out

    def now(self) -> float:
        """Redis server time: the one clock of leases, ages and next checks."""
        seconds, micros = self.redis.time()
        return int(seconds) + int(micros) / 1_000_000

    # ---- hot path ---------------------------------------------------------------------------
    def claim(self, payment_id: str, operation: str, *, fields: Mapping[str, Any] | None = None,
              owner: str, lease_seconds: float, dead_owner: str = "", message_id: str = "",
              mode: str = "run", journal: bool | str = False, fingerprints: Iterable[str] = ()) -> Claim:
        """Claim ``payment_id`` (see :class:`Claim`).

        ``dead_owner``: a lease holder known to be dead (its process is gone), whose live lease may be taken
        over as if it had expired. ``message_id``: the broker message being worked on; its outbox entry is
        removed in the same round trip, whatever the claim's result. ``journal``: a new record notes attempt 1
        at once (the caller sends right after); ``"prior"``: the message was delivered before, so a new record
        starts as if an attempt may have been sent until now (stq first, commit horizon). ``fingerprints``: the
        request's fingerprint under each card key (the first is stored); an existing record bound to another
        request answers ``mismatch``.
        """
        payment_id, operation, owner = _to_str(payment_id), _to_str(operation), _to_str(owner)
        if not payment_id:
            raise ValueError("payment_id must not be empty")
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}")
        if not owner:
            raise ValueError("owner must not be empty")
        if mode not in ("run", "create_only", "reconcile"):
            raise ValueError(f"unknown claim mode {mode!r}")
        _check_no_pan("payment_id", payment_id)
        fps = [_to_str(f) for f in fingerprints if f]
        base = {f: "" for f in CONTRACT_FIELDS if f not in _RESERVED}
        base.update(fields or {})
        args = [owner, repr(float(lease_seconds)), payment_id, operation, _to_str(dead_owner), _to_str(message_id),
                mode, journal if journal == "prior" else ("1" if journal else "0"), str(len(fps)), *fps]
        args += self._field_args(base)
        kind, prev, now, flat = self._claim(keys=self._keys(payment_id), args=args)
        return Claim(kind=_s(kind), record=_pairs_to_dict(flat) or {}, previous_status=_s(prev) or None,
                     now=float(now))

    def journal(self, payment_id: str, owner: str, lease_seconds: float) -> float | None:
        """Note a money-moving send before making it; server time, or None when ``owner`` lost the lease."""
        ok, now = self._journal(keys=self._keys(payment_id), args=[owner, repr(float(lease_seconds))])
        return float(now) if int(ok) else None

    def transition(self, payment_id: str, status: str, *, fields: Mapping[str, Any] | None = None,
                   expect: Iterable[str] | str | None = None, owner: str | None = None, note: str = "",
                   sent: bool | None = None, check_in: float | None = None,
                   reflect: bool = False) -> dict | None:
        """Move the record to ``status``; the record written, or None when refused.

        Refused when the current status is not in ``expect``, or the record is not final and ``owner`` does
        not hold its lease. ``sent``: how the attempt in flight ended (True: may have reached the gateway,
        False: provably not; None counts as True). A record that may have been sent is never parked
        ``RETRYING``: it becomes ``UNKNOWN``. ``check_in``: seconds until the next reconciliation.
        ``reflect``: an APPROVED follow-up is reflected on its original in the same script.
        """
        if status not in self.STATUSES:
            raise ValueError(f"unknown status {status!r}")
        expect_list = [] if expect is None else [_to_str(e) for e in ([expect] if isinstance(expect, str) else expect)]
        if expect is not None and not expect_list:
            return None  # "current status in an empty set" can never hold
        note = _to_str(note)
        _check_no_pan("note", note)
        args = [str(status), "1" if status in self.FINAL else "0", _to_str(owner), note,
                "" if sent is None else ("1" if sent else "0"),
                "" if check_in is None else repr(max(0.0, float(check_in))),
                self.prefix if reflect else "", str(len(expect_list)), *expect_list]
        args += self._field_args(fields)
        written, _now, flat = self._transition(keys=self._keys(_to_str(payment_id)), args=args)
        return _pairs_to_dict(flat) if written else None

    def renew(self, payment_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend ``owner``'s lease (the heartbeat while a call is in flight)."""
        return bool(self._renew(keys=[self.record_key(payment_id)], args=[_to_str(owner), repr(float(lease_seconds))]))

    def reflect(self, payment_id: str) -> str:
        """Reflect an APPROVED follow-up on its original, if not done yet (idempotent)."""
        return _s(self._reflect(keys=self._keys(payment_id), args=[self.prefix]))

    # ---- reads ------------------------------------------------------------------------------
    def get(self, payment_id: str) -> dict | None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.record_key(payment_id))
        pipe.lrange(self.history_key(payment_id), 0, -1)
        raw, hist = pipe.execute()
        if not raw:
            return None
        rec = _typed({_s(k): _s(v) for k, v in raw.items()})
        rec["history"] = [json.loads(_s(h)) for h in hist]
        return rec

    def history(self, payment_id: str) -> list[dict]:
        return [json.loads(_s(h)) for h in self.redis.lrange(self.history_key(payment_id), 0, -1)]

    def find_by_trans_id(self, trans_id: str) -> dict | None:
        if not trans_id:
            return None
        pid = self.redis.hget(self.k_trans, trans_id)
        return self.get(_s(pid)) if pid is not None else None

    def _fetch(self, ids: list) -> list[dict]:
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for pid in ids:
            pipe.hgetall(self.record_key(_s(pid)))
        return [_typed({_s(k): _s(v) for k, v in raw.items()}) for raw in pipe.execute() if raw]

    def list(self, *, status: str | None = None, operation: str | None = None, limit: int = 100) -> list[dict]:
        """Records newest first (by creation time), optionally filtered."""
        if limit <= 0:
            return []
        out: list[dict] = []
        page = max(limit * 2, 100) if (status or operation) else limit
        start = 0
        while len(out) < limit:
            ids = self.redis.zrevrange(self.k_time, start, start + page - 1)
            if not ids:
                break
            start += len(ids)
            for rec in self._fetch(ids):
                if status and rec.get("status") != status:
                    continue
                if operation and rec.get("operation") != operation:
                    continue
                out.append(rec)
                if len(out) >= limit:
                    break
        return out

    def audit(self, *, count: int = 100, after: str | None = None) -> builtins.list[dict]:
        """Audit entries oldest first, each with its stream ``id``; ``after`` is an exclusive id."""
        start = f"({after}" if after else "-"
        entries = self.redis.xrange(self.k_audit, min=start, max="+", count=count)
        # (redis-py's stubs allow None for a reply and an entry; XRANGE gives neither)
        return [{"id": _s(eid), **{_s(k): _s(v) for k, v in (data or {}).items()}} for eid, data in entries or []]

    def _range(self, key: str, max_score: float, limit: int | None) -> builtins.list[Any]:
        if limit is None:
            return self.redis.zrangebyscore(key, "-inf", max_score)
        return self.redis.zrangebyscore(key, "-inf", max_score, start=0, num=limit)

    def stale_non_final(self, older_than_seconds: float, *, limit: int | None = 1000) -> builtins.list[dict]:
        """RETRYING/UNKNOWN, and PENDING with an expired lease, not updated for ``older_than_seconds``."""
        now = self.now()
        cutoff = now - float(older_than_seconds)
        out = []
        for rec in self._fetch(self._range(self.k_non_final, cutoff, limit)):
            st = rec.get("status")
            if st not in self.NON_FINAL or float(rec.get("updated_ts") or 0) > cutoff:
                continue
            if st == Status.PENDING and float(rec.get("lease_until") or 0) > now:
                continue
            out.append(rec)
        return out

    def open_auths(self, older_than_seconds: float, *, limit: int | None = 1000) -> builtins.list[dict]:
        """APPROVED auths (not yet captured or voided) created before now - ``older_than_seconds``."""
        cutoff = self.now() - float(older_than_seconds)
        return [r for r in self._fetch(self._range(self.k_open_auths, cutoff, limit))
                if r.get("operation") == "auth" and r.get("status") == Status.APPROVED]

    def voids_due(self, older_than_seconds: float, *, limit: int | None = 1000) -> builtins.list[dict]:
        """APPROVED sales with then_void="1" (not voided) last updated before now - ``older_than_seconds``."""
        cutoff = self.now() - float(older_than_seconds)
        return [r for r in self._fetch(self._range(self.k_voids_due, cutoff, limit))
                if r.get("operation") == "sale" and r.get("status") == Status.APPROVED and r.get("then_void") == "1"]

    def reflect_due(self, *, limit: int | None = 1000) -> builtins.list[str]:
        """APPROVED captures/refunds/voids not yet reflected on their original, oldest first."""
        return [_s(i) for i in self._range(self.k_reflect_due, float("inf"), limit)]

    # ---- outbox -----------------------------------------------------------------------------
    # Every published payment message, kept until a worker claims its operation (claim(message_id=...)):
    # kombu's Redis transport pops a message before it records it as unacknowledged, so a worker (or
    # Redis) dying in between would lose it without a trace; once the task runs, kombu's restore of
    # unacknowledged messages covers it. The sweep publishes stale entries again; a second delivery is
    # harmless (the claim answers it).
    def outbox_put(self, task_id: str, message: Mapping[str, Any]) -> None:
        now = self.now()
        entry = json.dumps({"message": message, "published": now, "republished": 0}, separators=(",", ":"))
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.k_outbox, task_id, entry)
        pipe.zadd(self.k_outbox_ts, {task_id: now})
        pipe.execute()

    def outbox_done(self, task_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(self.k_outbox, task_id)
        pipe.zrem(self.k_outbox_ts, task_id)
        pipe.execute()

    def outbox_stale(self, older_than_seconds: float, *, limit: int = 1000) -> builtins.list[tuple[str, dict]]:
        """Entries not finished for that long, oldest first: ``(task_id, entry)``."""
        due = self.redis.zrangebyscore(self.k_outbox_ts, "-inf", self.now() - float(older_than_seconds),
                                       start=0, num=limit)
        ids = [_s(i) for i in due]
        if not ids:
            return []
        found = []
        for task_id, raw in zip(ids, self.redis.hmget(self.k_outbox, ids), strict=True):
            if raw is None:
                self.redis.zrem(self.k_outbox_ts, task_id)
            else:
                found.append((task_id, json.loads(raw)))
        return found

    def outbox_republished(self, task_id: str, entry: dict) -> None:
        """Count a re-publication and restart the entry's clock."""
        entry = dict(entry, republished=int(entry.get("republished", 0)) + 1)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.k_outbox, task_id, json.dumps(entry, separators=(",", ":")))
        pipe.zadd(self.k_outbox_ts, {task_id: self.now()})
        pipe.execute()

    # ---- locks ------------------------------------------------------------------------------
    def acquire_lock(self, name: str, ttl_seconds: float) -> str | None:
        token = secrets.token_hex(16)
        ok = self.redis.set(self.lock_key(name), token, nx=True, px=max(1, int(float(ttl_seconds) * 1000)))
        return token if ok else None

    def release_lock(self, name: str, token: str) -> bool:
        if not token:
            return False
        return bool(self._release(keys=[self.lock_key(name)], args=[token]))


def public_outcome(record: Mapping[str, Any] | None) -> dict:
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
            out[f] = _to_str(v)
    for f in OPTIONAL_PUBLIC_FIELDS:
        v = record.get(f)
        if v not in (None, ""):
            out[f] = _to_str(v)
    return out


def task_outcome(record: Mapping[str, Any] | None) -> dict:
    """What a task returns: the public outcome, with an operation still in flight shown as UNKNOWN
    (the contract's statuses; never PENDING or RETRYING)."""
    out = public_outcome(record)
    if out["status"] not in TASK_STATUSES:
        out["status"] = Status.UNKNOWN.value
    return out
