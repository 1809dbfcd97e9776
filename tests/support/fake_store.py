"""An in-memory results store for unit tests: :class:`InMemoryStore`.

It has the public API of :class:`worker.store.ResultsStore` and follows the same rules as its Lua scripts
(``worker/store/scripts/*.lua``), step by step in the same order: claim modes (run, create_only, reconcile),
the attempt journal (``True``/``"prior"``), fingerprints, lease-holder-only writes, ``RETRYING`` turned
``UNKNOWN`` once an attempt may have been sent, a takeover's ``sent_ts`` (``min(lease_until, now)``),
``check_in``, the lease freed when parked, final records changed only through ``expect``, follow-ups reflected on
their originals (partial refunds, a capture's amount, a void of a capture reopening its auth, a refund answered
as a VOID), every index, history, audit, outbox, locks and retention's removal (``forget.lua``: unchanged and still
archivable, leaving the key index entry the claim answers from), and the card-number guard (``worker.cards.numbers``).
``tests/contract/`` is what shows the two equal: the store's contract tests run against both implementations, and
random sequences of calls (hypothesis) must get the same answers and leave the same state in both. A rule changed
in one of them and not the other fails there, once a contract test (or, by chance, a random sequence) exercises it.

What differs on purpose:

* Time is the injected ``clock`` (e.g. ``tests.support.clocks.FixedClock``), where the Lua reads Redis ``TIME``:
  a test makes leases lapse and commit horizons pass with ``clock.advance(seconds)``, without sleeping.
* It fails loudly: no Redis attributes (``redis``, ``k_*``, ``record_key``...: an AttributeError), a payment id,
  trans id or journal owner that is not a string is a TypeError (Redis would quietly make a key of ``None``, or
  redis-py refuse it with its own error), and there is no default clock.
* Audit trimming is exact at the same cap (Redis trims ``MAXLEN ~`` approximately, never below it).

The Python half of the store (how a value is written as a string, which fields are managed, how a record is
typed) is imported from ``worker.store``, so only the scripts' half is written twice. One lock makes every
method atomic, as one script is (the lease heartbeat renews from its own thread).
"""
from __future__ import annotations

import builtins
import json
import math
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from worker.cards.numbers import contains_card_number
from worker.config import DEFAULT_KEY_RETENTION
from worker.states import FINAL, FOLLOW_UPS, NON_FINAL, OPERATIONS, Status
from worker.store import CONTRACT_FIELDS, Claim
from worker.store.encoding import to_str as _to_str
from worker.store.encoding import typed as _typed
from worker.store.health import OLDEST_OF
from worker.store.lua import AUDIT_MAXLEN as _AUDIT_MAXLEN
from worker.store.lua import HISTORY_CAP as _HISTORY_CAP
from worker.store.outbox import entry_json
from worker.store.records import _RESERVED
from worker.store.retention import KEPT_FIELDS, archivable, audit_cutoff_id, kept_fields, next_stream_id

__all__ = ["InMemoryStore", "InMemoryOutbox", "InMemoryLocks", "InMemoryRetention", "InMemoryHealth"]

_ZSETS = ("time", "non_final", "open_auths", "voids_due", "reflect_due", "outbox", "unknown", "retrying",
          "needs_human")
_CENTS = re.compile(r"([0-9]+)\.?([0-9]*)")


def _ts(t: float) -> str:
    return f"{t:.3f}"


def _iso(t: float) -> str:
    """common.lua's iso(): UTC with the milliseconds truncated (not rounded, unlike _ts)."""
    secs = math.floor(t)
    ms = math.floor((t - secs) * 1000)
    return f"{datetime.fromtimestamp(secs, UTC):%Y-%m-%dT%H:%M:%S}.{ms:03d}Z"


def _num(text: str | None) -> float:
    """Lua's ``tonumber(text or '0') or 0``."""
    try:
        value = float(text or "0")
    except ValueError:
        return 0.0
    return value if math.isfinite(value) else 0.0


def _cents(text: str | None) -> int | None:
    match = _CENTS.fullmatch(text or "")
    if not match:
        return None
    whole, frac = match.groups()
    return int(whole) * 100 + int((frac + "00")[:2])


def _money(c: int) -> str:
    return f"{c // 100}.{c % 100:02d}"


def _refuse_card(name: str, value: str) -> None:
    if contains_card_number(value):
        raise ValueError(f"refusing to store field {name!r}: its value looks like a card number")


def _field_values(fields: Mapping[str, Any] | None) -> dict[str, str]:
    """ResultsStore._field_args: managed fields dropped, values as strings, card numbers refused."""
    out: dict[str, str] = {}
    for name, value in (fields or {}).items():
        name = str(_to_str(name))
        if name in _RESERVED:
            continue
        text = str(_to_str(value))
        _refuse_card(name, text)
        out[name] = text
    return out


def _refused_unsent(rec: Mapping[str, str]) -> bool:
    """claim.lua's refused_unsent: refused as invalid input before any attempt."""
    return (rec.get("error_class") == "InvalidInput" and (rec.get("sends") or "0") == "0"
            and not rec.get("sent_ts") and not rec.get("trans_id"))


