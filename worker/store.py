"""Results store: one Redis record per payment operation, with atomic state transitions.

Every hot-path call (:meth:`ResultsStore.claim`, :meth:`ResultsStore.transition`,
:meth:`ResultsStore.renew_lease`) is ONE round trip: a single ``EVALSHA`` of a Lua script
registered once per store instance. Inside the script the record, its history, the indexes and
the audit stream are updated together, so two workers can never interleave a read-modify-write.

Key layout (``P`` is the prefix, ``payments:`` by default)::

    P op:<payment_id>      hash    the record (see below)
    P hist:<payment_id>    list    history entries, JSON {"at", "status", "note"} (oldest first, capped)
    P idx:trans            hash    gateway trans id -> payment id (first writer wins: the original
                                   operation keeps its trans id even if a later reply repeats it)
    P idx:time             zset    payment id, score created_ts            (list(), newest first)
    P idx:non_final        zset    PENDING/RETRYING/UNKNOWN ids, score updated_ts (reconciliation)
    P idx:open_auths       zset    APPROVED auths, score created_ts        (stale-auth sweep)
    P idx:voids_due        zset    APPROVED sales with then_void="1", score updated_ts (chained void)
    P audit                stream  every transition {payment_id, operation, from, to, note, at,
                                   trans_id}, XADD MAXLEN ~ 1,000,000
    P lock:<name>          string  advisory locks (SET NX PX token; compare-and-delete release)

Record fields are all strings except ``attempts`` (int when read back). Timestamps are ISO-8601 UTC
with milliseconds (``2025-01-31T12:00:00.123Z``); ``created_ts``/``updated_ts`` hold the epoch
seconds and ``lease_until`` is epoch seconds too (all internal: :func:`public_outcome` drops them).

Card numbers and CVV2 are never stored: every value written is checked and a 12-19 digit
Luhn-valid run raises ``ValueError`` naming the field (never the value).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping

from worker.gateway.validation import luhn_ok

__all__ = ["ResultsStore", "Claim", "public_outcome", "CONTRACT_FIELDS", "OPTIONAL_PUBLIC_FIELDS"]

CONTRACT_FIELDS = (
    "payment_id", "operation", "status", "message", "trans_id", "avs", "cvv2", "masked_account",
    "card_type", "auth_code", "amount", "order_id", "attempts", "created_at", "updated_at",
)
OPTIONAL_PUBLIC_FIELDS = ("target", "parent", "voided_by", "captured_by", "refunded_by", "refunded_amount", "bank_name",
                          "invoice_id", "refund_needed", "needs_human", "not_charged", "reconciled", "error_class",
                          "reason")

OPERATIONS = frozenset({"sale", "auth", "capture", "refund", "void"})

# Managed by the store: ignored when passed in ``fields``.
_RESERVED = frozenset({
    "payment_id", "operation", "status", "attempts", "created_at", "updated_at", "created_ts",
    "updated_ts", "lease_owner", "lease_until", "history",
})
# Gateway-assigned transaction ids (BluePay: 12 digits) may be Luhn-valid by chance; in these
# fields only runs of 13-19 digits (where real card numbers live) are refused.
_ID_FIELDS = frozenset({"trans_id", "target", "voided_by"})

_HISTORY_CAP = 1000
_AUDIT_MAXLEN = 1_000_000

_DIGIT_RUN = re.compile(r"\d(?:[ -]?\d)+")


def looks_like_card_number(value: str, min_len: int = 12) -> bool:
    """Whether ``value`` holds a Luhn-valid ``min_len``-19 digit run outside an identifier (what the store
    refuses to keep)."""
    return _looks_like_pan(value, min_len)


_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def _in_identifier(value: str, start: int, end: int) -> bool:
    """True when the digit run ``value[start:end]`` is part of a token of ASCII letters, digits, '-' and
    '_' that holds a letter: an identifier such as a Celery task id (``cd27c305-6820-4063-903f-...``: its
    ``305-6820-4063-903`` passes Luhn) or a hex idempotency key, not a card number written down."""
    while start > 0 and value[start - 1] in _ID_CHARS:
        start -= 1
    while end < len(value) and value[end] in _ID_CHARS:
        end += 1
    return any(ch.isalpha() for ch in value[start:end])


def _looks_like_pan(value: str, min_len: int = 12) -> bool:
    """True if ``value`` contains a maximal run of ``min_len``-19 digits (optionally separated by
    single spaces or dashes) that passes the Luhn check and is not part of an identifier."""
    if len(value) < min_len:
        return False
    for m in _DIGIT_RUN.finditer(value):
        digits = m.group().replace(" ", "").replace("-", "")
        if min_len <= len(digits) <= 19 and luhn_ok(digits) and not _in_identifier(value, m.start(), m.end()):
            return True
    return False


def _check_no_pan(name: str, value: str) -> None:
    if _looks_like_pan(value, 13 if name in _ID_FIELDS else 12):
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


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, (bytes, bytearray)) else str(v)


def _pairs_to_dict(flat: list | None) -> dict | None:
    if not flat:
        return None
    it = iter(flat)
    rec = {_s(k): _s(v) for k, v in zip(it, it)}
    return _typed(rec)


def _typed(rec: dict) -> dict:
    if "attempts" in rec:
        try:
            rec["attempts"] = int(rec["attempts"])
        except (TypeError, ValueError):
            rec["attempts"] = 0
    return rec


# --------------------------------------------------------------------------------------------
# Lua. KEYS (same order for claim and transition):
#   1 record  2 history  3 idx:trans  4 idx:time  5 idx:non_final  6 idx:open_auths
#   7 idx:voids_due  8 audit  9 outbox  10 idx:outbox
# --------------------------------------------------------------------------------------------

_LUA_COMMON = r"""
local REC, HIST, IDX_TRANS, IDX_TIME, IDX_NF, IDX_OPEN, IDX_VOIDS, AUDIT, OUTBOX, IDX_OUTBOX =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local NON_FINAL = {PENDING = true, RETRYING = true, UNKNOWN = true}

