"""Results store: one Redis record per payment operation, with atomic state transitions.

Split by concern:

* :mod:`worker.store.records`: :class:`ResultsStore`, the records, their transitions (one Redis function call each)
  and the reads and indexes the sweep and the CLI use;
* :mod:`worker.store.final_write`: a payment's final write, its outcome, Celery's result and the broker message's
  ack in the same function call;
* :mod:`worker.store.outbox`: :class:`Outbox`, published payment messages not yet claimed;
* :mod:`worker.store.locks`: :class:`Locks`, advisory locks (the sweep's);
* :mod:`worker.store.retention`: :class:`Retention` (``store.retention``), which records may leave Redis for the
  archive and their removal (``scripts/forget.lua``), and the audit stream's trimming by age;
* :mod:`worker.store.health`: :class:`Health` (``store.health``), counts and ages for the exporter and status;
* :mod:`worker.store.outcomes`: what a record shows outside (:func:`public_outcome`, :func:`task_outcome`);
* :mod:`worker.store.keys`, :mod:`worker.store.encoding`, :mod:`worker.store.lua`: the key layout, how
  values are written and read, and the Lua (``worker/store/scripts/*.lua``, package data), loaded as one Redis
  Functions library (``FUNCTION LOAD`` once per server, ``FCALL``; loaded again when a restarted or new primary
  has not got it).

A :class:`ResultsStore` holds its outbox and locks (``store.outbox``, ``store.locks``): the claim script
removes the claimed message's outbox entry in the same round trip, so the three share one key layout.

Key layout (``P`` is the prefix, ``payments:`` by default)::

    P op:<payment_id>      hash    the record (see below); its field ``history`` holds the history entries, a JSON
                                   list of {"at", "status", "note"} (oldest first, capped at 1,000), written in the
                                   same HSET as the change each entry records
    P hist:<payment_id>    list    (records written before 2026-12-08 only) the first history entries, JSON
                                   {"at", "status", "note"}: read before the field, removed with the record
    P key:<payment_id>     hash    a record that left Redis (retention): its fingerprint and public outcome, what
                                   the claim answers the key with; expires PAYMENTS_KEY_RETENTION after the
                                   record's last change (:mod:`worker.store.retention`)
    P idx:trans            hash    gateway trans id -> payment id (first writer wins)
    P idx:time             zset    payment id, score created_ts            (list(), newest first)
    P idx:merchant:<name>:time  zset  the same, of one account other than ``default`` only (the claim writes it;
                                   list(merchant=NAME)); ``P idx:merchant:since``: the first one's created_ts (0 after
                                   ``payments metrics --recount`` indexed older records), docs/merchants.md
    P idx:merchant:<name>:counts  hash  that account's records by status (every status; Health.merchants)
    P idx:merchant:<name>:unknown, :retrying  zset  as idx:unknown / idx:retrying, of that account only
    P idx:non_final        zset    PENDING/RETRYING/UNKNOWN ids, score updated_ts's second (reconciliation)
    P idx:open_auths       zset    APPROVED auths, score created_ts        (stale-auth sweep)
    P idx:voids_due        zset    APPROVED sales with then_void="1", score updated_ts (chained void)
    P idx:reflect_due      zset    APPROVED captures/refunds/voids not yet reflected on their original
    P audit                stream  every transition (the event log: see "Audit events" below),
                                   XADD MAXLEN ~ 1,000,000
    P outbox               hash    published payment messages not yet claimed, task id -> JSON (:class:`Outbox`)
    P idx:outbox           zset    outbox task ids, score when a sweep first saw them (or re-published them);
                                   written by the sweep only, stamps of claimed entries dropped by the next sweep
    P idx:status_counts    hash    records by FINAL status (every status change; retention's removal); PENDING,
                                   RETRYING and UNKNOWN are the sizes of idx:non_final/retrying/unknown
    P idx:unknown, idx:retrying  zset  UNKNOWN / RETRYING ids, score created_ts (money in doubt, its age)
    P idx:needs_human      zset    records a human must look at, score updated_ts
    P stats, sweep:last    hash, string  outbox re-publications and give-ups; the last sweep's report
                                   (:class:`~worker.store.health.Health`, ``store.health``: what the metrics
                                   exporter and ``payments status`` read, without a scan)
    P lock:<name>          string  advisory locks (SET NX PX token; compare-and-delete release)

Internal record fields (dropped by :func:`public_outcome`): ``created_ts``/``updated_ts`` (epoch
seconds, server time), ``lease_owner``/``lease_until``, ``fingerprint`` (the request the idempotency key is
bound to), and the attempt journal: ``sends`` (money-moving sends noted), ``attempt_ts`` (when the last was
noted), ``in_flight`` ("1" between noting an attempt and saying how it ended), ``sent_ts`` (server time by
which the last attempt that may have reached the gateway had left; empty: none may have), ``next_check_ts``.

Audit events: every function that changes a record's status or notes an attempt (claim, journal, transition,
reflect, resolve, and a reflection's change of the original) adds, in the same atomic call, one entry to
``P audit`` (``common.lua`` log_event), so an entry exists if and only if its transition happened. Each entry is
a flat map of strings::

    payment_id  the record's id                 operation  sale | auth | capture | refund | void
    from        the status before ('' for a new record)       to  the status after (= from for an attempt note)
    note        why (gateway message, "attempt 2", "claimed by ...", "resolved by ...: reason")
    at          Redis server time, ISO-8601 UTC with milliseconds     trans_id  the gateway's id ('' if none yet)

Entry ids are Redis stream ids (ordered by Redis time); a reader keeps the last id it handled and reads on with
``XREAD``/``XRANGE`` (``ResultsStore.audit(after=...)``); retention trims entries by age. Card data never appears
(every written value is checked, below). A final outcome is an entry whose ``to`` is a final status.

Card numbers and CVV2 are never stored: every value written is checked (``worker.cards.numbers``) and a
card-like value raises ``ValueError`` naming the field (never the value).
"""
from worker.store.encoding import looks_like_card_number
from worker.store.keys import StoreKeys
from worker.store.locks import Locks
from worker.store.outbox import Outbox
from worker.store.outcomes import CONTRACT_FIELDS, OPTIONAL_PUBLIC_FIELDS, public_outcome, task_outcome
from worker.store.records import Claim, ResultsStore

__all__ = ["ResultsStore", "Claim", "Outbox", "Locks", "StoreKeys", "public_outcome", "task_outcome",
           "CONTRACT_FIELDS", "OPTIONAL_PUBLIC_FIELDS", "looks_like_card_number"]