def _charged_nothing(rec: Mapping[str, str]) -> bool:
    """claim.lua's charged_nothing: closed as not charged, or refused as invalid input before any attempt."""
    return rec.get("not_charged") == "1" or _refused_unsent(rec)


def _key(payment_id: Any) -> str:
    if not isinstance(payment_id, str):
        raise TypeError(f"payment_id must be a str, not {type(payment_id).__name__}")
    return payment_id


class InMemoryStore:
    FINAL = FINAL
    NON_FINAL = NON_FINAL
    STATUSES = FINAL | NON_FINAL

    def __init__(self, *, clock: Callable[[], float]):
        if not callable(clock):
            raise TypeError("clock must be callable (e.g. tests.support.clocks.FixedClock())")
        self.clock = clock
        self._lock = threading.RLock()
        self._records: dict[str, dict[str, str]] = {}
        self._history: dict[str, list[dict[str, str]]] = {}
        self._trans: dict[str, str] = {}  # idx:trans
        self._zsets: dict[str, dict[str, float]] = {name: {} for name in _ZSETS}
        self._audit: list[tuple[tuple[int, int], dict[str, str]]] = []
        self._outbox_entries: dict[str, str] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._counts: dict[str, int] = {}  # idx:status_counts
        self._kept: dict[str, tuple[dict[str, str], float]] = {}  # key:<payment_id> (fields, expiry)
        self._stats: dict[str, int] = {}  # stats
        self._sweep_last: str | None = None  # sweep:last
        self.outbox = InMemoryOutbox(self)
        self.locks = InMemoryLocks(self)
        self.retention = InMemoryRetention(self)
        self.health = InMemoryHealth(self)

    # ---- clock --------------------------------------------------------------------------------
    def now(self) -> float:
        return float(self.clock())

    # ---- the scripts' shared steps (common.lua) ----------------------------------------------------
    def _record_event(self, pid: str, op: str, from_: str, to: str, note: str, at: str, trans_id: str) -> None:
        if from_ != to:
            if from_:
                self._counts[from_] = self._counts.get(from_, 0) - 1
            self._counts[to] = self._counts.get(to, 0) + 1
        hist = self._history.setdefault(pid, [])
        hist.append({"at": at, "status": to, "note": note})
        del hist[:-_HISTORY_CAP]
        last = self._audit[-1][0] if self._audit else (0, -1)
        ms = int(self.now() * 1000)
        entry_id = (ms, 0) if ms > last[0] else (last[0], last[1] + 1)
        self._audit.append((entry_id, {"payment_id": pid, "operation": op, "from": from_, "to": to, "note": note,
                                       "at": at, "trans_id": trans_id}))
        del self._audit[:-_AUDIT_MAXLEN]

    def _zset(self, name: str, member: str, score: float | None) -> None:
        if score is None:
            self._zsets[name].pop(member, None)
        else:
            self._zsets[name][member] = score

    def _reindex(self, pid: str, old_trans: str | None) -> str:
        rec = self._records[pid]
        status, op, trans_id = rec.get("status"), rec.get("operation"), rec.get("trans_id") or ""
        created, updated = float(rec["created_ts"]), float(rec["updated_ts"])
        approved = status == Status.APPROVED
        self._zset("non_final", pid, updated if status in NON_FINAL else None)
        self._zset("unknown", pid, created if status == Status.UNKNOWN else None)
        self._zset("retrying", pid, created if status == Status.RETRYING else None)
        self._zset("needs_human", pid, updated if rec.get("needs_human") == "1" else None)
        # a $0 auth only stores the card (common.lua): never an open auth
        holds = _amount_number(rec.get("amount")) != 0
        self._zset("open_auths", pid, created if op == "auth" and approved and holds else None)
        self._zset("voids_due", pid, updated if op == "sale" and approved and rec.get("then_void") == "1" else None)
        self._zset("reflect_due", pid,
                   updated if op in FOLLOW_UPS and approved and rec.get("reflected") != "1" else None)
        if old_trans and old_trans != trans_id and self._trans.get(old_trans) == pid:
            del self._trans[old_trans]
        if trans_id:
            self._trans.setdefault(trans_id, pid)
        return trans_id

    def _reflect(self, fu_pid: str, at: str, now: float) -> str:
        """common.lua's reflect(): an APPROVED capture/refund/void on its original, once."""
        fu = self._records[fu_pid]
        status, op = fu.get("status"), fu.get("operation")
        parent, target, amount = fu.get("parent") or "", fu.get("target") or "", fu.get("amount") or ""
        message, trans_type = fu.get("message") or "", (fu.get("trans_type") or "").upper()
        if status != Status.APPROVED or fu.get("reflected") == "1" or op not in FOLLOW_UPS:
            return "nothing"

        def done(result: str) -> str:
            fu["reflected"] = "1"
            self._reindex(fu_pid, None)
            return result

        orig = self._original_of(parent, target)
        if orig is None or orig == fu_pid:
            return done("no_original")
        o = self._records.get(orig)
        if o is None or o.get("status") is None:
            return done("no_original")
        ostatus, oop = o["status"], o.get("operation")
        if ostatus in NON_FINAL:
            return "original_not_final"
        is_void = op == "void" or (op == "refund" and (
            trans_type == "VOID" or (trans_type == "" and "void" in message.lower())))
        if is_void:
            if ostatus == Status.VOIDED:
                return done("already")
            new_status, fields, note = "VOIDED", {"voided_by": fu_pid}, f"voided by {fu_pid}"
        elif op == "capture":
            if ostatus != Status.APPROVED:
                return done("already")
            new_status, fields, note = "CAPTURED", {"captured_by": fu_pid}, f"captured by {fu_pid}"
            if amount == "" and (o.get("amount") or "") != "":
                fu["amount"] = o["amount"]  # the whole auth: what a refund of it counts against
        else:
            total, before = _cents(o.get("amount")), _cents(o.get("refunded_amount"))
            before = 0 if before is None else before
            this = _cents(amount)
            rest = this is None  # no amount: the gateway refunded what was left of it
            if this is None:
                this = max((total or 0) - before, 0)
            after = before + this
            if total is not None:  # the gateway never refunds more than was charged: a count past it is ours
                after = min(after, total)
            if rest and total is not None:
                fu["amount"] = _money(this)  # what a void of this refund gives back
            new_status = "REFUNDED" if rest or (total is not None and after >= total) else "PARTIALLY_REFUNDED"
            fields = {"refunded_by": fu_pid, "refunded_amount": _money(after)}
            note = f"refunded {_money(this)} by {fu_pid} ({_money(after)} in all)"
        o.update(fields, status=new_status, updated_at=at, updated_ts=_ts(now))
        otrans = self._reindex(orig, None)
        self._record_event(orig, oop or "", ostatus, new_status, note, at, otrans)
        if is_void and oop == "capture":
            self._reopen_auth(o, orig, fu_pid, at, now)
        if is_void and oop == "refund":
            self._restore_refunded(o, orig, fu_pid, at, now)
        return done("reflected")

    def _original_of(self, parent: str | None, target: str | None) -> str | None:
        """common.lua's original_of(): the ``parent`` record if there is one, else the record of ``target``."""
        if parent and parent in self._records:
            return parent
        return self._trans.get(target) if target else None

    def _restore_refunded(self, refund: dict[str, str], refund_pid: str, fu_pid: str, at: str, now: float) -> None:
        """A void of a refund gives its amount back to what it refunded, as the gateway does (if it was counted)."""
        if refund.get("reflected") != "1":
            return
        this = _cents(refund.get("amount"))
        parent = self._original_of(refund.get("parent"), refund.get("target"))
        if this is None or parent is None or parent == refund_pid:
            return
        p = self._records.get(parent)
        if p is None or p.get("status") not in ("REFUNDED", "PARTIALLY_REFUNDED"):
            return
        before_status = p["status"]
        after = max((_cents(p.get("refunded_amount")) or 0) - this, 0)
        new_status = "PARTIALLY_REFUNDED" if after > 0 else "APPROVED"
        p.update(status=new_status, refunded_amount=_money(after), updated_at=at, updated_ts=_ts(now))
        ptrans = self._reindex(parent, None)
        note = f"refund {refund_pid} of {_money(this)} voided by {fu_pid} ({_money(after)} refunded in all)"
        self._record_event(parent, p.get("operation") or "", before_status, new_status, note, at, ptrans)

    def _reopen_auth(self, capture: dict[str, str], capture_pid: str, fu_pid: str, at: str, now: float) -> None:
        """A void of a capture reopens its auth, as the gateway does."""
        auth = self._original_of(capture.get("parent"), capture.get("target"))
        if auth is None:
            return
        a = self._records.get(auth)
        if a is None or a.get("status") != Status.CAPTURED or a.get("captured_by") != capture_pid:
            return
        a.update(status="APPROVED", captured_by="", updated_at=at, updated_ts=_ts(now))
        atrans = self._reindex(auth, None)
        self._record_event(auth, a.get("operation") or "auth", "CAPTURED", "APPROVED",
                           f"reopened: its capture {capture_pid} was voided by {fu_pid}", at, atrans)

    def _copy(self, pid: str) -> dict:
        return _typed(dict(self._records[pid]))

    # ---- hot path -----------------------------------------------------------------------------
    def claim(self, payment_id: str, operation: str, *, fields: Mapping[str, Any] | None = None,
              owner: str, lease_seconds: float, dead_owner: str = "", message_id: str = "",
              mode: str = "run", journal: bool | str = False, fingerprints: Iterable[str] = ()) -> Claim:
        payment_id, operation, owner = str(_to_str(payment_id)), str(_to_str(operation)), str(_to_str(owner))
        if not payment_id:
            raise ValueError("payment_id must not be empty")
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}")
        if not owner:
            raise ValueError("owner must not be empty")
        if mode not in ("run", "retry_failed", "create_only", "reconcile"):
            raise ValueError(f"unknown claim mode {mode!r}")
        _refuse_card("payment_id", payment_id)
        fps = [str(_to_str(f)) for f in fingerprints if f]
        base: dict[str, Any] = {f: "" for f in CONTRACT_FIELDS if f not in _RESERVED}
        base.update(fields or {})
        values = _field_values(base)
        lease = float(lease_seconds)
        journal_mode = journal if journal == "prior" else ("1" if journal else "0")
        dead_owner, message_id = str(_to_str(dead_owner)), str(_to_str(message_id))
        with self._lock:
            return self._claim(payment_id, operation, owner, lease, dead_owner, message_id, mode, journal_mode,
                               fps, values)

    def _claim(self, pid: str, op: str, owner: str, lease: float, dead_owner: str, message_id: str, mode: str,
               journal: str, fps: list[str], values: dict[str, str]) -> Claim:
        now = self.now()
        now_iso, now_ts = _iso(now), _ts(now)
        if message_id:  # the entry only: a stamp the sweep gave it is the sweep's to drop (outbox_prune.lua)
            self._outbox_entries.pop(message_id, None)
        rec = self._records.get(pid)
        if rec is None:
            if mode == "reconcile":
                return Claim(kind="missing", record={}, previous_status=None, now=float(now_ts))
            kept = self._kept_entry(pid)
            if kept is not None:  # the record left Redis: its key index entry answers (claim.lua)
                kept_fp = kept.get("fingerprint") or ""
                kind = "final"
                if kept.get("operation") != op or (fps and kept_fp != "" and kept_fp not in fps):
                    kind = "mismatch"
                elif mode == "create_only":
                    kind = "exists"
                return Claim(kind=kind, record=_typed(dict(kept)), previous_status=kept.get("status") or None,
                             now=float(now_ts))
            rec = self._records[pid] = dict(values)
            rec.update(payment_id=pid, operation=op, status="PENDING", attempts="1", created_at=now_iso,
                       updated_at=now_iso, created_ts=now_ts, updated_ts=now_ts, lease_owner=owner,
                       lease_until=_ts(now + lease), fingerprint=fps[0] if fps else "")
            note = f"claimed by {owner}"
            if journal == "1":
                rec.update(sends="1", attempt_ts=now_ts, in_flight="1")
                note += "; attempt 1"
            elif journal == "prior":
                rec["sent_ts"] = now_ts
                note += "; delivered before: an earlier delivery may have sent it"
            self._zset("time", pid, float(now_ts))
            trans_id = self._reindex(pid, None)
            self._record_event(pid, op, "", "PENDING", note, now_iso, trans_id)
            return Claim(kind="claimed", record=self._copy(pid), previous_status=None, now=float(now_ts))
        status = rec["status"]

        def answer(kind: str) -> Claim:
            return Claim(kind=kind, record=self._copy(pid), previous_status=status or None, now=float(now_ts))

        # claim.lua: retry_failed of a refused, never-sent request binds the key again, to this request
        rebind = mode == "retry_failed" and status == "ERROR" and _refused_unsent(rec)
        if mode != "reconcile":
            stored_fp = rec.get("fingerprint") or ""
            if rec.get("operation") != op or (fps and stored_fp != "" and stored_fp not in fps and not rebind):
                return answer("mismatch")
        if mode == "create_only":
            return answer("exists")
        reopened = False
        if status not in NON_FINAL:
            if not (mode == "retry_failed" and status == "ERROR" and _charged_nothing(rec)):
                return answer("final")
            reopened = True
        cur_owner, until = rec.get("lease_owner") or "", _num(rec.get("lease_until"))
        if until > now and cur_owner != owner and (dead_owner == "" or cur_owner != dead_owner):
            return answer("busy")
        rec.update(status="PENDING", lease_owner=owner, lease_until=_ts(now + lease), updated_at=now_iso,
                   updated_ts=now_ts)
        note = f"resumed by {owner} from {status}"
        if reopened:  # claim.lua: this request's fields, its fingerprint if the refusal had none
            for name in ("error_class", "not_charged", "needs_human", "next_check_ts"):
                rec.pop(name, None)
            rec.update(values)
            if (not rec.get("fingerprint") or rebind) and fps:
                rec["fingerprint"] = fps[0]
            note = f"retry_failed: reopened by {owner} from ERROR (nothing was charged)"
        if rec.get("in_flight") == "1":
            # The last holder noted an attempt and never said how it ended: it may have been sent until its
            # lease ran out (or until now, if its process is known dead).
            sent = max(_num(rec.get("sent_ts")), min(until, now))
            if dead_owner == "" or cur_owner != dead_owner:  # only stalled, maybe: fenced attempts (fence.lua)
                sent = max(sent, _num(rec.get("fence_until")))
            rec.update(in_flight="0", sent_ts=_ts(sent))
            note += "; its attempt may have been sent"
        rec["attempts"] = str(int(rec.get("attempts") or "0") + 1)
        trans_id = self._reindex(pid, None)
        self._record_event(pid, rec.get("operation") or op, status, "PENDING", note, now_iso, trans_id)
        return answer("resumed")

    def _kept_entry(self, pid: str) -> dict[str, str] | None:
        """The live key index entry of ``pid`` (an expired one is gone, as PEXPIREAT would have it)."""
        held = self._kept.get(pid)
        if held is not None and held[1] <= self.now():
            del self._kept[pid]
            held = None
        return dict(held[0]) if held else None

    def journal(self, payment_id: str, owner: str, lease_seconds: float) -> float | None:
        if not isinstance(owner, str):  # ResultsStore sends it as is: redis-py refuses None (DataError)
            raise TypeError(f"owner must be a str, not {type(owner).__name__}")
        pid, lease = _key(payment_id), float(lease_seconds)
        with self._lock:
            now = self.now()
            rec = self._records.get(pid)
            if rec is None or rec.get("status") != Status.PENDING or rec.get("lease_owner") != owner:
                return None
            n = int(_num(rec.get("sends"))) + 1
            rec.update(sends=str(n), attempt_ts=_ts(now), in_flight="1", lease_until=_ts(now + lease))
            self._record_event(rec["payment_id"], rec.get("operation") or "", "PENDING", "PENDING", f"attempt {n}",
                               _iso(now), rec.get("trans_id") or "")
            return float(_ts(now))

    def fence(self, payment_id: str, owner: str, lease_seconds: float, accepted_for: float) -> float | None:
        pid = _key(payment_id)
        with self._lock:
            now = self.now()
            rec = self._records.get(pid)
            if (rec is None or rec.get("status") != Status.PENDING or rec.get("lease_owner") != owner
                    or _num(rec.get("lease_until")) <= now):
                return None
            fence_until = max(now + float(accepted_for), _num(rec.get("fence_until")))
            rec.update(lease_until=_ts(now + float(lease_seconds)), in_flight="1",
                       fence_until=f"{math.ceil(fence_until * 1000) / 1000:.3f}")
            return float(f"{now:.6f}")

    def transition(self, payment_id: str, status: str, *, fields: Mapping[str, Any] | None = None,
                   expect: Iterable[str] | str | None = None, owner: str | None = None, note: str = "",
                   sent: bool | None = None, check_in: float | None = None,
                   reflect: bool = False, then: Any = None) -> dict | None:
        # ``then`` (a final write's Celery result and ack): there is no broker nor result backend in memory.
        if status not in self.STATUSES:
            raise ValueError(f"unknown status {status!r}")
        expected = [] if expect is None else [str(_to_str(e)) for e in ([expect] if isinstance(expect, str)
                                                                         else expect)]
        if expect is not None and not expected:
            return None  # "current status in an empty set" can never hold
        note = str(_to_str(note))
        _refuse_card("note", note)
        values = _field_values(fields)
        pid = str(_to_str(payment_id))
        wait = None if check_in is None else max(0.0, float(check_in))
        with self._lock:
            return self._transition(pid, str(status), str(_to_str(owner)), note, sent, wait, reflect, expected,
                                    values)

    def _transition(self, pid: str, new_status: str, owner: str, note: str, sent: bool | None, check_in: float | None,
                    reflect: bool, expected: list[str], values: dict[str, str]) -> dict | None:
        is_final = new_status in FINAL
        now = self.now()
        now_iso, now_ts = _iso(now), _ts(now)
        rec = self._records.get(pid)
        if rec is None:
            return None
        status = rec["status"]
        if expected and status not in expected:
            return None
        if status in NON_FINAL and (owner == "" or (rec.get("lease_owner") or "") != owner):
            return None
        if status not in NON_FINAL and not expected:
            # A final record has no lease to check: only a caller naming the final status it expects changes it.
            return None
        old_trans = rec.get("trans_id")
        sent_ts = rec.get("sent_ts") or ""
        updates = dict(values)
        if rec.get("in_flight") == "1":
            if sent is not False:
                sent_ts = now_ts  # unsaid counts as "may have been sent"
            updates.update(in_flight="0", sent_ts=sent_ts)
        if new_status == Status.RETRYING and sent_ts != "":
            new_status = "UNKNOWN"
        updates.update(status=new_status, updated_at=now_iso, updated_ts=now_ts)
        if check_in is not None:
            updates["next_check_ts"] = _ts(now + check_in)
        if not is_final and new_status != Status.PENDING:
            updates["lease_until"] = "0"  # parked: free for the next delivery or the sweep
        rec.update(updates)
        if is_final:
            for gone in ("lease_owner", "lease_until", "in_flight", "next_check_ts"):
                rec.pop(gone, None)
        rec_pid = rec["payment_id"]
        trans_id = self._reindex(rec_pid, old_trans)
        self._record_event(rec_pid, rec.get("operation") or "", status, new_status, note, now_iso, trans_id)
        if reflect:
            self._reflect(rec_pid, now_iso, now)
        return self._copy(pid)

    def renew(self, payment_id: str, owner: str, lease_seconds: float) -> bool:
        pid, owner, lease = _key(payment_id), str(_to_str(owner)), float(lease_seconds)
        with self._lock:
            rec = self._records.get(pid)
            if rec is None or rec.get("status") != Status.PENDING or rec.get("lease_owner") != owner:
                return False
            rec["lease_until"] = _ts(self.now() + lease)
            return True

    def reflect(self, payment_id: str) -> str:
        pid = _key(payment_id)
        with self._lock:
            if pid not in self._records:
                return "nothing"
            now = self.now()
            return self._reflect(self._records[pid]["payment_id"], _iso(now), now)

    # ---- reads --------------------------------------------------------------------------------
    def get(self, payment_id: str) -> dict | None:
        pid = _key(payment_id)
        with self._lock:
            if pid not in self._records:
                return None
            rec = self._copy(pid)
            rec["history"] = self.history(pid)
            return rec

    def history(self, payment_id: str) -> list[dict]:
        with self._lock:
            return [dict(h) for h in self._history.get(_key(payment_id), [])]

    def find_by_trans_id(self, trans_id: str) -> dict | None:
        if not trans_id:
            return None
        if not isinstance(trans_id, str):
            raise TypeError(f"trans_id must be a str, not {type(trans_id).__name__}")
        with self._lock:
            pid = self._trans.get(trans_id)
            return self.get(pid) if pid is not None else None

    def _range(self, name: str, max_score: float, limit: int | None) -> list[str]:
        """ZRANGEBYSCORE -inf max_score [LIMIT 0 limit]: by score, then member."""
        members = sorted((score, m) for m, score in self._zsets[name].items() if score <= max_score)
        ids = [m for _, m in members]
        return ids if limit is None or limit < 0 else ids[:limit]

    def _fetch(self, ids: Iterable[str]) -> list[dict]:
        return [self._copy(pid) for pid in ids if pid in self._records]

    def list(self, *, status: str | None = None, operation: str | None = None, limit: int = 100) -> list[dict]:
        if limit <= 0:
            return []
        with self._lock:
            newest_first = [m for _, m in sorted(((s, m) for m, s in self._zsets["time"].items()), reverse=True)]
            out = [r for r in self._fetch(newest_first)
                   if (not status or r.get("status") == status) and (not operation or r.get("operation") == operation)]
        return out[:limit]

    def audit(self, *, count: int = 100, after: str | None = None) -> builtins.list[dict]:
        start = (-1, -1)
        if after:
            ms, _, seq = after.partition("-")
            start = (int(ms), int(seq or 0))
        with self._lock:
            entries = [(eid, data) for eid, data in self._audit if eid > start][:count]
        return [{"id": f"{ms}-{seq}", **data} for (ms, seq), data in entries]

    def stale_non_final(self, older_than_seconds: float, *, limit: int | None = 1000) -> builtins.list[dict]:
        with self._lock:
            now = self.now()
            cutoff = now - float(older_than_seconds)
            out: builtins.list[dict] = []
            for rec in self._fetch(self._range("non_final", cutoff, limit)):
                st = rec.get("status")
                if st not in self.NON_FINAL or float(rec.get("updated_ts") or 0) > cutoff:
                    continue
                if st == Status.PENDING and float(rec.get("lease_until") or 0) > now:
                    continue
                out.append(rec)
            return out

    def open_auths(self, older_than_seconds: float, *, limit: int | None = 1000) -> builtins.list[dict]:
        with self._lock:
            cutoff = self.now() - float(older_than_seconds)
            return [r for r in self._fetch(self._range("open_auths", cutoff, limit))
                    if r.get("operation") == "auth" and r.get("status") == Status.APPROVED]

    def voids_due(self, older_than_seconds: float, *, limit: int | None = 1000) -> builtins.list[dict]:
        with self._lock:
            cutoff = self.now() - float(older_than_seconds)
            return [r for r in self._fetch(self._range("voids_due", cutoff, limit))
                    if r.get("operation") == "sale" and r.get("status") == Status.APPROVED
                    and r.get("then_void") == "1"]

    def reflect_due(self, *, limit: int | None = 1000) -> builtins.list[str]:
        with self._lock:
            return self._range("reflect_due", float("inf"), limit)

    # ---- locks (InMemoryLocks) --------------------------------------------------------------
    def _live_lock(self, name: str) -> str | None:
        held = self._locks.get(name)
        if held is not None and held[1] <= self.now():
            del self._locks[name]  # expired, as PX would have removed it
            held = None
        return held[0] if held else None

    # ---- for tests: what Redis shows to raw commands ------------------------------------------
    def index(self, name: str) -> builtins.list[str]:
        """The members of one index (``time``, ``non_final``, ``open_auths``, ``voids_due``, ``reflect_due``,
        ``outbox``) as ``ZRANGE 0 -1`` lists them."""
        with self._lock:
            return self._range(name, float("inf"), None)

    def outbox_entry(self, task_id: str) -> tuple[str | None, float | None]:
        """(HGET outbox, ZSCORE idx:outbox) of one message."""
        with self._lock:
            return self._outbox_entries.get(task_id), self._zsets["outbox"].get(task_id)

    def lock_ttl(self, name: str) -> float | None:
        """Seconds until a lock expires (PTTL / 1000), or None when it is not held."""
        with self._lock:
            held = self._live_lock(name)
            return None if held is None else self._locks[name][1] - self.now()

    def write_raw(self, payment_id: str, **fields: str) -> None:
        """What a raw HSET of the record does: no rules, no history, no indexes."""
        with self._lock:
            self._records[_key(payment_id)].update({k: str(v) for k, v in fields.items()})

    def dump(self) -> str:
        """Everything stored, as text (the card-data scan's view of every key)."""
        with self._lock:
            return repr((self._records, self._history, self._trans, self._zsets, self._audit, self._outbox_entries,
                         self._counts, self._stats, self._sweep_last, self._kept))