local function record_event(pid, op, from, to, note, at, trans_id)
  redis.call('RPUSH', HIST, cjson.encode({at = at, status = to, note = note}))
  redis.call('LTRIM', HIST, -%(history_cap)d, -1)
  redis.call('XADD', AUDIT, 'MAXLEN', '~', '%(audit_maxlen)d', '*',
    'payment_id', pid, 'operation', op, 'from', from, 'to', to, 'note', note, 'at', at,
    'trans_id', trans_id)
end

-- Recompute every index membership of the record from its current state.
local function reindex(pid, old_trans)
  local r = redis.call('HMGET', REC, 'status', 'operation', 'then_void', 'trans_id',
                       'created_ts', 'updated_ts')
  local status, op, then_void, trans_id = r[1], r[2], r[3], r[4] or ''
  local created_ts, updated_ts = r[5], r[6]
  if NON_FINAL[status] then
    redis.call('ZADD', IDX_NF, updated_ts, pid)
  else
    redis.call('ZREM', IDX_NF, pid)
  end
  if op == 'auth' and status == 'APPROVED' then
    redis.call('ZADD', IDX_OPEN, created_ts, pid)
  else
    redis.call('ZREM', IDX_OPEN, pid)
  end
  if op == 'sale' and status == 'APPROVED' and then_void == '1' then
    redis.call('ZADD', IDX_VOIDS, updated_ts, pid)
  else
    redis.call('ZREM', IDX_VOIDS, pid)
  end
  if old_trans and old_trans ~= '' and old_trans ~= trans_id then
    if redis.call('HGET', IDX_TRANS, old_trans) == pid then
      redis.call('HDEL', IDX_TRANS, old_trans)
    end
  end
  if trans_id ~= '' then
    redis.call('HSETNX', IDX_TRANS, trans_id, pid)
  end
  return trans_id
end
"""

# ARGV: now_ts, now_iso, owner, lease_until, payment_id, operation, dead_owner, message_id,
#       then field/value pairs
_LUA_CLAIM = _LUA_COMMON + r"""
local now, now_iso, owner, lease_until, pid, op, dead_owner, message_id =
  tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
if message_id ~= '' then
  redis.call('HDEL', OUTBOX, message_id)
  redis.call('ZREM', IDX_OUTBOX, message_id)
