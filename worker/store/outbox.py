"""The outbox: every published payment message, kept until a worker claims its operation.

kombu's Redis transport pops a message before it records it as unacknowledged, so a worker (or Redis) dying in
between would lose it without a trace; once the task runs, kombu's restore of unacknowledged messages covers it.

The hot path is two commands: the producer's ``HSET`` of the entry (no script, no clock) and the claim script's
``HDEL`` of it. Ages come from the sweep: it stamps each entry it has not seen yet with Redis server time in
``idx:outbox`` (``scripts/outbox_stamp.lua``), drops the stamps of entries claimed since
(``scripts/outbox_prune.lua``) and publishes again what has been waiting too long since its stamp. A message's age
therefore counts from the first sweep that saw it: at most one ``SWEEP_INTERVAL`` late, never early. A second
delivery is harmless (the claim answers it).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import redis

from worker.redis_connections import write_durably
from worker.store.encoding import text
from worker.store.keys import StoreKeys
from worker.store.lua import script

#: Entries (or stamps) one sweep script call looks at: a few ms of Redis time.
SCAN_BATCH = 500


def server_time(client: redis.Redis) -> float:
    """Redis server time: the one clock of leases, ages and next checks."""
    seconds, micros = client.time()
    return int(seconds) + int(micros) / 1_000_000


def entry_json(message: Mapping[str, Any], republished: int = 0) -> str:
    return json.dumps({"message": message, "republished": republished}, separators=(",", ":"))


class Outbox:
    def __init__(self, redis_client: redis.Redis, keys: StoreKeys, *, replicas: int = 0,
                 replica_timeout: float = 1.0) -> None:
        self.redis = redis_client
        self.keys = keys
        self.replicas, self.replica_timeout = replicas, replica_timeout
        self._stamp = redis_client.register_script(script("outbox_stamp"))
        self._prune = redis_client.register_script(script("outbox_prune"))

    def put(self, task_id: str, message: Mapping[str, Any]) -> None:
        """Keep a published message: one ``HSET`` (the sweep stamps it). With ``replicas``, WAIT for them
        (ReplicaAckTimeout: the entry, and the message published before it, could vanish in a failover)."""
        entry = entry_json(message)
        write_durably(self.redis, "outbox entry", lambda pipe: pipe.hset(self.keys.outbox, task_id, entry),
                      replicas=self.replicas, timeout=self.replica_timeout)

    def done(self, task_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(self.keys.outbox, task_id)
        pipe.zrem(self.keys.outbox_ts, task_id)
        pipe.execute()

    def stale(self, older_than_seconds: float, *, limit: int = 1000) -> list[tuple[str, dict]]:
        """The sweep's look at the outbox: stamp entries not seen before, drop stamps of claimed ones, then the
        entries stamped at least ``older_than_seconds`` ago, oldest first: ``(task_id, entry)``."""
        self._scan(self._stamp)
        self._scan(self._prune)
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

    def _scan(self, step: Any) -> None:
        cursor = "0"
        while True:
            cursor, _ = step(keys=[self.keys.outbox, self.keys.outbox_ts], args=[cursor, SCAN_BATCH])
            cursor = text(cursor)
            if cursor == "0":
                return

    def republished(self, task_id: str, entry: dict) -> None:
        """Count a re-publication (on the entry and in the store's ``stats``) and restart the entry's clock."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.outbox, task_id, entry_json(entry["message"], int(entry.get("republished", 0)) + 1))
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
