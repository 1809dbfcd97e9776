"""Events from the store's audit stream: a consumer group (``webhooks``) reads each transition the store's Lua wrote
(atomically with the transition itself), turns the ones a merchant is told of into events and schedules their
deliveries, then acknowledges the entries.

Crash safety: an entry is acknowledged only after its event is recorded; an entry read by a process that died
stays pending in the group and is claimed by the next drain after :data:`RECLAIM_AFTER`; recording is idempotent
(the event id is the entry's stream id), so an entry read twice makes one event. The group starts
:data:`START_BACK` before its creation (the first drain), so a fresh deployment's first payments are not missed and an
upgrade does not replay the whole history; the same holds when no process with an endpoint read it for
WEBHOOK_EVENT_RETENTION (:meth:`Intake.run`).
"""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from typing import Any

import redis

from worker.webhooks.deliveries import SEQUENCE_MARK, Deliveries
from worker.webhooks.endpoints import Endpoint
from worker.webhooks.events import event_body, event_data, event_id, event_type
from worker.webhooks.keys import GROUP, WebhookKeys

log = logging.getLogger("payments.webhooks")

RECLAIM_AFTER = 60.0
START_BACK = 600.0
BATCH = 200


def consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _stream_seconds(stream_id: str) -> float:
    return int(stream_id.split("-", 1)[0]) / 1000.0


class Intake:
    def __init__(self, client: redis.Redis, keys: WebhookKeys, deliveries: Deliveries, *, retention: float,
                 consumer: str | None = None, reclaim_after: float = RECLAIM_AFTER) -> None:
        self.redis = client
        self.keys = keys
        self.deliveries = deliveries
        self.retention = retention
        self.consumer = consumer or consumer_name()
        self.reclaim_after = reclaim_after

    def ensure_group(self, now: float) -> bool:
        """Create the consumer group if there is none (True: created now)."""
        start = f"{int((now - START_BACK) * 1000)}-0"
        try:
            self.redis.xgroup_create(self.keys.audit, GROUP, id=start, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise
        return True

    def run(self, endpoints: Sequence[Endpoint], *, now: float, batches: int = 10) -> int:
        """Read up to ``batches`` batches of new transitions (and those a dead reader left); events recorded.

        With no endpoint this process knows of, nothing is read: the entries wait for a process that has one (a worker
        started without the webhook settings never swallows another's events). A group nobody with an endpoint read
        for WEBHOOK_EVENT_RETENTION starts again :data:`START_BACK` before now: a first endpoint, or one set again after
        days, is told of recent payments, not of the whole audit history."""
        if not endpoints:
            return 0
        created = self.ensure_group(now)
        seen = self.redis.get(self.keys.intake_seen)
        if not created and (seen is None or now - float(seen) > self.retention):
            self.redis.xgroup_setid(self.keys.audit, GROUP, f"{int((now - START_BACK) * 1000)}-0")
        self.redis.set(self.keys.intake_seen, repr(now))
        recorded = 0
        left = self._reclaim()
        for _ in range(batches):
            entries = left or self._read()
            left = []
            if not entries:
                break
            recorded += self._take(entries, endpoints, now=now)
        return recorded

    def _reclaim(self) -> list[tuple[str, dict[str, str]]]:
        reply: Any = self.redis.xautoclaim(self.keys.audit, GROUP, self.consumer, int(self.reclaim_after * 1000),
                                           start_id="0-0", count=BATCH)
        return [(i, f) for i, f in reply[1] if f]

    def _read(self) -> list[tuple[str, dict[str, str]]]:
        try:
            reply: Any = self.redis.xreadgroup(GROUP, self.consumer, {self.keys.audit: ">"}, count=BATCH)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            return []
        if isinstance(reply, dict):  # RESP3
            reply = list(reply.items())
        return [(i, f) for _stream, rows in (reply or []) for i, f in rows if f]

    def _take(self, entries: list[tuple[str, dict[str, str]]], endpoints: Sequence[Endpoint], *, now: float) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for _, fields in entries:
            pipe.hgetall(self.keys.prefix + "op:" + fields.get("payment_id", ""))
        records = pipe.execute()
        recorded = 0
        for (stream_id, fields), record in zip(entries, records, strict=True):
            kind = event_type(fields, needs_human=(record or {}).get("needs_human") == "1")
            if kind is None:
                continue
            data = event_data(fields, record or None)
            body = event_body(kind, fields.get("at", ""), data, -1)
            wanted = [e.id for e in endpoints if not e.disabled and e.wants(kind)]
            assert SEQUENCE_MARK in body
            if self.deliveries.record(event_id=event_id(stream_id), kind=kind, payment_id=fields.get("payment_id", ""),
                                      ts=_stream_seconds(stream_id), body=body, endpoint_ids=wanted,
                                      retention=self.retention, now=now):
                recorded += 1
        self.redis.xack(self.keys.audit, GROUP, *[i for i, _ in entries])
        return recorded

    def forget_idle_consumers(self, *, idle_seconds: float = 3600.0) -> int:
        """Drop readers gone for good (a process per consumer name): none with entries still pending."""
        dropped = 0
        try:
            consumers = self.redis.xinfo_consumers(self.keys.audit, GROUP)
        except redis.ResponseError:
            return 0
        for c in consumers:
            if int(c.get("pending", 0)) == 0 and int(c.get("idle", 0)) > idle_seconds * 1000 \
                    and c.get("name") != self.consumer:
                self.redis.xgroup_delconsumer(self.keys.audit, GROUP, c["name"])
                dropped += 1
        return dropped
