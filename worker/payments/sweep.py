"""The scheduled sweep (``payments.sweep`` under Celery beat, or ``payments sweep`` by hand).

Each run, under a Redis lock with expiry so that two beats or a manual run never overlap:

1. reflects approved captures, refunds and voids on their originals where a crash left that undone
   (first: an auth whose capture was never reflected still looks open, and step 2 would void it);
2. voids approved AUTHs older than STALE_AUTH_AGE that were neither captured nor voided;
3. reconciles operations left UNKNOWN or in flight for longer than RECONCILE_AFTER through ``stq``
   (with a growing delay between tries, and a final state after RECONCILE_GIVE_UP);
4. publishes again payment messages the broker lost (outbox entries no worker claimed in time, whose message is
   neither in its queue nor unacknowledged in kombu's hash: a backlog is not published again; an entry whose task
   ran to its outcome before the entry was kept is dropped instead);
5. finishes sale->void chains whose void was due but never ran;
6. retention: moves final records older than PAYMENTS_RETENTION (and audit entries) to the archive, in bounded
   batches, deleting from Redis only what the archive holds (``worker.archive.retention``); an archive that cannot
   be used stops this step only, logged and counted.

Voids use deterministic operation ids (``<payment_id>:void-stale``, ``<payment_id>:void``), so even a
sweep that outlived its lock cannot void twice: the store's claim returns the recorded outcome.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from worker.archive.retention import retain
from worker.merchants import DEFAULT
from worker.payments.flow import GatewayOutage, LeaseBusy
from worker.payments.record import decode, decode_or_none
from worker.states import Status

if TYPE_CHECKING:  # annotations only: the services build the flow and the store (no import loop at run time)
    from worker.config import Settings
    from worker.payments.flow import PaymentFlow
    from worker.store import ResultsStore

log = logging.getLogger("payments.sweep")

LOCK_NAME = "sweep"


class OutboxPublisher(Protocol):
    """What the sweep needs of the broker for step 4 (worker/broker/outbox.py: ``AppPublisher`` over an app)."""

    def republish(self, message: dict[str, object]) -> None:
        """Publish a kept message again, as it was."""

    def finished(self, task_id: str) -> bool:
        """Whether the task already ran to its outcome (the result backend's SUCCESS); when unsure, False."""


def run_sweep(svc: Any, *, publisher: OutboxPublisher | None = None, progress: Callable[[], object] | None = None,
              now: float | None = None) -> dict[str, Any]:
    """``svc``: the process's :class:`~worker.services.Services` (or a test's namespace of ``settings``, ``store``,
    ``flow``). ``publisher``: how lost payment messages are published again (the sweep task and ``payments sweep``
    hand in their app's); None: this sweep publishes nothing, and counts what it would have published
    (``outbox_not_republished``). ``now``: the time retention judges ages by (default: Redis server time); a test's
    clock."""
    settings: Settings = svc.settings
    store: ResultsStore = svc.store
    flow: PaymentFlow = svc.flow
    lock_ttl = max(60.0, settings.sweep_interval)
    token = store.locks.acquire(LOCK_NAME, ttl_seconds=lock_ttl)
    if token is None:
        log.info("sweep: another sweep holds the lock; nothing done")
        return {"ran": False, "reason": "another sweep is running"}
    counts: Counter[str] = Counter()
    started = store.now()
    # Retention starts no batch past half the lock's life (what comes before it is bounded by its own limits).
    deadline = time.monotonic() + lock_ttl / 2
    try:
        for payment_id in store.reflect_due():
            counts[f"repair_{flow.repair(payment_id)}"] += 1
            _tick(progress)
        for record in store.open_auths(settings.stale_auth_age):
            counts[f"stale_auth_void_{void_stale_auth(svc, record)}"] += 1
            _tick(progress)
        for record in store.stale_non_final(settings.reconcile_after):
            counts[f"reconcile_{reconcile_one(svc, record)}"] += 1
            _tick(progress)
        due = store.outbox.stale(outbox_due(settings))
        queued = store.outbox.still_in_broker(due)  # not lost: the workers are behind, not the broker
        store.outbox.restamp(queued)
        for task_id, entry in due:
            action = "still_queued" if task_id in queued else republish_lost(store, task_id, entry, publisher)
            counts[f"outbox_{action}"] += 1
            _tick(progress)
        for record in store.voids_due(settings.reconcile_after):
            counts[f"chain_void_{chain_void(svc, record)}"] += 1
            _tick(progress)
        counts.update(retain(svc, now=now, deadline=deadline))
    finally:
        store.locks.release(LOCK_NAME, token)
    report: dict[str, Any] = {"ran": True, **dict(sorted(counts.items()))}  # JSON: logged, kept, printed
    log.info("sweep: %s", report)
    try:  # for the metrics exporter and `payments status`: when the sweep last ran and what it did
        store.health.record_sweep(report, started=started)
    except Exception as exc:  # monitoring only: the sweep's work is done
        log.warning("sweep: report not kept: %s", type(exc).__name__)
    return report


def flow_of(svc: Any, record: Mapping[str, object]) -> PaymentFlow | None:
    """The flow of the record's merchant account (worker/merchants.py; ``default`` when it names none), or None: an
    account no longer configured (nothing is sent for it: its records wait for it to come back)."""
    merchant = str(record.get("merchant") or DEFAULT)
    if merchant == DEFAULT or not hasattr(svc, "flow_for"):
        flow: PaymentFlow = svc.flow
        return flow
    if merchant not in svc.settings.merchant_names:
        log.error("sweep: %s belongs to merchant account %r, which is not configured (BLUEPAY_ACCOUNTS)",
                  record.get("payment_id"), merchant)
        return None
    named: PaymentFlow = svc.flow_for(merchant)
    return named


def reconcile_one(svc: Any, record: dict[str, object]) -> str:
    """Reconcile one record left non-final (step 3) through its merchant's gateway."""
    flow = flow_of(svc, record)
    if flow is None:
        return "unknown_merchant"
    return flow.reconcile(record, give_up_after=svc.settings.reconcile_give_up)


def void_stale_auth(svc: Any, record: dict[str, object]) -> str:
    """Void an approved auth older than STALE_AUTH_AGE, neither captured nor voided (step 2)."""
    store, age, auth = svc.store, svc.settings.stale_auth_age, decode(record)
    reason = (f"stale authorization: approved at {auth.created_at}, older than STALE_AUTH_AGE "
              f"({age:g}s), neither captured nor voided")
    flow = flow_of(svc, record)
    if flow is None:
        return "unknown_merchant"
    try:
        outcome = flow.follow_up("void", fresh_void_id(store, f"{auth.payment_id}:void-stale"),
                                     trans_id=auth.trans_id, parent=auth.payment_id, reason=reason)
        return str(outcome.get("status", "NONE")).lower()
    except (GatewayOutage, LeaseBusy) as later:
        return _deferred(record, later)


def chain_void(svc: Any, record: dict[str, object]) -> str:
    """Finish a sale->void chain whose void was due but never ran (step 5)."""
    flow = flow_of(svc, record)
    if flow is None:
        return "unknown_merchant"
    try:
        return finish_chain_void(flow, svc.store, record)
    except (GatewayOutage, LeaseBusy) as later:
        return _deferred(record, later)


def sweep_one(svc: Any, payment_id: str) -> dict[str, object]:
    """The sweep's steps 1, 2, 3 and 5 for one payment now (an operator's "sweep this one"), under the sweep's lock
    so that it never runs beside a sweep: each step only where the sweep itself would take the record (the same
    indexes and ages). ``{"ran": False, ...}`` when a sweep holds the lock or there is no such record."""
    settings, store = svc.settings, svc.store
    token = store.locks.acquire(LOCK_NAME, ttl_seconds=max(60.0, settings.sweep_interval))
    if token is None:
        return {"ran": False, "reason": "a sweep is running: try again when it is done"}
    try:
        if store.get(payment_id) is None:
            return {"ran": False, "reason": "no such payment in Redis"}
        counts: Counter[str] = Counter()
        if payment_id in _due(store, store.keys.reflect_due, payment_id, float("inf")):
            counts[f"repair_{svc.flow.repair(payment_id)}"] += 1
        for record in _only(store, payment_id, "open_auths", store.open_auths, settings.stale_auth_age):
            counts[f"stale_auth_void_{void_stale_auth(svc, record)}"] += 1
        for record in _only(store, payment_id, "non_final", store.stale_non_final, settings.reconcile_after):
            counts[f"reconcile_{reconcile_one(svc, record)}"] += 1
        for record in _only(store, payment_id, "voids_due", store.voids_due, settings.reconcile_after):
            counts[f"chain_void_{chain_void(svc, record)}"] += 1
    finally:
        store.locks.release(LOCK_NAME, token)
    report = {"ran": True, "payment_id": payment_id, **dict(sorted(counts.items()))}
    log.warning("sweep of %s: %s", payment_id, report)
    return report


def _due(store: ResultsStore, key: str, payment_id: str, cutoff: float) -> list[str]:
    """``[payment_id]`` when the sweep index ``key`` holds it with a score at or below ``cutoff``."""
    score = store.redis.zscore(key, payment_id)
    return [payment_id] if score is not None and float(score) <= cutoff else []


def _only(store: ResultsStore, payment_id: str, index: str, query: Callable[..., list[dict[str, object]]],
          older_than: float) -> list[dict[str, object]]:
    """What the store's sweep ``query`` (over the index named ``index``) returns for this one payment: asked only
    when the index holds it old enough, and then by the query itself, so its rules stay the store's."""
    if not _due(store, getattr(store.keys, index), payment_id, store.now() - float(older_than)):
        return []
    return [r for r in query(older_than, limit=None) if r.get("payment_id") == payment_id]


# How many times a message the broker lost is published again before a human is asked to look.
MAX_REPUBLISH = 5


def outbox_age(settings: Settings) -> float:
    """A published payment message nobody finished for this long was lost by the broker (kombu's fetch
    gap): twice the redelivery delay of a dead worker's message, and never less than RECONCILE_AFTER."""
    return max(2.2 * settings.visibility_timeout, settings.reconcile_after)


def outbox_due(settings: Settings) -> float:
    """How long after its stamp an outbox entry is published again. The stamp comes from the first sweep that saw
    the entry, up to one sweep interval after it was published: the entry may be :func:`outbox_age` old once its
    stamp is that minus one interval (with the defaults: stamp 360 s, so the third sweep that sees a lost message
    publishes it again, 600-900 s after it was published). Never less than the visibility timeout."""
    return max(outbox_age(settings) - settings.sweep_interval, settings.visibility_timeout)


def republish_lost(store: ResultsStore, task_id: str, entry: Mapping[str, Any],  # an outbox entry: JSON
                   publisher: OutboxPublisher | None) -> str:
    if int(entry.get("republished", 0)) >= MAX_REPUBLISH:
        log.error("sweep: message %s was published %d times and never finished: look at it by hand",
                  task_id, MAX_REPUBLISH + 1)
        store.outbox.give_up(task_id)
        return "given_up"
    if publisher is None:
        log.warning("sweep: message %s was not finished after publishing; this sweep has no publisher", task_id)
        return "not_republished"
    if publisher.finished(task_id):
        # Its worker claimed it before the producer kept the entry (the producer writes it just after publishing):
        # nothing was lost, and publishing it again would only be answered by the claim.
        store.outbox.done(task_id)
        log.info("sweep: message %s ran to its outcome before its outbox entry was kept; entry dropped", task_id)
        return "finished"
    # Count first, then publish: counted after, it would put back an entry that the worker's claim of the
    # re-published message had already removed (and the message would be published yet again later).
    store.outbox.republished(task_id, dict(entry))
    publisher.republish(entry["message"])
    log.warning("sweep: message %s was not finished after publishing; published again", task_id)
    return "republished"


def finish_chain_void(flow: PaymentFlow, store: ResultsStore, sale_record: Mapping[str, object]) -> str:
    """Void an approved sale whose chained void never ran (or was skipped while the sale was unknown)."""
    sale_id = decode(sale_record).payment_id
    void_id = f"{sale_id}:void"
    earlier = decode_or_none(store.get(void_id))
    if earlier and earlier.status == Status.APPROVED:
        # The void went through but the sale's record was not updated (crash in between): repair it.
        result = store.reflect(void_id)
        # "reflected": repaired now; anything else (already reflected, original not final) is said as it is,
        # so a sale that stays APPROVED is not counted "repaired" on every sweep.
        return "repaired" if result == "reflected" else f"repair_{result}"
    if earlier and earlier.final:
        void_id = fresh_void_id(store, f"{sale_id}:void-sweep")
    outcome = flow.void_after(dict(sale_record), payment_id=void_id)
    return str(outcome.get("status", "NONE")).lower()


def fresh_void_id(store: ResultsStore, void_id: str) -> str:
    """``void_id``, or ``<void_id>-2``, ``-3``... past the ones the reconcile pass closed as never sent ("not
    charged": stq proved the gateway never got them). Such a void did nothing, and the sale/auth is still open:
    retrying under its id would only return that recorded ERROR forever. Deterministic, so two sweeps at once
    still pick the same id and the store's claim lets only one of them send."""
    candidate, n = void_id, 1
    while True:
        earlier = decode_or_none(store.get(candidate))
        if not (earlier and earlier.status == Status.ERROR and earlier.not_charged):
            return candidate
        n += 1
        candidate = f"{void_id}-{n}"


def _deferred(record: Mapping[str, object], later: GatewayOutage | LeaseBusy) -> str:
    """A void the gateway could not take now (parked RETRYING/UNKNOWN) or that another worker holds: the next
    sweep picks it up again; one such record must not abort the sweep for all the others."""
    log.warning("sweep: %s deferred: %s", record.get("payment_id"), later.reason)
    return "deferred" if isinstance(later, GatewayOutage) else "busy"


def _tick(progress: Callable[[], object] | None) -> None:
    if progress is not None:
        progress()
