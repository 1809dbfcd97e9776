"""Retention: final records older than PAYMENTS_RETENTION move from Redis to the archive, in bounded batches.

Each batch: the store lists the oldest records created before the cutoff that may leave (``store.retention.due``:
final, unchanged since the cutoff, nothing left to do on them), the archive stores them with their history and
commits, and only then the store removes them (``store.retention.forget``: one Lua script that removes a record, its
history and every index entry only if it is unchanged since the copy). A crash between the two leaves the records in
Redis and the next run copies them again (the archive replaces its rows for those very records). Each record removed
leaves its key index entry in Redis (``PAYMENTS_KEY_RETENTION``: see :mod:`worker.store.retention`), so its
idempotency key is still honoured. Then the audit stream's entries older than the cutoff are copied the same way
and trimmed (``XTRIM MINID``).

When the archive cannot be reached or written, nothing is deleted: the run stops with a clear log line, counts it
(``archive_unavailable``), and the records wait in Redis for the next run. Payments never depend on the archive.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from worker.archive.db import Archive, ArchiveUnavailable
from worker.config import DEFAULT_KEY_RETENTION, MIN_RETENTION

log = logging.getLogger("payments.retention")

__all__ = ["archive_older_than", "retain"]

# Records looked at (kept ones included) per run, as a multiple of what it may archive: a head of records that must
# stay (needs_human, open auths) is read once per run, never without end.
_SCAN_FACTOR = 5


def archive_older_than(store: Any, archive: Archive, cutoff: float, *, batch: int = 500, limit: int | None = None,
                       deadline: float | None = None, progress: Callable[[int], None] | None = None,
                       key_retention: float = DEFAULT_KEY_RETENTION) -> Counter[str]:
    """Archive, then remove from Redis, what may leave and was last changed at or before ``cutoff`` (epoch seconds),
    each record leaving its key index entry for ``key_retention`` seconds after its last change; then the audit
    entries before it. At most ``limit`` records (None: all), and no new batch after ``deadline``
    (``time.monotonic()``). Raises :class:`ArchiveUnavailable` (having deleted only what the archive holds)."""
    counts: Counter[str] = Counter()
    offset, looked = 0, 0
    max_looked = None if limit is None else limit * _SCAN_FACTOR
    while limit is None or counts["archived"] < limit:
        if deadline is not None and time.monotonic() > deadline:
            counts["deadline"] += 1
            break
        size = batch if limit is None else min(batch, limit - counts["archived"])
        records, scanned = store.retention.due(cutoff, offset=offset, limit=size)
        if scanned == 0:
            break
        removed: list[str] = []
        if records:
            archive.put(records)  # committed before anything leaves Redis
            removed = store.retention.forget(records, cutoff, key_retention=key_retention)
        counts["archived"] += len(removed)
        counts["changed_since_copy"] += len(records) - len(removed)
        counts["kept"] += scanned - len(records)
        offset += scanned - len(removed)  # what stays is skipped by the next look
        looked += scanned
        if progress is not None:
            progress(counts["archived"])
        if max_looked is not None and looked >= max_looked:
            break
    audit_limit = None if limit is None else limit * 10  # ~ entries per record, with room
    while audit_limit is None or counts["audit_archived"] < audit_limit:
        if deadline is not None and time.monotonic() > deadline:
            break
        entries = store.retention.audit_before(cutoff, count=batch)
        if not entries:
            break
        archive.put_audit(entries)
        counts["audit_archived"] += len(entries)
        counts["audit_trimmed"] += store.retention.trim_audit(entries[-1]["id"])
    return +counts  # zero counts dropped


def retain(svc: Any, *, now: float | None = None, deadline: float | None = None) -> Counter[str]:
    """The sweep's retention step: ``archive_older_than(now - PAYMENTS_RETENTION)`` with the sweep's bounds, ``now``
    being Redis server time unless given (a test's clock). An archive that cannot be used stops the step and is
    counted, never raised: the rest of the sweep and the payments go on."""
    settings = svc.settings
    if not settings.retention:
        return Counter()
    store = svc.store
    cutoff = (store.now() if now is None else float(now)) - settings.retention
    try:
        counts = archive_older_than(store, svc.archive, cutoff, batch=settings.archive_batch,
                                    limit=settings.archive_per_sweep, deadline=deadline,
                                    key_retention=settings.key_retention)
    except ArchiveUnavailable as exc:
        log.error("retention: %s; nothing more archived or deleted this run, the records stay in Redis", exc)
        _count("payments_archive_unavailable", "Sweeps whose retention step found the archive unusable")
        return Counter({"archive_unavailable": 1})
    if counts["archived"]:
        _count("payments_archived_records", "Records moved from Redis to the archive", counts["archived"])
    return Counter({f"retention_{k}": v for k, v in counts.items()})


_counters: dict[str, Any] = {}


def _count(name: str, documentation: str, amount: float = 1) -> None:
    """Counted in the worker's Prometheus metrics (``worker.ops.metrics``) when this process serves them; the counters
    are this module's own (``payments_archive_unavailable_total``, ``payments_archived_records_total``)."""
    from worker.ops import metrics

    if metrics.observer() is None:
        return
    try:
        counter = _counters.get(name)
        if counter is None:
            from prometheus_client import Counter as PromCounter

            counter = _counters[name] = PromCounter(name, documentation)
        counter.inc(amount)
    except Exception as exc:  # metrics never stop the sweep
        log.warning("retention: metric %s not recorded (%s)", name, type(exc).__name__)


# ---- ``payments archive``: until done, in rounds under the sweep's lock ------------------------------------------
class SweepRunning(Exception):
    """The sweep holds its lock: archiving by hand waits for it."""


class CutoffRefused(ValueError):
    """A cutoff that would archive records whose messages may still come back (or none given, retention off)."""


def archive_cutoff(settings: Any, now: float, before: float | None) -> float:
    """What archiving by hand takes: ``before`` (epoch seconds), else now minus PAYMENTS_RETENTION; never later than
    MIN_RETENTION ago."""
    if before is not None:
        cutoff = before
    elif settings.retention:
        cutoff = now - settings.retention
    else:
        raise CutoffRefused("PAYMENTS_RETENTION is 0 (off): say which records with --before DATE")
    if cutoff > now - MIN_RETENTION:
        raise CutoffRefused(f"--before must be at least {MIN_RETENTION / 86400:g} day(s) ago: a message delivered "
                            "again after its record left Redis would be taken for a new operation")
    return cutoff


def archive_in_rounds(store: Any, archive: Archive, cutoff: float, settings: Any, *, lock_name: str,
                      progress: Callable[[int], None] | None = None,
                      on_handover: Callable[[], None] | None = None) -> Counter[str]:
    """Archive until done, in rounds that each hold the sweep's lock (``lock_name``) for at most twice the sweep's own
    time (a run killed mid-way blocks the sweeps no longer than that); a sweep that takes the lock between rounds goes
    on (``on_handover``). :class:`SweepRunning` when the sweep holds the lock before the first round."""
    ttl = 2 * max(60.0, settings.sweep_interval)
    total: Counter[str] = Counter()
    while True:
        token = store.locks.acquire(lock_name, ttl_seconds=ttl)
        if token is None:
            if not total:
                raise SweepRunning("a sweep is running (it holds the sweep lock): try again when it is done")
            if on_handover is not None:
                on_handover()
            return total
        try:
            counts = archive_older_than(store, archive, cutoff, batch=settings.archive_batch,
                                        deadline=time.monotonic() + ttl / 2, key_retention=settings.key_retention,
                                        progress=_counted_from(total["archived"], progress))
        finally:
            store.locks.release(lock_name, token)
        more = counts.pop("deadline", 0)
        total.update(counts)
        if not more:
            return total


def restore_keys(store: Any, archive: Archive, key_retention: float, *, batch: int = 500) -> dict[str, int]:
    """Give every archived record changed within ``key_retention`` its key index entry back, unless Redis holds a
    record or an entry under its key (``store.retention.remember``): the upgrade step for records archived before
    the key index existed (issue 24). Idempotent; the newest operation under a key is the one its key answers."""
    since = store.now() - key_retention
    looked = restored = 0
    while True:
        page = archive.changed_since(since, limit=batch, offset=looked)
        if not page:
            return {"archived_looked_at": looked, "keys_restored": restored}
        looked += len(page)
        restored += len(store.retention.remember(page, key_retention=key_retention))


def _counted_from(before: int, progress: Callable[[int], None] | None) -> Callable[[int], None] | None:
    """``progress`` told the run's total so far (``before`` archived in earlier rounds), not this round's."""
    if progress is None:
        return None
    return lambda count: progress(before + count)