class InMemoryOutbox:
    """The outbox of an :class:`InMemoryStore` (``store.outbox``), as :class:`worker.store.Outbox`."""

    def __init__(self, store: InMemoryStore) -> None:
        self._store = store
        #: task ids a test says are still in the broker (queued or unacknowledged)
        self.queued: set[str] = set()

    def put(self, task_id: str, message: Mapping[str, Any]) -> None:
        with self._store._lock:  # no stamp: the sweep gives one when it first sees the entry
            self._store._outbox_entries[task_id] = entry_json(message)

    def done(self, task_id: str) -> None:
        with self._store._lock:
            self._store._outbox_entries.pop(task_id, None)
            self._store._zset("outbox", task_id, None)

    def stale(self, older_than_seconds: float, *, limit: int = 1000) -> builtins.list[tuple[str, dict]]:
        with self._store._lock:
            now = self._store.now()
            stamps = self._store._zsets["outbox"]
            for task_id in self._store._outbox_entries:  # outbox_stamp.lua
                stamps.setdefault(task_id, now)
            for task_id in [t for t in stamps if t not in self._store._outbox_entries]:  # outbox_prune.lua
                del stamps[task_id]
            return [(task_id, json.loads(self._store._outbox_entries[task_id]))
                    for task_id in self._store._range("outbox", now - float(older_than_seconds), limit)]

    def still_in_broker(self, entries: builtins.list[tuple[str, dict]]) -> set[str]:
        """No broker here: what a test put in :attr:`queued` (the task ids it says are still queued)."""
        return {task_id for task_id, _ in entries if task_id in self.queued}

    def restamp(self, task_ids: set[str]) -> None:
        with self._store._lock:
            for task_id in task_ids:
                if task_id in self._store._zsets["outbox"]:
                    self._store._zset("outbox", task_id, self._store.now())
            if task_ids:
                self._store.health.count("outbox_still_queued", len(task_ids))

    def republished(self, task_id: str, entry: dict) -> None:
        with self._store._lock:
            self._store._outbox_entries[task_id] = entry_json(entry["message"], int(entry.get("republished", 0)) + 1)
            self._store._zset("outbox", task_id, self._store.now())
            self._store.health.count("outbox_republished")

    def give_up(self, task_id: str) -> None:
        with self._store._lock:
            self.done(task_id)
            self._store.health.count("outbox_given_up")


