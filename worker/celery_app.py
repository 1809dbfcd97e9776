"""The one module that owns Celery: the app, the payment task base class and the logging hooks.

Card data is sealed where every task message is made: ``SealingAMQP.as_task_v2`` runs for
``delay``, ``s(...).delay()``, chains, ``retry`` and plain ``app.send_task`` (Flower's included). For
``payments.sale``/``payments.auth`` it seals the ``card`` argument with the card vault before the
message reaches the broker, and sets ``argsrepr``/``kwargsrepr`` (what task events, Flower and
``inspect`` show) to a masked view.
"""
from __future__ import annotations

import json
import logging

from celery import Celery, Task, bootsteps, signals
from celery.app.amqp import AMQP

from worker.services import services

# Tasks that carry a card, and the position of `card` among their positional arguments.
CARD_ARGUMENT = {"payments.sale": 1, "payments.auth": 1}


def _masked(value):
    from worker.vault import mask_card

    return mask_card(value) if isinstance(value, dict) else "<card>"


def _seal(card):
    """The sealed card; a value that cannot be a card never travels at all (the worker records why)."""
    vault = services().vault
    if vault.is_sealed(card):
        return card
    if isinstance(card, dict) and card.get("number"):
        return vault.seal(card)
    return {"invalid": f"card must be a dict with a number, got {type(card).__name__}"}


class SealingAMQP(AMQP):
    """Celery's message factory, sealing card data before anything is published."""

    def as_task_v2(self, task_id, name, args=None, kwargs=None, *rest, **options):
        position = CARD_ARGUMENT.get(name)
        if position is not None:
            args, kwargs = list(args or ()), dict(kwargs or {})
            if len(args) > position:
                args[position] = _seal(args[position])
                shown = list(args)
                shown[position] = _masked(args[position])
                options["argsrepr"] = repr(tuple(shown))
            if "card" in kwargs:
                kwargs["card"] = _seal(kwargs["card"])
                options["kwargsrepr"] = repr({k: (_masked(v) if k == "card" else v) for k, v in kwargs.items()})
        return super().as_task_v2(task_id, name, args, kwargs, *rest, **options)


app = Celery("payments", amqp=SealingAMQP)
app.config_from_object("celeryconfig")


# ---- green pools (gevent/eventlet) ------------------------------------------------------------------
# Celery runs green pools without an event loop (its "synloop"), which changes two things that matter here.

#: Prefetch multiplier under a green pool (celeryconfig keeps 1 for prefork and threads).
GREEN_PREFETCH_MULTIPLIER = 2
#: How long a task event may wait in the buffer before it is published under a green pool.
EVENT_FLUSH_SECONDS = 0.05


class GreenPoolPrefetch(bootsteps.Step):
    """With late acks and prefetch == concurrency, a full green pool pauses fetching, and the synloop only
    looks again when its 2 s poll times out: measured 10 payments/s instead of ~75 (c=20, 200 ms gateway).
    A green pool's spawn blocks while every slot is busy, so with a multiplier of 2 the worker still holds
    at most concurrency + 1 messages and never pauses. (A multiplier of 1 only ever stalls a green pool, so
    it is raised whether it came from celeryconfig or from --prefetch-multiplier.)"""

    def __init__(self, w, **kwargs):
        super().__init__(w, **kwargs)
        if getattr(w.pool_cls, "is_green", False) and w.prefetch_multiplier == 1:
            w.prefetch_multiplier = GREEN_PREFETCH_MULTIPLIER


app.steps["worker"].add(GreenPoolPrefetch)


# ---- broker connections ------------------------------------------------------------------------------
#: Broker connections a worker may open beyond one per pool slot (the consumer's BRPOP, restores, events).
BROKER_CONNECTION_HEADROOM = 10


class BrokerConnectionsForConcurrency(bootsteps.Step):
    """Size kombu's Redis connection pool for the worker's concurrency.

    kombu's Redis channel caps its pool at ``max_connections`` (10 by default) and raises MaxConnectionsError
    past it instead of waiting. With late acks every pool slot acks on its own; a gevent worker with dozens of
    slots runs out (a greenlet holds its connection while it waits on the socket, and the others take more):
    acks fail ("Couldn't ack"), the consumer reconnects, and when the error
    hits kombu's bookkeeping of a message BRPOP has just popped (``QoS.append``), that message is gone
    (measured: 1 payment of 1000 never ran, gevent c=100; 17 failed acks at c=50; celery/celery#1350).
    Threads ack from their own threads too; a 50-thread worker did not run out when measured, and gets the
    same sizing.
    """

    requires = ("celery.worker.components:Pool",)  # it sets max_concurrency (--autoscale)

    def __init__(self, w, **kwargs):
        super().__init__(w, **kwargs)
        options = dict(w.app.conf.broker_transport_options or {})
        needed = int(getattr(w, "max_concurrency", None) or w.concurrency or 1) + BROKER_CONNECTION_HEADROOM
        if int(options.get("max_connections") or 10) < needed:
            options["max_connections"] = needed
            w.app.conf.broker_transport_options = options