end
local status = redis.call('HGET', REC, 'status')
if not status then
  local args = {}
  for i = 9, #ARGV do args[#args + 1] = ARGV[i] end
  for _, v in ipairs({'payment_id', pid, 'operation', op, 'status', 'PENDING', 'attempts', '1',
                      'created_at', now_iso, 'updated_at', now_iso, 'created_ts', ARGV[1],
                      'updated_ts', ARGV[1], 'lease_owner', owner, 'lease_until', lease_until}) do
    args[#args + 1] = v
  end
  redis.call('HSET', REC, unpack(args))
  redis.call('ZADD', IDX_TIME, ARGV[1], pid)
  local trans_id = reindex(pid, nil)
  record_event(pid, op, '', 'PENDING', 'claimed by ' .. owner, now_iso, trans_id)
  return {'claimed', '', redis.call('HGETALL', REC)}
end
if not NON_FINAL[status] then
  return {'final', status, redis.call('HGETALL', REC)}
end
if status == 'PENDING' then
  local r = redis.call('HMGET', REC, 'lease_owner', 'lease_until')
  local cur_owner, until_ = r[1] or '', tonumber(r[2] or '0') or 0
  if until_ > now and cur_owner ~= owner and (dead_owner == '' or cur_owner ~= dead_owner) then
    return {'busy', status, redis.call('HGETALL', REC)}
  end
end
redis.call('HSET', REC, 'status', 'PENDING', 'lease_owner', owner, 'lease_until', lease_until,
           'updated_at', now_iso, 'updated_ts', ARGV[1])
redis.call('HINCRBY', REC, 'attempts', 1)
local cur_op = redis.call('HGET', REC, 'operation') or op
local trans_id = reindex(pid, nil)
record_event(pid, cur_op, status, 'PENDING', 'resumed by ' .. owner .. ' from ' .. status, now_iso,
             trans_id)
return {'resumed', status, redis.call('HGETALL', REC)}
"""

# ARGV: now_ts, now_iso, status, is_final, owner, note, n_expect, expect..., field/value pairs
_LUA_TRANSITION = _LUA_COMMON + r"""
local now_iso, new_status, is_final, owner, note = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local n_expect = tonumber(ARGV[7])
local cur = redis.call('HMGET', REC, 'status', 'lease_owner', 'operation', 'payment_id', 'trans_id')
local status = cur[1]
if not status then return false end
if n_expect > 0 then
  local ok = false
  for i = 8, 7 + n_expect do
    if ARGV[i] == status then ok = true break end
  end
  if not ok then return false end
end
if owner ~= '' and (cur[2] or '') ~= owner then return false end
local args = {}
for i = 8 + n_expect, #ARGV do args[#args + 1] = ARGV[i] end
for _, v in ipairs({'status', new_status, 'updated_at', now_iso, 'updated_ts', ARGV[1]}) do
  args[#args + 1] = v
end
redis.call('HSET', REC, unpack(args))
if is_final == '1' then
  redis.call('HDEL', REC, 'lease_owner', 'lease_until')
end
local pid = cur[4]
local trans_id = reindex(pid, cur[5])
record_event(pid, cur[3] or '', status, new_status, note, now_iso, trans_id)
return redis.call('HGETALL', REC)
"""

# KEYS: record. ARGV: owner, new lease_until
_LUA_RENEW = r"""
local r = redis.call('HMGET', KEYS[1], 'status', 'lease_owner')
if r[1] ~= 'PENDING' and r[1] ~= 'RETRYING' and r[1] ~= 'UNKNOWN' then return 0 end
if r[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'lease_until', ARGV[2])
return 1
"""

_LUA_RELEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class Claim:
    """Result of :meth:`ResultsStore.claim`.

    ``kind``: ``claimed`` (new record, go ahead), ``final`` (return ``record`` as is), ``busy``
    (another live worker holds the lease), ``resumed`` (lease taken over; if ``previous_status``
    is PENDING or UNKNOWN the caller must reconcile before sending, if RETRYING it may send).
    """

    kind: str
    record: dict
    previous_status: str | None = None


class ResultsStore:
    FINAL = frozenset({"APPROVED", "DECLINED", "ERROR", "SKIPPED", "VOIDED", "CAPTURED", "REFUNDED"})
    NON_FINAL = frozenset({"PENDING", "RETRYING", "UNKNOWN"})
    STATUSES = FINAL | NON_FINAL

    def __init__(self, redis_client, prefix: str = "payments:", clock: Callable[[], float] = time.time):
        self.redis = redis_client
        self.prefix = prefix
        self.clock = clock
        self._claim = redis_client.register_script(_LUA_CLAIM % {
            "history_cap": _HISTORY_CAP, "audit_maxlen": _AUDIT_MAXLEN})
        self._transition = redis_client.register_script(_LUA_TRANSITION % {
            "history_cap": _HISTORY_CAP, "audit_maxlen": _AUDIT_MAXLEN})
        self._renew = redis_client.register_script(_LUA_RENEW)
        self._release = redis_client.register_script(_LUA_RELEASE)
        self.k_trans = prefix + "idx:trans"
        self.k_time = prefix + "idx:time"
        self.k_non_final = prefix + "idx:non_final"
        self.k_open_auths = prefix + "idx:open_auths"
        self.k_voids_due = prefix + "idx:voids_due"
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

    def keys_pattern(self) -> str:
        return self.prefix + "*"

    def _keys(self, payment_id: str) -> list[str]:
        return [self.record_key(payment_id), self.history_key(payment_id), self.k_trans, self.k_time,
                self.k_non_final, self.k_open_auths, self.k_voids_due, self.k_audit, self.k_outbox,
                self.k_outbox_ts]

    def load_scripts(self) -> None:
        """Optional warm-up: load the scripts so the first hot-path call is already one EVALSHA."""
        for script in (self._claim, self._transition, self._renew, self._release):
            script.sha = _s(self.redis.script_load(script.script))

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

    def _now(self) -> float:
        return float(self.clock())

    # ---- hot path ---------------------------------------------------------------------------
    def claim(self, payment_id: str, operation: str, *, fields: Mapping[str, Any] | None = None,
              owner: str, lease_seconds: float, dead_owner: str = "", message_id: str = "") -> Claim:
        """Claim ``payment_id`` (see the module docstring). ``dead_owner``: a lease holder known to be
        dead (its process is gone), whose live lease may be taken over as if it had expired.

        ``message_id``: the broker message being worked on; its outbox entry is removed in the same
        round trip, whatever the claim's result (from here on kombu's unacknowledged-message restore
        covers the message, so the outbox's job is done)."""
        payment_id, operation, owner = _to_str(payment_id), _to_str(operation), _to_str(owner)
        if not payment_id:
            raise ValueError("payment_id must not be empty")
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}")
        if not owner:
            raise ValueError("owner must not be empty")
        _check_no_pan("payment_id", payment_id)
        base = {f: "" for f in CONTRACT_FIELDS if f not in _RESERVED}
        base.update(fields or {})
        now = self._now()
        args = [repr(now), _iso(now), owner, repr(now + float(lease_seconds)), payment_id, operation,
                _to_str(dead_owner), _to_str(message_id)]
        args += self._field_args(base)
        kind, prev, flat = self._claim(keys=self._keys(payment_id), args=args)
        prev = _s(prev) or None
        return Claim(kind=_s(kind), record=_pairs_to_dict(flat) or {}, previous_status=prev)

    def transition(self, payment_id: str, status: str, *, fields: Mapping[str, Any] | None = None,
                   expect: Iterable[str] | None = None, owner: str | None = None,
                   note: str = "") -> dict | None:
        if status not in self.STATUSES:
            raise ValueError(f"unknown status {status!r}")
        expect_list = [] if expect is None else [_to_str(e) for e in ([expect] if isinstance(expect, str) else expect)]
        if expect is not None and not expect_list:
            return None  # "current status in an empty set" can never hold
        note = _to_str(note)
        _check_no_pan("note", note)
        now = self._now()
        args = [repr(now), _iso(now), status, "1" if status in self.FINAL else "0",
                _to_str(owner), note, str(len(expect_list)), *expect_list]
        args += self._field_args(fields)
        flat = self._transition(keys=self._keys(_to_str(payment_id)), args=args)
        return _pairs_to_dict(flat)

    def renew_lease(self, payment_id: str, owner: str, lease_seconds: float) -> bool:
        until = self._now() + float(lease_seconds)
        return bool(self._renew(keys=[self.record_key(payment_id)], args=[_to_str(owner), repr(until)]))

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
        out = []
        for raw in pipe.execute():
            if raw:
                out.append(_typed({_s(k): _s(v) for k, v in raw.items()}))
        return out

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

    def audit(self, *, count: int = 100, after: str | None = None) -> list[dict]:
        """Audit entries oldest first, each with its stream ``id``; ``after`` is an exclusive id."""
        start = f"({after}" if after else "-"
        entries = self.redis.xrange(self.k_audit, min=start, max="+", count=count)
        return [{"id": _s(eid), **{_s(k): _s(v) for k, v in data.items()}} for eid, data in entries]

    def _range(self, key: str, max_score: float, limit: int | None) -> list:
        if limit is None:
            return self.redis.zrangebyscore(key, "-inf", max_score)
        return self.redis.zrangebyscore(key, "-inf", max_score, start=0, num=limit)

    def stale_non_final(self, older_than_seconds: float, *, limit: int | None = 1000) -> list[dict]:
        """RETRYING/UNKNOWN, and PENDING with an expired lease, not updated for ``older_than_seconds``."""
        now = self._now()
        cutoff = now - float(older_than_seconds)
        out = []
        for rec in self._fetch(self._range(self.k_non_final, cutoff, limit)):
            st = rec.get("status")
            if st not in self.NON_FINAL or float(rec.get("updated_ts") or 0) > cutoff:
                continue
            if st == "PENDING" and float(rec.get("lease_until") or 0) > now:
                continue
            out.append(rec)
        return out

    def open_auths(self, older_than_seconds: float, *, limit: int | None = 1000) -> list[dict]:
        """APPROVED auths (not yet captured or voided) created before now - ``older_than_seconds``."""
        cutoff = self._now() - float(older_than_seconds)
        return [r for r in self._fetch(self._range(self.k_open_auths, cutoff, limit))
                if r.get("operation") == "auth" and r.get("status") == "APPROVED"]

    def voids_due(self, older_than_seconds: float, *, limit: int | None = 1000) -> list[dict]:
        """APPROVED sales with then_void="1" (not voided) last updated before now - ``older_than_seconds``."""
        cutoff = self._now() - float(older_than_seconds)
        return [r for r in self._fetch(self._range(self.k_voids_due, cutoff, limit))
                if r.get("operation") == "sale" and r.get("status") == "APPROVED" and r.get("then_void") == "1"]

    # ---- outbox -----------------------------------------------------------------------------
    # Every published payment message, kept until a worker claims its operation (claim(message_id=...)):
    # kombu's Redis transport pops a message before it records it as unacknowledged, so a worker (or
    # Redis) dying in between would lose it without a trace; once the task runs, kombu's restore of
    # unacknowledged messages covers it. The sweep publishes stale entries again; a second delivery is
    # harmless (the claim answers it).
    def outbox_put(self, task_id: str, message: Mapping[str, Any]) -> None:
        entry = json.dumps({"message": message, "published": self._now(), "republished": 0},
                           separators=(",", ":"))
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.k_outbox, task_id, entry)
        pipe.zadd(self.k_outbox_ts, {task_id: self._now()})
        pipe.execute()

    def outbox_done(self, task_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(self.k_outbox, task_id)
        pipe.zrem(self.k_outbox_ts, task_id)
        pipe.execute()

    def outbox_stale(self, older_than_seconds: float, *, limit: int = 1000) -> list[tuple[str, dict]]:
        """Entries not finished for that long, oldest first: ``(task_id, entry)``."""
        ids = self.redis.zrangebyscore(self.k_outbox_ts, "-inf", self._now() - float(older_than_seconds),
                                   start=0, num=limit)
        ids = [_s(i) for i in ids]
        if not ids:
            return []
        found = []
        for task_id, raw in zip(ids, self.redis.hmget(self.k_outbox, ids)):
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
        pipe.zadd(self.k_outbox_ts, {task_id: self._now()})
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
    """The JSON-safe outcome a task returns: contract fields plus the optional public ones present
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