class InMemoryLocks:
    """The locks of an :class:`InMemoryStore` (``store.locks``), as :class:`worker.store.Locks`."""

    def __init__(self, store: InMemoryStore) -> None:
        self._store = store

    def acquire(self, name: str, ttl_seconds: float) -> str | None:
        token = secrets.token_hex(16)
        ttl_ms = max(1, int(float(ttl_seconds) * 1000))
        with self._store._lock:
            if self._store._live_lock(name) is not None:
                return None
            self._store._locks[name] = (token, self._store.now() + ttl_ms / 1000)
            return token

    def release(self, name: str, token: str) -> bool:
        if not token:
            return False
        with self._store._lock:
            if self._store._live_lock(name) != token:
                return False
            del self._store._locks[name]
            return True


class InMemoryRetention:
    """Retention's side of an :class:`InMemoryStore` (``store.retention``), as :class:`worker.store.retention.Retention`
    (``scripts/forget.lua``: unchanged and still archivable, cutoff never later than the clock)."""

    def __init__(self, store: InMemoryStore) -> None:
        self._store = store

    def due(self, cutoff: float, *, offset: int = 0, limit: int = 500) -> tuple[builtins.list[dict], int]:
        s = self._store
        with s._lock:
            ids = s._range("time", float(cutoff), None)[offset:offset + limit]
            found = [dict(s._copy(pid), history=s.history(pid)) for pid in ids
                     if pid in s._records and archivable(s._records[pid], cutoff)]
        return found, len(ids)

    def forget(self, records: Iterable[Mapping[str, Any]], cutoff: float, *,
               key_retention: float = DEFAULT_KEY_RETENTION) -> builtins.list[str]:
        s = self._store
        removed: builtins.list[str] = []
        with s._lock:
            now = s.now()
            cutoff = min(float(cutoff), now)
            for given in records:
                pid = _key(given["payment_id"])
                rec = s._records.get(pid)
                if (rec is None or rec.get("status") != str(given.get("status") or "")
                        or rec.get("updated_ts") != str(given.get("updated_ts") or "") or not archivable(rec, cutoff)):
                    continue
                expires = math.floor((float(rec["updated_ts"]) + float(key_retention)) * 1000) / 1000
                s._kept.pop(pid, None)
                kept = {name: rec[name] for name in KEPT_FIELDS if rec.get(name)}
                if kept and expires > math.floor(now * 1000) / 1000:
                    s._kept[pid] = (kept, expires)
                del s._records[pid]
                s._history.pop(pid, None)
                for name in ("time", "non_final", "open_auths", "voids_due", "reflect_due"):
                    s._zset(name, pid, None)
                trans = rec.get("trans_id") or ""
                if trans and s._trans.get(trans) == pid:
                    del s._trans[trans]
                s._counts[rec["status"]] = s._counts.get(rec["status"], 0) - 1
                removed.append(pid)
        return removed

    def remember(self, records: Iterable[Mapping[str, Any]], *,
                 key_retention: float = DEFAULT_KEY_RETENTION) -> builtins.list[str]:
        s = self._store
        written: builtins.list[str] = []
        with s._lock:
            now = math.floor(s.now() * 1000) / 1000
            for rec in records:
                pid = _key(rec["payment_id"])
                try:
                    expires = math.floor((float(rec.get("updated_ts") or "nan") + float(key_retention)) * 1000) / 1000
                except ValueError:
                    continue
                kept = kept_fields(rec)
                if expires > now and pid not in s._records and s._kept_entry(pid) is None and kept:
                    s._kept[pid] = (kept, expires)
                    written.append(pid)
        return written

    def kept(self, payment_id: str) -> dict[str, str] | None:
        with self._store._lock:
            return self._store._kept_entry(_key(payment_id))

    def audit_before(self, cutoff: float, *, count: int = 500) -> builtins.list[dict]:
        last = int(audit_cutoff_id(cutoff))
        with self._store._lock:
            entries = [(eid, data) for eid, data in self._store._audit if eid[0] <= last][:count]
        return [{"id": f"{ms}-{seq}", **data} for (ms, seq), data in entries]

    def trim_audit(self, through_id: str) -> int:
        ms, _, seq = next_stream_id(through_id).partition("-")
        keep_from = (int(ms), int(seq))
        with self._store._lock:
            before = len(self._store._audit)
            self._store._audit = [(eid, data) for eid, data in self._store._audit if eid >= keep_from]
            return before - len(self._store._audit)


