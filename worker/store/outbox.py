"""The outbox: every published payment message, kept until a worker claims its operation.

kombu's Redis transport pops a message before it records it as unacknowledged, so a worker (or Redis) dying in
between would lose it without a trace; once the task runs, kombu's restore of unacknowledged messages covers it.
The claim script removes the entry (``claim(message_id=...)``) in the same round trip as the claim. The sweep
publishes stale entries again; a second delivery is harmless (the claim answers it).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import redis

from worker.redis_connections import run_script_durably
from worker.store.encoding import text
from worker.store.keys import StoreKeys
from worker.store.lua import script


def server_time(client: redis.Redis) -> float:
    """Redis server time: the one clock of leases, ages and next checks."""
    seconds, micros = client.time()
    return int(seconds) + int(micros) / 1_000_000


class Outbox:
    def __init__(self, redis_client: redis.Redis, keys: StoreKeys, *, replicas: int = 0,
                 replica_timeout: float = 1.0) -> None:
        self.redis = redis_client
        self.keys = keys
        self.replicas, self.replica_timeout = replicas, replica_timeout
        self._put = redis_client.register_script(script("outbox_put"))

    def put(self, task_id: str, message: Mapping[str, Any]) -> None:
        """Keep a published message, stamped with Redis server time: one ``EVALSHA`` (``scripts/outbox_put.lua``:
        TIME, HSET, ZADD; 4 commands where TIME + MULTI/HSET/ZADD/EXEC were 5, and one round trip instead of two).
        With ``replicas``, WAIT for them (ReplicaAckTimeout: the entry, and the message published before it, could
        vanish in a failover)."""
        run_script_durably(self.redis, self._put, [self.keys.outbox, self.keys.outbox_ts],
                           [task_id, json.dumps(message, separators=(",", ":"))], what="outbox entry",
                           replicas=self.replicas, timeout=self.replica_timeout)

    def done(self, task_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(self.keys.outbox, task_id)
        pipe.zrem(self.keys.outbox_ts, task_id)
        pipe.execute()

    def stale(self, older_than_seconds: float, *, limit: int = 1000) -> list[tuple[str, dict]]:
        """Entries not finished for that long, oldest first: ``(task_id, entry)``."""
        due = self.redis.zrangebyscore(self.keys.outbox_ts, "-inf", server_time(self.redis) - float(older_than_seconds),
                                       start=0, num=limit)
        ids = [text(i) for i in due]
        if not ids:
            return []
        found = []
        for task_id, raw in zip(ids, self.redis.hmget(self.keys.outbox, ids), strict=True):
            if raw is None:
                self.redis.zrem(self.keys.outbox_ts, task_id)
            else:
                found.append((task_id, json.loads(raw)))
        return found

    def republished(self, task_id: str, entry: dict) -> None:
        """Count a re-publication (on the entry and in the store's ``stats``) and restart the entry's clock."""
        entry = dict(entry, republished=int(entry.get("republished", 0)) + 1)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.outbox, task_id, json.dumps(entry, separators=(",", ":")))
        pipe.zadd(self.keys.outbox_ts, {task_id: server_time(self.redis)})
        pipe.hincrby(self.keys.stats, "outbox_republished", 1)
        pipe.execute()

    def give_up(self, task_id: str) -> None:
        """Drop an entry re-published too often (a human looks at it), counted in ``stats``."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(self.keys.outbox, task_id)
        pipe.zrem(self.keys.outbox_ts, task_id)
        pipe.hincrby(self.keys.stats, "outbox_given_up", 1)
        pipe.execute()
