"""The delivery schedule in Redis: events, the deliveries due (a sorted set by due time), the failed set, counters.

A delivery is one (event, endpoint) pair, named ``"<event id> <endpoint id>"``. Its life, one script per step
(:mod:`worker.webhooks.scripts`): recorded with its event (due now) -> claimed by a drain (pushed out by the claim's
length) -> delivered, or due again after the next delay of WEBHOOK_RETRY_SCHEDULE, or, after the last attempt, in
the failed set (``payments webhooks replay`` sends it again).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from worker.webhooks import scripts
from worker.webhooks.keys import GROUP, WebhookKeys

#: The marker the body is split at, so that Lua puts the payment's next sequence number in its place.
SEQUENCE_MARK = '"sequence":-1'


@dataclass(frozen=True)
class Claimed:
    member: str
    score: str

    @property
    def event_id(self) -> str:
        return self.member.split(" ", 1)[0]

    @property
    def endpoint_id(self) -> str:
        return self.member.split(" ", 1)[1]


class Deliveries:
    def __init__(self, client: redis.Redis, keys: WebhookKeys) -> None:
        self.redis = client
        self.keys = keys
        self._record = client.register_script(scripts.RECORD)
        self._claim = client.register_script(scripts.CLAIM)
        self._done = client.register_script(scripts.DONE)

    def record(self, *, event_id: str, kind: str, payment_id: str, ts: float, body: str, endpoint_ids: Sequence[str],
               retention: float, now: float) -> int:
        """Record the event (``body`` holds :data:`SEQUENCE_MARK` once) and its deliveries; its sequence number, or 0
        when it was recorded before (nothing changes)."""
        before, mark, after = body.partition(SEQUENCE_MARK)
        if not mark:
            raise ValueError("the body has no sequence mark")
        k = self.keys
        return int(self._record(
            keys=[k.event(event_id), k.sequence(payment_id), k.events, k.due, k.pending, k.stats],
            args=[event_id, kind, payment_id, repr(ts), before + '"sequence":', after, int(retention), repr(now),
                  *endpoint_ids]))

    def claim(self, *, now: float, until: float, limit: int) -> list[Claimed]:
        flat = self._claim(keys=[self.keys.due], args=[repr(now), repr(until), limit])
        return [Claimed(str(flat[i]), str(flat[i + 1])) for i in range(0, len(flat), 2)]

    def done(self, claimed: Claimed, result: str, *, now: float, error: str = "", disable_after: float,
             schedule: Sequence[float]) -> tuple[str, bool]:
        """``result``: ok, fail or abandon. Returns what became of it and whether its endpoint was disabled now."""
        k = self.keys
        outcome, disabled = self._done(
            keys=[k.due, k.pending, k.attempts, k.failed, k.failed_why, k.stats, k.state(claimed.endpoint_id)],
            args=[claimed.member, claimed.score, result, repr(now), error[:300], repr(disable_after),
                  *(repr(float(d)) for d in schedule)])
        return str(outcome), bool(int(disabled))

    def event(self, event_id: str) -> dict[str, str]:
        return {str(a): str(b) for a, b in self.redis.hgetall(self.keys.event(event_id)).items()}

    def events(self, event_ids: Sequence[str]) -> list[dict[str, str]]:
        """Several events in one round trip ({} for one no longer kept)."""
        pipe = self.redis.pipeline(transaction=False)
        for event_id in event_ids:
            pipe.hgetall(self.keys.event(event_id))
        return [{str(a): str(b) for a, b in found.items()} for found in pipe.execute()]

    def events_since(self, since: float, *, limit: int = 100_000) -> list[str]:
        return [str(m) for m in self.redis.zrangebyscore(self.keys.events, since, "+inf", start=0, num=limit)]

    def replay(self, event_id: str, endpoint_ids: Sequence[str], *, now: float) -> int:
        """Send ``event_id`` again to ``endpoint_ids`` (due now, a fresh count of attempts, out of the failed set);
        how many deliveries were scheduled (0: the event is not kept any more)."""
        event = self.event(event_id)
        if not event or not endpoint_ids:
            return 0
        k = self.keys
        pipe = self.redis.pipeline(transaction=True)
        for endpoint_id in endpoint_ids:
            member = f"{event_id} {endpoint_id}"
            pipe.zadd(k.due, {member: now})
            pipe.zadd(k.pending, {member: float(event.get("ts") or now)}, nx=True)
            pipe.hdel(k.attempts, member)
            pipe.zrem(k.failed, member)
            pipe.hdel(k.failed_why, member)
        pipe.hincrby(k.stats, "replayed", len(endpoint_ids))
        pipe.execute()
        return len(endpoint_ids)

    def failed(self, *, limit: int = 100) -> list[dict[str, Any]]:
        k = self.keys
        rows: Any = self.redis.zrange(k.failed, 0, limit - 1, withscores=True)
        members = [(str(m), float(s)) for m, s in rows]
        why = self.redis.hmget(k.failed_why, [m for m, _ in members]) if members else []
        return [{"event_id": m.split(" ", 1)[0], "endpoint_id": m.split(" ", 1)[1], "at": s, "error": w or ""}
                for (m, s), w in zip(members, why, strict=True)]

    def of_event(self, event_id: str, endpoint_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Where each of ``endpoint_ids``' delivery of ``event_id`` stands (the operator console's payment page):
        ``pending`` (with its failed attempts so far), ``failed`` (given up, and why) or ``delivered``; an event no
        longer kept (past WEBHOOK_EVENT_RETENTION) gives []. One round trip."""
        k = self.keys
        members = [f"{event_id} {e}" for e in endpoint_ids]
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(k.event(event_id))
        for m in members:
            pipe.zscore(k.pending, m)
            pipe.zscore(k.failed, m)
            pipe.hget(k.attempts, m)
            pipe.hget(k.failed_why, m)
        kept, *rest = pipe.execute()
        if not kept:
            return []
        out = []
        for i, endpoint_id in enumerate(endpoint_ids):
            pending, failed, attempts, why = rest[4 * i:4 * i + 4]
            state = "failed" if failed is not None else "pending" if pending is not None else "delivered"
            out.append({"event_id": event_id, "endpoint_id": endpoint_id, "state": state,
                        "failed_attempts": int(attempts or 0), "error": str(why or "")})
        return out

    def clear_failed(self) -> int:
        """Forget every failed delivery (an operator decided not to send them); how many."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zcard(self.keys.failed)
        pipe.delete(self.keys.failed, self.keys.failed_why)
        return int(pipe.execute()[0])

    def trim(self, *, before: float) -> int:
        """Forget the replay index of events older than ``before`` (their bodies expire by themselves)."""
        return int(self.redis.zremrangebyscore(self.keys.events, "-inf", f"({before!r}"))

    def health(self) -> dict[str, Any]:
        """What the exporter and ``payments webhooks list`` read: one round trip, no scan."""
        k = self.keys
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(k.pending)
        pipe.zrange(k.pending, 0, 0, withscores=True)
        pipe.zcard(k.failed)
        pipe.hgetall(k.stats)
        pipe.time()
        pipe.xinfo_groups(k.audit)
        pending, oldest, failed, stats, (secs, micros), groups = pipe.execute(raise_on_error=False)
        now = int(secs) + int(micros) / 1e6
        # Transitions the intake has not read yet (XINFO GROUPS' lag; 0 without the group: webhooks never used).
        group = next((g for g in groups if g.get("name") == GROUP), None) if isinstance(groups, list) else None
        return {"undelivered": int(pending), "oldest_undelivered_age": max(0.0, now - oldest[0][1]) if oldest else 0.0,
                "failed": int(failed), "stats": {str(a): int(b) for a, b in stats.items()},
                "intake_lag": int((group or {}).get("lag") or 0)}
