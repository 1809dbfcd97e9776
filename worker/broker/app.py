"""The one module that owns Celery: the app, the payment task base class and the logging hooks.

Card data is encrypted where every task message is made: ``ProtectingAMQP.as_task_v2`` runs for
``delay``, ``apply_async``, ``s(...).delay()``, chains, groups, chords, ``retry`` and plain ``app.send_task``
(Flower's included), and hands the message's arguments to :func:`worker.cards.messages.protect_publish`: the card of
every ``payments.sale``/``payments.auth`` in the message (its own and every embedded signature: chain tail,
``link``, ``link_error``, group and chord members) is encrypted with the card vault, card data anywhere else is
refused with :class:`worker.cards.numbers.CardDataRefused` before anything reaches the broker, and
``argsrepr``/``kwargsrepr`` (what task events, Flower and ``inspect`` show) are masked. ``republish`` (the
outbox, worker/broker/outbox.py) runs the same code over the stored body.

Nothing is built at import: :func:`create_app` is the composition root (configures an app from settings, registers
the tasks, connects the signal handlers once per process); ``worker.app`` / :func:`default_app` is the environment's
app, built on first use (``celery -A worker``, ``from tasks import sale; sale.delay(...)``).
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import sys
import threading
from collections.abc import Iterator, Mapping
from functools import cache, cached_property
from typing import Any

import celery
from celery import Celery, bootsteps, signals
from celery.app.amqp import AMQP

from worker.broker import one_trip, outbox
from worker.broker.celeryconfig import config_for
from worker.cards.messages import protect_publish
from worker.catalogue import OUTBOX_TASKS
from worker.config import Settings, get_settings
from worker.redis_connections import ReplicaAckTimeout, retry_not_durable
from worker.services import ProcessServices, Services, attach, services, services_of
from worker.tasks import payments as payment_tasks
from worker.tasks import reconciliation as reconciliation_tasks
from worker.tasks import webhooks as webhook_tasks

# as_task_v2's positional parameters after (task_id, name, args, kwargs): Celery's send_task passes
# countdown ... chain positionally.
_AS_TASK_V2_POSITIONAL = [
    name for name, p in list(inspect.signature(AMQP.as_task_v2).parameters.items())[5:]
    if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
]


class ProtectingAMQP(AMQP):
    """Celery's message factory, encrypting card data (and refusing it outside the card) before anything is
    published."""

    def as_task_v2(self, task_id: str, name: str, args: Any = None, kwargs: Any = None, *rest: Any,
                   **options: Any) -> Any:
        if len(rest) > len(_AS_TASK_V2_POSITIONAL):
            raise TypeError("as_task_v2: too many positional arguments")
        options.update(zip(_AS_TASK_V2_POSITIONAL, rest, strict=False))  # rest may stop short
        options["task_id"] = task_id
        args, kwargs, options = protect_publish(
            name, args, kwargs, options, vault=services_of(self.app).vault,
            argsrepr_maxsize=self.argsrepr_maxsize, kwargsrepr_maxsize=self.kwargsrepr_maxsize)
        task_id = options.pop("task_id")
        return super().as_task_v2(task_id, name, args, kwargs, **options)

    def _create_task_sender(self) -> Any:
        # Celery's after_task_publish signal does not say which app published: remember it for the outbox.
        send = super()._create_task_sender()
        app = self.app

        def send_task_message(*args: Any, **kwargs: Any) -> Any:
            previous, _publishing.app = getattr(_publishing, "app", None), app
            _publishing.not_durable = None
            try:
                name = args[1] if len(args) > 1 else kwargs.get("name")
                if name in OUTBOX_TASKS:  # message, outbox entry and task-sent event in one round trip
                    sent = one_trip.publish(send, lambda: services_of(app).store, args, kwargs)
                else:
                    sent = send(*args, **kwargs)
            finally:
                _publishing.app = previous
            if _publishing.not_durable is not None:  # the outbox entry could vanish in a failover: say so
                raise _publishing.not_durable
            return sent

        return send_task_message


_publishing = threading.local()


class PaymentsCelery(Celery):
    """Celery with the leaner Redis result backend (worker/broker/result_backend.py: same keys, values and pub/sub
    message; 2-3 fewer Redis commands per task). The backend is still named by ``result_backend``."""

    def _get_backend(self) -> Any:
        from celery.app import backends

        from worker.broker.result_backend import lean_backend

        cls, url = backends.by_url(self.backend_cls or self.conf.result_backend, self.loader)
        return lean_backend(cls)(app=self, url=url)


def create_app(settings: Settings | None = None, *, services: Services | None = None, main: str = "payments",
               set_as_current: bool = False) -> Celery:
    """The composition root: a payments Celery app configured for ``settings`` (None: the environment's), with its
    own services (``services``: these instead of the ones built from the settings), the worker steps below, and the
    payment tasks: ``app.tasks["payments.sale"]`` is a task of this app, running over this app's services
    (``from worker.tasks import sale`` stays ``worker.app``'s, whatever app is current). The signal handlers (outbox,
    log scrubbing, metrics, start-up checks) are connected once per process, by the first app made."""
    app = PaymentsCelery(main, amqp=ProtectingAMQP, set_as_current=set_as_current)
    if settings is None:
        # Read when the configuration is first used, as Celery reads a config module: Flower's refusal to start
        # without authentication (worker/ops/flower.py) then comes before any other settings error.
        app.config_from_object(_EnvironmentConfig())
    else:
        app.conf.update(config_for(settings))
    attach(app, ProcessServices(settings, given=services))
    app.steps["worker"].add(GreenPoolPrefetch)
    app.steps["worker"].add(BrokerConnectionsForConcurrency)
    app.steps["worker"].add(LeanUnackedBookkeeping)
    app.steps["consumer"].add(TaskEventBuffer)
    payment_tasks.TASKS.register(app)
    reconciliation_tasks.TASKS.register(app)
    webhook_tasks.TASKS.register(app)
    _connect_signals()
    return app


class _EnvironmentConfig(Mapping[str, Any]):
    """``config_for`` of the environment's settings, computed on first read."""

    @cached_property
    def _values(self) -> dict[str, Any]:
        return config_for(get_settings())

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


_default_lock = threading.Lock()


def default_app() -> Celery:
    """The app of ``celery -A worker`` and of producers (``worker.app``), configured from the environment; built on
    first use, once per process, and made Celery's current app."""
    with _default_lock:
        return _build_default_app()


@cache
def _build_default_app() -> Celery:
    app = create_app(set_as_current=True)
    if "flower.command" in sys.modules:
        # Loaded by Flower's command (celery -A worker flower, python -m flower; Celery's CLI loads its plugin
        # commands before the app): lock Flower from the package, whatever the working directory
        # (worker/ops/flower.py).
        from worker.ops.flower import install as lock_flower

        lock_flower()
    return app


def __getattr__(name: str) -> Any:
    if name == "app":  # ``from worker.broker.app import app``: the default app, built on first use
        return default_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextlib.contextmanager
def current(app: Celery) -> Iterator[Celery]:
    """Make ``app`` Celery's current app in this block (what ``from tasks import sale; sale.delay()`` and
    ``services()`` use), then the one before again."""
    previous = celery.current_app._get_current_object()
    app.set_current()
    try:
        yield app
    finally:
        previous.set_current()


# ---- green pools (gevent/eventlet) ------------------------------------------------------------------
# Celery runs green pools without an event loop (its "synloop"), which changes two things that matter here.

#: Prefetch multiplier under a green pool (celeryconfig keeps 1 for prefork and threads).
GREEN_PREFETCH_MULTIPLIER = 2
#: How long a task event may wait in the buffer before it is published.
EVENT_FLUSH_SECONDS = 0.05


class GreenPoolPrefetch(bootsteps.Step):
    """With late acks and prefetch == concurrency, a full green pool pauses fetching, and the synloop only
    looks again when its 2 s poll times out: measured 10 payments/s instead of ~75 (c=20, 200 ms gateway).
    A green pool's spawn blocks while every slot is busy, so with a multiplier of 2 the worker still holds
    at most concurrency + 1 messages and never pauses. (A multiplier of 1 only ever stalls a green pool, so
    it is raised whether it came from celeryconfig or from --prefetch-multiplier.)"""

    def __init__(self, w: Any, **kwargs: Any) -> None:
        super().__init__(w, **kwargs)
        if getattr(w.pool_cls, "is_green", False) and w.prefetch_multiplier == 1:
            w.prefetch_multiplier = GREEN_PREFETCH_MULTIPLIER




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

    def __init__(self, w: Any, **kwargs: Any) -> None:
        super().__init__(w, **kwargs)
        options = dict(w.app.conf.broker_transport_options or {})
        needed = int(getattr(w, "max_concurrency", None) or w.concurrency or 1) + BROKER_CONNECTION_HEADROOM
        if int(options.get("max_connections") or 10) < needed:
            options["max_connections"] = needed
            w.app.conf.broker_transport_options = options




class LeanUnackedBookkeeping(bootsteps.Step):
    """kombu's record of unacknowledged messages without MULTI/EXEC around its two-command pairs (4 fewer Redis
    commands per task; worker/broker/lean_transport.py says why nothing needs them atomic), and written by the fetch
    itself while work is waiting (one round trip fewer per task: worker/broker/atomic_fetch.py). Set before the
    consumer connects."""

    def __init__(self, w: Any, **kwargs: Any) -> None:
        super().__init__(w, **kwargs)
        from worker.broker import atomic_fetch, lean_transport

        lean_transport.install()
        atomic_fetch.install()


class TaskEventBuffer(bootsteps.StartStopStep):
    """Publish task events in batches at most EVENT_FLUSH_SECONDS old, whatever the pool.

    A green pool publishes each event on its own (Celery buffers only when the worker has an event loop): three
    Redis round trips per payment, ~17 % of its CPU in the profile. An event-loop pool (prefork, threads) buffers,
    but flushes at the next loop iteration, which under load is about one ``PUBLISH`` per payment (measured 1.15;
    0.25 with this step). Here events are buffered and published as one ``task-multi`` message at most
    EVENT_FLUSH_SECONDS later (or every 24 events); Flower and every Celery event receiver read those.
    """

    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self._scheduled = False
        super().__init__(c, **kwargs)

    def start(self, c: Any) -> None:
        dispatcher = c.event_dispatcher
        if dispatcher is None or not dispatcher.enabled:
            return
        dispatcher.buffer_group = frozenset({"task"})
        dispatcher.on_send_buffered = lambda: self._schedule(c)

    def _schedule(self, c: Any) -> None:
        if not self._scheduled:
            self._scheduled = True
            c.timer.call_after(EVENT_FLUSH_SECONDS, self._flush, (c,))

    def _flush(self, c: Any) -> None:
        self._scheduled = False
        dispatcher = c.event_dispatcher
        if dispatcher is not None and dispatcher.buffer_group:
            try:
                dispatcher.flush(errors=False, groups=True)
            except Exception as exc:  # monitoring only: never a reason to disturb a payment
                logging.getLogger("payments.events").warning("task events not published: %s", type(exc).__name__)

    def stop(self, c: Any) -> None:
        self._flush(c)  # before the Events step closes the dispatcher

    shutdown = stop




# Payment messages (worker/catalogue.py: OUTBOX_TASKS) go to the results store's outbox once published; a
# worker's claim removes the entry (ResultsStore.claim(message_id=...)), and the sweep publishes entries left
# too long again.


def _keep_in_outbox(sender: str | None = None, body: Any = None, headers: dict[str, Any] | None = None,
                    exchange: str | None = None, routing_key: str | None = None, **_: Any) -> None:
    # Every payment message is kept: its cards are encrypted and card data elsewhere was refused before it
    # was built (ProtectingAMQP), so nothing here can hold a card in clear.
    if sender not in OUTBOX_TASKS or not headers or not headers.get("id"):
        return
    if headers.get("payments_republished"):  # the sweep's re-publication: it counted and re-stamped the entry
        return
    publisher = getattr(_publishing, "app", None)
    if publisher is None:  # published by another Celery app in this process, not through ProtectingAMQP: not ours
        return
    store = None
    try:
        store = services_of(publisher).store
        message = {"name": sender, "body": list(body), "headers": headers,
                   "exchange": exchange or "", "routing_key": routing_key or ""}
        if one_trip.keep_in_batch(headers["id"], message):  # in the publish's own pipeline, after the message
            return
        # Under REDIS_MIN_REPLICAS_ACK the entry (and the message before it) must reach a replica: retried as the
        # publish retry policy says, then the publish raises ReplicaAckTimeout (send_task_message above).
        retry_not_durable(lambda: store.outbox.put(headers["id"], message),
                          publisher.conf.task_publish_retry_policy or {})
    except Exception as exc:
        logging.getLogger("payments.outbox").warning("outbox: %s not kept: %s", headers["id"], type(exc).__name__)
        # One node: the message is out and the outbox a safety net. Under REDIS_MIN_REPLICAS_ACK a failover may
        # discard the message too (its LPUSH is not WAITed for): the publish raises, the producer publishes again.
        if isinstance(exc, ReplicaAckTimeout) or (store is not None and store.outbox.replicas > 0):
            _publishing.not_durable = exc


def current_payments_app() -> Celery:
    """This thread's current app when it is a payments app (a worker's, a producer built by :func:`create_app` and
    made :func:`current`), else ``worker.app``: never an unconfigured app that merely happens to be current (a
    thread of another program, whose current app is Celery's fallback or its own)."""
    current_app = celery.current_app._get_current_object()
    return current_app if getattr(current_app, "payments_services", None) is not None else default_app()


def republish(message: dict[str, Any], publisher: Celery | None = None) -> None:
    """Publish an outbox message again, as it was (worker/broker/outbox.py), through ``publisher`` (None: the current
    payments app)."""
    outbox.republish(message, publisher if publisher is not None else current_payments_app())


def _add_scrubber(logger: logging.Logger | None = None, **_: Any) -> None:
    from worker.gateway.scrub import ScrubbingFilter

    targets = [logger] if logger is not None else []
    targets.append(logging.getLogger())
    for target in targets:
        for handler in target.handlers:
            if not any(isinstance(f, ScrubbingFilter) for f in handler.filters):
                handler.addFilter(ScrubbingFilter())




# ---- metrics (worker/ops/metrics.py) ---------------------------------------------------------------------
def _serve_metrics(**_: Any) -> None:
    """WORKER_METRICS_PORT: the worker's Prometheus endpoint, bound in the main process before the pool forks
    (its children write to the multiprocess directory, the main process serves their sum)."""
    settings = services().settings
    if settings.worker_metrics_port:
        from worker.ops import metrics

        metrics.start(settings.worker_metrics_port, settings.worker_metrics_addr)


def _stop_metrics(**_: Any) -> None:
    from worker.ops import metrics

    metrics.stop()


def _metrics_child_started(**_: Any) -> None:
    from worker.ops import metrics

    metrics.child_started()


def _metrics_child_exiting(**_: Any) -> None:
    from worker.ops import metrics

    metrics.child_exiting()


def _check_card_key(sender: Any = None, **_: Any) -> None:
    """LIVE mode without PAYMENTS_CARD_KEY refuses to start; TEST warns and uses the development key."""
    from worker.cards.vault import ConfigError

    try:
        # built now, so that a LIVE worker without a card key fails at start
        _vault = services_of(getattr(sender, "app", None) or celery.current_app).vault
    except ConfigError as exc:
        # SystemExit, because Celery logs and swallows ordinary exceptions raised by signal handlers.
        raise SystemExit(f"payments: refusing to start: {exc}") from None


def _check_gateway_settings(sender: Any = None, **_: Any) -> None:
    """One sealed stq probe before the first payment: a 404 (BLUEPAY_URL) or SECURITY ERROR (secret, account, hash
    type) refuses to start, naming the setting; an unreachable gateway is an outage and only warns."""
    from worker.ops.preflight import check_at_start

    _start_warning[:] = [check_at_start(services_of(getattr(sender, "app", None) or celery.current_app).settings)]


#: what the start probe found worth a warning, logged once the worker's logging is set up (not yet at worker_init)
_start_warning: list[str | None] = []


def _log_start_warning(**_: Any) -> None:
    from worker.ops.preflight import log_start_warning

    for warning in _start_warning:
        log_start_warning(warning)
    _start_warning.clear()


# ---- the handlers above, connected once per process (Celery's signals are the process's, not an app's) ------------
def _connect_signals() -> None:
    handlers = [
        (signals.after_task_publish, _keep_in_outbox),
        (signals.after_setup_logger, _add_scrubber),
        (signals.after_setup_task_logger, _add_scrubber),
        (signals.worker_init, _serve_metrics),
        (signals.worker_shutdown, _stop_metrics),
        (signals.worker_process_init, _metrics_child_started),
        (signals.worker_process_shutdown, _metrics_child_exiting),
        (signals.worker_init, _check_card_key),
        (signals.beat_init, _check_card_key),
        (signals.worker_init, _check_gateway_settings),
        (signals.worker_ready, _log_start_warning),
    ]
    for signal, handler in handlers:
        # dispatch_uid: a second app (tests, producers) connects nothing twice
        signal.connect(handler, weak=False, dispatch_uid=f"payments.{signal.name}.{handler.__name__}")