class InMemoryHealth:
    """What an operator asks of an :class:`InMemoryStore` (``store.health``), as :class:`worker.store.health.Health`."""

    def __init__(self, store: InMemoryStore) -> None:
        self._store = store

    def snapshot(self, *, stale_auth_age: float | None = None) -> dict[str, Any]:
        s = self._store
        with s._lock:
            now = s.now()
            out: dict[str, Any] = {"now": now, "by_status": {k: v for k, v in s._counts.items() if v}}
            for name in OLDEST_OF:
                zset = s._zsets[name]
                count = len(s._outbox_entries) if name == "outbox" else len(zset)
                out[name] = {"count": count, "oldest": min(zset.values()) if zset else None}
            out["stats"] = {k: v for k, v in s._stats.items() if v}
            out["sweep"] = json.loads(s._sweep_last) if s._sweep_last else None
            if stale_auth_age is not None:
                out["stale_auths"] = sum(1 for t in s._zsets["open_auths"].values() if t <= now - stale_auth_age)
            return out

    def recount(self, *, batch: int = 1000) -> dict[str, int]:
        s = self._store
        with s._lock:
            counts: dict[str, int] = {}
            for pid, rec in s._records.items():
                counts[rec["status"]] = counts.get(rec["status"], 0) + 1
                s._zset("unknown", pid, float(rec["created_ts"]) if rec["status"] == Status.UNKNOWN else None)
                s._zset("retrying", pid, float(rec["created_ts"]) if rec["status"] == Status.RETRYING else None)
                s._zset("needs_human", pid, float(rec["updated_ts"]) if rec.get("needs_human") == "1" else None)
            s._counts = dict(counts)
            return counts

    def count(self, name: str, by: int = 1) -> None:
        with self._store._lock:
            self._store._stats[name] = self._store._stats.get(name, 0) + by

    def record_sweep(self, report: Mapping[str, Any], *, started: float) -> None:
        with self._store._lock:
            finished = self._store.now()
            entry = dict(report, started=started, finished=finished, seconds=round(max(0.0, finished - started), 3))
            self._store._sweep_last = json.dumps(entry, separators=(",", ":"), sort_keys=True)

    def last_sweep(self) -> dict[str, Any] | None:
        with self._store._lock:
            return json.loads(self._store._sweep_last) if self._store._sweep_last else None


def _amount_number(text: object) -> float | None:
    """The amount as Lua's tonumber reads it (None where it gives nil)."""
    try:
        return float(str(text).strip()) if text not in (None, "") else None
    except ValueError:
        return None
