"""One drain of the delivery schedule: take new transitions in as events (:mod:`worker.webhooks.intake`), then POST
what is due, a few at a time, each with its timeouts, until nothing is due or the drain's time is up.

2xx = delivered; anything else (another status, a timeout, a refused connection, a reset) is an attempt that
failed, tried again per WEBHOOK_RETRY_SCHEDULE. The answer's body is never read: a receiver answering garbage
with a 2xx has it; garbage with another status is a failure. Beat starts a drain every WEBHOOK_DRAIN_INTERVAL
(``payments.webhooks.drain`` on the ``webhooks`` queue); one runs at a time (a lock renewed before each batch, so a
drain killed mid-way holds it at most WEBHOOK_TIMEOUT + 5 s), so a slow endpoint holds one worker slot, never a
payment.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import redis
import requests
from cryptography.fernet import Fernet, MultiFernet

from worker.webhooks.deliveries import Claimed, Deliveries
from worker.webhooks.endpoints import Endpoint, Endpoints
from worker.webhooks.intake import Intake
from worker.webhooks.keys import WebhookKeys
from worker.webhooks.settings import WebhookSettings
from worker.webhooks.signing import headers

log = logging.getLogger("payments.webhooks")

USER_AGENT = "payments-worker-webhooks/1"


def redis_clock(client: redis.Redis) -> Callable[[], float]:
    """Redis TIME: the one clock of the schedule, whoever drains it."""
    def now() -> float:
        secs, micros = client.time()
        return int(secs) + int(micros) / 1e6
    return now


@dataclass
class DrainReport:
    events: int = 0
    results: dict[str, int] = field(default_factory=dict)
    skipped: bool = False

    def count(self, result: str) -> None:
        self.results[result] = self.results.get(result, 0) + 1


class Deliverer:
    def __init__(self, client: redis.Redis, settings: WebhookSettings, *, prefix: str = "payments:",
                 clock: Callable[[], float] | None = None, session: requests.Session | None = None,
                 card_keys: Sequence[str] = ()) -> None:
        self.redis = client
        self.settings = settings
        self.keys = WebhookKeys(prefix)
        self.clock = clock or redis_clock(client)
        self.deliveries = Deliveries(client, self.keys)
        cipher = MultiFernet([Fernet(k) for k in card_keys]) if card_keys else None
        self.endpoints = Endpoints(client, self.keys, static_url=settings.url, static_secrets=settings.secrets,
                                   static_events=settings.events, cipher=cipher)
        self.intake = Intake(client, self.keys, self.deliveries, retention=settings.event_retention)
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT

    def drain(self, *, seconds: float | None = None, locked: bool = True) -> DrainReport:
        """Intake, then deliver what is due for up to ``seconds`` (default WEBHOOK_DRAIN_SECONDS)."""
        report = DrainReport()
        budget = self.settings.drain_seconds if seconds is None else seconds
        token = None
        if locked:
            token = _acquire(self.redis, self.keys.lock, self._lock_seconds)
            if token is None:
                report.skipped = True
                return report
        try:
            deadline = time.monotonic() + budget
            now = self.clock()
            self.deliveries.trim(before=now - self.settings.event_retention)
            with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
                while True:
                    if token is not None:
                        _renew(self.redis, self.keys.lock, token, self._lock_seconds)
                    endpoints = {e.id: e for e in self.endpoints.all()}
                    report.events += self.intake.run(list(endpoints.values()), now=self.clock())
                    now = self.clock()
                    claimed = self.deliveries.claim(now=now, until=now + self.settings.claim_seconds,
                                                    limit=self.settings.concurrency * 4)
                    groups = _by_payment(claimed, self.deliveries)
                    for results in pool.map(self._deliver_in_order, groups, [endpoints] * len(groups)):
                        for result in results:
                            report.count(result)
                    if not claimed or time.monotonic() >= deadline:
                        break
        finally:
            if token is not None:
                _release(self.redis, self.keys.lock, token)
        return report

    @property
    def _lock_seconds(self) -> float:
        # One batch's POSTs at most, renewed before each: a drain killed mid-way holds the schedule only this long.
        # Should a batch outlast it, a second drain claims other deliveries: the claims keep them apart.
        return self.settings.timeout + 5.0

    def _deliver_in_order(self, group: list[tuple[Claimed, dict[str, str]]],
                          endpoints: dict[str, Endpoint]) -> list[str]:
        return [self._deliver(claimed, event, endpoints) for claimed, event in group]

    def _deliver(self, claimed: Claimed, event: dict[str, str], endpoints: dict[str, Endpoint]) -> str:
        s = self.settings
        endpoint = endpoints.get(claimed.endpoint_id)
        now = self.clock()
        reason = ("endpoint removed" if endpoint is None else "endpoint disabled" if endpoint.disabled
                  else "event no longer kept" if not event.get("body") else "")
        secrets = endpoint.signing_secrets(now) if endpoint is not None else []
        if not reason and not secrets:
            reason = "endpoint has no secret signing now (or none PAYMENTS_CARD_KEY opens)"
        if reason or endpoint is None:
            outcome, _ = self.deliveries.done(claimed, "abandon", now=now, error=reason, disable_after=s.disable_after,
                                              schedule=s.retry_schedule)
            return outcome
        body = event["body"].encode()
        error = ""
        try:
            signed = headers(secrets, claimed.event_id, int(now), body)
            reply = self.session.post(endpoint.url, data=body, headers=signed, timeout=(s.timeout, s.timeout),
                                      allow_redirects=False, stream=True)
            reply.close()  # the body is never read: only the status says delivered
            if not 200 <= reply.status_code < 300:
                error = f"HTTP {reply.status_code}"
        except requests.RequestException as exc:
            error = type(exc).__name__
        # the attempt's time (one Redis TIME per delivery): a retry is due a delay after it
        outcome, disabled = self.deliveries.done(claimed, "fail" if error else "ok", now=now, error=error,
                                                 disable_after=s.disable_after, schedule=s.retry_schedule)
        if error:
            log.warning("webhook %s to %s: %s (%s)", claimed.event_id, endpoint.id, error, outcome)
        if disabled:
            log.error("webhook endpoint %s disabled: failing for longer than WEBHOOK_DISABLE_AFTER", endpoint.id)
        return outcome


def _by_payment(claimed: list[Claimed], deliveries: Deliveries) -> list[list[tuple[Claimed, dict[str, str]]]]:
    """The claimed deliveries with their events, one group per (payment, endpoint) in sequence order: one payment's
    events due together reach an endpoint one after the other, in order (the sequence number orders the rest)."""
    events = deliveries.events([c.event_id for c in claimed])
    groups: dict[tuple[str, str], list[tuple[Claimed, dict[str, str]]]] = {}
    for c, event in zip(claimed, events, strict=True):
        groups.setdefault((event.get("payment_id", c.event_id), c.endpoint_id), []).append((c, event))
    return [sorted(g, key=lambda pair: int(pair[1].get("sequence") or 0)) for g in groups.values()]


def _acquire(client: redis.Redis, key: str, ttl: float) -> str | None:
    import secrets

    token = secrets.token_hex(16)
    return token if client.set(key, token, nx=True, px=max(1, int(ttl * 1000))) else None


_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"


def _renew(client: redis.Redis, key: str, token: str, ttl: float) -> None:
    client.eval(_RENEW, 1, key, token, max(1, int(ttl * 1000)))


def _release(client: redis.Redis, key: str, token: str) -> None:
    client.eval(_RELEASE, 1, key, token)
