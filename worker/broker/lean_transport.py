"""kombu's Redis transport, leaner: the unacknowledged-message bookkeeping in plain pipelines (4 fewer commands per
task) and one redis-py client per channel instead of a new one per operation.

With late acks, kombu keeps every delivered message in ``unacked`` (and its time in ``unacked_index``) until the
ack: ZADD + HSET when it is delivered, ZREM + HDEL when it is acknowledged, each pair wrapped in MULTI/EXEC (4 of the
~9 broker commands a task costs). Neither pair needs to be atomic: a restore (``restore_visible``) only takes
entries older than the visibility timeout, so it never sees a half-written new one, and it re-checks the hash
under WATCH before it re-publishes, so an ack landing in between still wins (a message acked after its visibility
timeout may run twice either way: the results store's claim answers that). Both pairs still go out in one round
trip. Everything else (restore, reject, requeue, the sentinel transport's master lookup) is kombu's own.

kombu's ``Channel.conn_or_acquire`` builds a new ``redis.Redis`` over the channel's pool for every ack, unacked
record and publish (~0.09 ms of worker CPU each, 2-3 per payment). :func:`pooled_conn_or_acquire` hands out one
client per channel, over the same pool: a redis-py client is safe to share between threads and greenlets (each
command or pipeline takes its own connection from the pool), and it is built again when kombu replaces the pool
(after a fork, a reconnection or a Sentinel failover), so it never outlives the pool it was made for.

:func:`install` (the worker step ``worker.broker.app.LeanUnackedBookkeeping``) sets it on kombu's Redis channel in a
worker process, for a single node and the Sentinel transport alike; the broker URL, what Flower shows and every
producer are unchanged.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual

from worker.broker import atomic_fetch
from worker.store import final_write

__all__ = ["LeanQoS", "install", "pooled_conn_or_acquire"]


class LeanQoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: Any) -> None:
        # (fetch) The pop script already wrote this message's unacked entries (worker/broker/atomic_fetch.py): only
        # kombu's in-memory bookkeeping is left.
        if atomic_fetch.recorded_by_fetch(self.channel, delivery_tag):
            kombu_virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]  # (no annotations)
            return
        super().append(message, delivery_tag)  # type: ignore[no-untyped-call]  # kombu has no annotations

    def ack(self, delivery_tag: Any) -> None:
        # (store) The results store's final write already ran this ack's HDEL/ZREM in the same call as the payment's
        # outcome (worker/store/final_write.py): only kombu's in-memory bookkeeping is left. All it needs from this
        # transport: acks go through QoS.ack, with kombu's own unacked key names.
        if isinstance(delivery_tag, str) and final_write.acked(delivery_tag):
            kombu_virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]  # (no annotations)
            return
        super().ack(delivery_tag)  # type: ignore[no-untyped-call]  # kombu has no annotations

    @contextmanager
    def pipe_or_acquire(self, pipe: Any = None, client: Any = None) -> Iterator[Any]:
        if pipe:  # a caller's pipeline (restore_by_tag's WATCH transaction): as it is
            yield pipe
        else:
            with self.channel.conn_or_acquire(client) as conn:
                yield conn.pipeline(transaction=False)


@contextmanager
def pooled_conn_or_acquire(self: Any, client: Any = None) -> Iterator[Any]:
    """``kombu.transport.redis.Channel.conn_or_acquire``: the caller's client, else the channel's one client."""
    if client:
        yield client
        return
    pool = self.pool  # kombu builds it on first use, and drops it when it disconnects
    cached = self.__dict__.get("_payments_client")
    if cached is None or cached.connection_pool is not pool:
        cached = self.__dict__["_payments_client"] = self._create_client()
    yield cached


def install() -> None:
    """Use :class:`LeanQoS` and :func:`pooled_conn_or_acquire` for every kombu Redis channel of this process (its
    subclasses too: Sentinel's)."""
    kombu_redis.Channel.QoS = LeanQoS
    # a method of kombu's class replaced (docs/performance.md, "Patches"; pinned by tests/unit/test_library_patches.py)
    kombu_redis.Channel.conn_or_acquire = pooled_conn_or_acquire  # type: ignore[method-assign]
