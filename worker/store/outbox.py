"""The outbox: every published payment message, kept until a worker claims its operation.

kombu's Redis transport pops a message before it records it as unacknowledged, so a worker (or Redis) dying in
between would lose it without a trace; once the task runs, kombu's restore of unacknowledged messages covers it.

The hot path is two commands: the producer's ``HSET`` of the entry (no script, no clock) and the claim script's
``HDEL`` of it. Ages come from the sweep: it stamps each entry it has not seen yet with Redis server time in
``idx:outbox`` (``scripts/outbox_stamp.lua``), drops the stamps of entries claimed since
(``scripts/outbox_prune.lua``) and publishes again what has been waiting too long since its stamp. A message's age
therefore counts from the first sweep that saw it: at most one ``SWEEP_INTERVAL`` late, never early. A second
delivery is harmless (the claim answers it).

Only what provably left the broker is published again (:meth:`Outbox.still_in_broker`): a due entry whose message
still waits in its queue, or is held unacknowledged (kombu's ``unacked`` hash: a live worker runs it or waits for its
countdown, or kombu restores it after the visibility timeout), is not lost: workers that fell behind would otherwise
find every queued payment published again on each due sweep. Its stamp restarts instead. The broker shares the
store's Redis database (REDIS_URL), so the check is a script over the queue lists and the hash, in slices.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import redis

from worker.redis_connections import write_durably
from worker.store.encoding import text
from worker.store.keys import StoreKeys
from worker.store.lua import Functions

#: Entries (or stamps) one sweep script call looks at: a few ms of Redis time.
SCAN_BATCH = 500
#: kombu's Redis transport: delivered, unacknowledged messages; a queue's list for priority ``p`` > 0 is
#: ``queue + PRIORITY_SEP + p`` (kombu.transport.redis: ``sep``, ``priority_steps``).
UNACKED = "unacked"
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)
#: The queue of a message published without a routing key (Celery's task_default_queue).
DEFAULT_QUEUE = "celery"


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
        functions = Functions(redis_client)
        self._stamp = functions.function("outbox_stamp")
        self._prune = functions.function("outbox_prune")
        self._queued = functions.function("outbox_queued")

    def put(self, task_id: str, message: Mapping[str, Any]) -> None:
        """Keep a published message: one ``HSET`` (the sweep stamps it). With ``replicas``, WAIT for them
        (ReplicaAckTimeout: the entry, and the message published before it, could vanish in a failover)."""
        entry = entry_json(message)
        write_durably(self.redis, "outbox entry", lambda pipe: pipe.hset(self.keys.outbox, task_id, entry),
                      replicas=self.replicas, timeout=self.replica_timeout)

    def put_into(self, pipe: Any, task_id: str, message: Mapping[str, Any]) -> None:
        """The same ``HSET`` as :meth:`put`, added to a pipeline of the broker's that shares this store's database
        (the producer's publish batch: worker/broker/one_trip.py); no replicas to wait for there."""
        pipe.hset(self.keys.outbox, task_id, entry_json(message))

    def done(self, task_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(self.keys.outbox, task_id)
        pipe.zrem(self.keys.outbox_ts, task_id)
        pipe.execute()

    def stale(self, older_than_seconds: float, *, limit: int = 1000) -> list[tuple[str, dict[str, Any]]]:
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

    def still_in_broker(self, entries: list[tuple[str, dict[str, Any]]]) -> set[str]:
        """The task ids of ``entries`` whose message is still in the broker: in its queue's list (each priority's)
        or in kombu's unacked hash. Looked for in slices of :data:`SCAN_BATCH` (``scripts/outbox_queued.lua``):
        queues first, then the hash, so a message moving from one to the other meanwhile is seen in one of them,
        unless a worker popped it and had not recorded it yet (then it counts as gone: publishing it again is the
        safe side, the claim answers it)."""
        ids = [task_id for task_id, _ in entries]
        if not ids:
            return set()
        queues = {str(entry.get("message", {}).get("routing_key") or DEFAULT_QUEUE) for _, entry in entries}
        lists = [name for queue in sorted(queues)
                 for name in (queue, *(f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS))]
        found: set[str] = set()
        for key in lists:
            found |= self._walk(key, "list", ids)
        return found | self._walk(UNACKED, "hash", ids)

    def _walk(self, key: str, kind: str, ids: list[str]) -> set[str]:
        found: set[str] = set()
        at = "0"
        while True:
            reply = self._queued(keys=[key], args=[kind, at, SCAN_BATCH, *ids])
            at = text(reply[0])
            found.update(text(task_id) for task_id in reply[1:])
            if at == "0":
                return found

    def restamp(self, task_ids: set[str]) -> None:
        """Restart the clock of entries whose message is still in the broker (not published again)."""
        if not task_ids:
            return
        now = server_time(self.redis)
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(self.keys.outbox_ts, dict.fromkeys(task_ids, now), xx=True)
        pipe.hincrby(self.keys.stats, "outbox_still_queued", len(task_ids))
        pipe.execute()

    def republished(self, task_id: str, entry: dict[str, Any]) -> None:
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