app.steps["worker"].add(BrokerConnectionsForConcurrency)


class GreenTaskEventBuffer(bootsteps.StartStopStep):
    """Batch task events under a green pool, as Celery already does for its event-loop pools.

    Celery buffers task events only when the worker has an event loop (prefork, threads); a green pool
    publishes each one on its own: three Redis round trips per payment, ~17 % of its CPU in the profile.
    Here they are buffered and published as one ``task-multi`` message at most EVENT_FLUSH_SECONDS later
    (or every 24 events); Flower and every Celery event receiver read those.
    """

    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, c, **kwargs):
        self._scheduled = False
        super().__init__(c, **kwargs)

    def start(self, c):
        dispatcher = c.event_dispatcher
        if dispatcher is None or c.hub is not None or not getattr(c.pool, "is_green", False):
            return
        dispatcher.buffer_group = frozenset({"task"})
        dispatcher.on_send_buffered = lambda: self._schedule(c)

    def _schedule(self, c):
        if not self._scheduled:
            self._scheduled = True
            c.timer.call_after(EVENT_FLUSH_SECONDS, self._flush, (c,))

    def _flush(self, c):
        self._scheduled = False
        dispatcher = c.event_dispatcher
        if dispatcher is not None and dispatcher.buffer_group:
            try:
                dispatcher.flush(errors=False, groups=True)
            except Exception as exc:  # monitoring only: never a reason to disturb a payment
                logging.getLogger("payments.events").warning("task events not published: %s", type(exc).__name__)

    def stop(self, c):
        self._flush(c)  # before the Events step closes the dispatcher

    shutdown = stop


app.steps["consumer"].add(GreenTaskEventBuffer)


class PaymentTask(Task):
    """Base of the payment tasks."""

    # tasks/payments.py bounds every kind of re-queue itself (outage, busy lease, Redis down).
    max_retries = None


# Payment messages go to the results store's outbox once published; a worker's claim removes the entry
# (ResultsStore.claim(message_id=...)), and the sweep publishes entries left too long again.
OUTBOX_TASKS = frozenset({"payments.sale", "payments.auth", "payments.capture", "payments.refund", "payments.void"})


@signals.after_task_publish.connect(weak=False)
def _keep_in_outbox(sender=None, body=None, headers=None, exchange=None, routing_key=None, **_):
    if sender not in OUTBOX_TASKS or not headers or not headers.get("id"):
        return
    from worker.store import looks_like_card_number

    if looks_like_card_number(json.dumps([body, headers], default=str), min_len=13):
        # A card number outside the sealed card (say, in `amount`): the worker will refuse this message
        # anyway, and the outbox must never keep card data in clear.
        logging.getLogger("payments.outbox").warning("outbox: %s not kept: card-like data outside the card",
                                                     headers["id"])
        return
    try:
        services().store.outbox_put(headers["id"], {
            "name": sender, "body": list(body), "headers": headers,
            "exchange": exchange or "", "routing_key": routing_key or "",
        })
    except Exception as exc:  # the message is out; the outbox is a safety net, never a reason to fail
        logging.getLogger("payments.outbox").warning("outbox: %s not kept: %s", headers["id"], type(exc).__name__)


def republish(message: dict) -> None:
    """Publish an outbox message again, as it was (same task id, sealed card, chain)."""
    from celery.app.amqp import task_message

    headers = message["headers"]
    again = task_message(headers=headers, properties={"correlation_id": headers["id"]},
                         body=tuple(message["body"]), sent_event=None)
    with app.producer_or_acquire() as producer:
        app.amqp.send_task_message(producer, message["name"], again, exchange=message["exchange"] or None,
                                   routing_key=message["routing_key"] or None)


def _add_scrubber(logger=None, **_):
    from worker.gateway.scrub import ScrubbingFilter

    targets = [logger] if logger is not None else []
    targets.append(logging.getLogger())
    for target in targets:
        for handler in target.handlers:
            if not any(isinstance(f, ScrubbingFilter) for f in handler.filters):
                handler.addFilter(ScrubbingFilter())


signals.after_setup_logger.connect(_add_scrubber, weak=False)
signals.after_setup_task_logger.connect(_add_scrubber, weak=False)


@signals.worker_init.connect(weak=False)
@signals.beat_init.connect(weak=False)
def _check_card_key(**_):
    """LIVE mode without PAYMENTS_CARD_KEY refuses to start; TEST warns and uses the development key."""
    from worker.vault import ConfigurationError

    try:
        services().vault
    except ConfigurationError as exc:
        # SystemExit, because Celery logs and swallows ordinary exceptions raised by signal handlers.
        raise SystemExit(f"payments: refusing to start: {exc}") from None
