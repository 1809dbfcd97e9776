"""kombu's Redis transport with the unacknowledged-message bookkeeping in plain pipelines: 4 fewer commands per task.

With late acks, kombu keeps every delivered message in ``unacked`` (and its time in ``unacked_index``) until the
ack: ZADD + HSET when it is delivered, ZREM + HDEL when it is acknowledged, each pair wrapped in MULTI/EXEC (4 of the
~9 broker commands a task costs). Neither pair needs to be atomic: a restore (``restore_visible``) only takes
entries older than the visibility timeout, so it never sees a half-written new one, and it re-checks the hash
under WATCH before it re-publishes, so an ack landing in between still wins (a message acked after its visibility
timeout may run twice either way: the results store's claim answers that). Both pairs still go out in one round
trip. Everything else (restore, reject, requeue, the sentinel transport's master lookup) is kombu's own.

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

from worker.store import final_write

__all__ = ["LeanQoS", "install"]


class LeanQoS(kombu_redis.QoS):
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


def install() -> None:
    """Use :class:`LeanQoS` for every kombu Redis channel of this process (its subclasses too: Sentinel's)."""
    kombu_redis.Channel.QoS = LeanQoS
