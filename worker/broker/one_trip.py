"""The producer in one round trip: a payment's message (``LPUSH``), its outbox entry (``HSET``) and its task-sent
event (``PUBLISH``) go to Redis in one pipeline instead of three.

kombu's public ``Producer.batch()`` buffers the message and the event (both are published through the same
producer) and sends them, in order, when the block ends; the outbox entry is added to the same pipeline by the
``after_task_publish`` handler (``worker.broker.app._keep_in_outbox``), between the two, where it was written before.
Nothing changes in what is written: the same keys, values and order, on the broker's own connection (which is why it
is done only when the store is on the same Redis server and database as the broker).

Where a batch would change what the producer is told, the publish goes the old way (three round trips):

* the outbox needs ``WAIT`` for replicas (``REDIS_MIN_REPLICAS_ACK``): the entry is written durably on its own;
* Sentinel, a global key prefix, another Redis for the store, a transport without batches, or a batch of the caller's
  own already open on the producer;
* the pipeline fails (kombu's ``BatchPublishError``: "delivery is uncertain", no retry inside kombu): the message is
  published again the old way, with Celery's publish retry policy (``task_publish_retry_policy``), its outbox entry and
  its event. If the failed pipeline had reached Redis, the message is there twice with the same task id: the results
  store's claim answers the second delivery (as with kombu's own retry of a publish whose reply was lost).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from kombu.exceptions import BatchPublishError
from kombu.transport import redis as kombu_redis

__all__ = ["publish", "keep_in_batch"]

log = logging.getLogger("payments.outbox")

#: The batch of the publish in progress on this thread (greenlet, under gevent): (kombu's batch, the store).
_local = threading.local()
#: Whether a store and a broker pool share one Redis database, by (id(pool), id(store)).
_same_database: dict[tuple[int, int], bool] = {}

_ADDRESS = ("host", "port", "path", "db", "username")


def _address(kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(str(kwargs.get(key) or "") for key in _ADDRESS)


def _shares_database(channel: Any, store: Any) -> bool:
    pool = channel.pool
    key = (id(pool), id(store))
    known = _same_database.get(key)
    if known is None:
        broker = getattr(pool, "connection_kwargs", {})
        ours = getattr(getattr(store.redis, "connection_pool", None), "connection_kwargs", {})
        known = _same_database[key] = bool(broker) and _address(broker) == _address(ours)
    return known


def _fusable(producer: Any, store: Any) -> bool:
    if store.outbox.replicas > 0:
        return False
    if getattr(getattr(producer, "_batch_local", None), "current", None) is not None:
        return False  # the caller's own batch: its flush, its errors
    if not producer.supports_batch_publish:
        return False
    channel = producer.channel
    if type(channel) is not kombu_redis.Channel or getattr(channel, "global_keyprefix", None):
        return False  # Sentinel (the master moves), or keys the store would not see under the same names
    return _shares_database(channel, store)


@contextmanager
def _batch(producer: Any, store: Any) -> Iterator[None]:
    with producer.batch() as batch:
        _local.current = (batch, store)
        try:
            yield
        finally:
            _local.current = None


def publish(send: Callable[..., Any], store_of: Callable[[], Any], args: tuple[Any, ...],
            kwargs: dict[str, Any]) -> Any:
    """Celery's ``send_task_message(producer, name, message, ...)`` (``send``) for one payment message, in one round
    trip when it can be (see the module's docstring), else as Celery sends it."""
    producer = args[0] if args else kwargs.get("producer")
    try:
        store = store_of()
        fusable = producer is not None and _fusable(producer, store)
    except Exception:  # a store that cannot even be built: Celery's own path, whose outbox handler logs it
        fusable = False
    if not fusable:
        return send(*args, **kwargs)
    try:
        with _batch(producer, store):
            return send(*args, **kwargs)
    except BatchPublishError as exc:
        log.warning("one-round-trip publish failed (%s): publishing again on its own",
                    type(exc.__cause__ or exc).__name__)
        return send(*args, **kwargs)


def keep_in_batch(task_id: str, message: Mapping[str, Any]) -> bool:
    """Add the outbox entry of ``task_id`` to this thread's publish batch, right after its message; False when no
    batch holds the message (then the caller writes the entry itself)."""
    current = getattr(_local, "current", None)
    if current is None:
        return False
    batch, store = current
    session = getattr(batch.state, "session", None)
    if session is None:  # kombu sent the message on its own (no batch session was opened)
        return False
    store.outbox.put_into(session.pipeline, task_id, message)
    return True
