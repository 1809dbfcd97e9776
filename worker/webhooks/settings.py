"""The webhook settings, read from the environment (durations as in ``worker.config``: ``90``, ``5m``, ``10h``).

Kept beside the wing rather than in ``worker.config.Settings``: nothing on the payment path reads them (beat's
WEBHOOK_DRAIN_INTERVAL is there: ``Settings.webhook_drain_interval``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from worker.config import ConfigError, parse_duration

#: Svix's schedule: after the first attempt, retries 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h later (8 attempts,
#: about 27 h in all).
DEFAULT_RETRY_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
DEFAULT_DISABLE_AFTER = 5 * 86400.0


def parse_schedule(text: str) -> tuple[float, ...]:
    """``"5s, 5m, 30m"`` -> ``(5.0, 300.0, 1800.0)``; every delay more than 0, at least one."""
    parts = [p for p in (s.strip() for s in text.split(",")) if p]
    if not parts:
        raise ConfigError("WEBHOOK_RETRY_SCHEDULE: give at least one delay (comma-separated durations)")
    delays = tuple(parse_duration(p, name="WEBHOOK_RETRY_SCHEDULE") for p in parts)
    if any(d <= 0 for d in delays):
        raise ConfigError("WEBHOOK_RETRY_SCHEDULE: every delay must be more than 0")
    return delays


@dataclass(frozen=True)
class WebhookSettings:
    #: PAYMENTS_WEBHOOK_URL / PAYMENTS_WEBHOOK_SECRET: the one static endpoint ("" = none). The secret may hold two
    #: secrets separated by a space or a comma during a rotation: both sign every delivery.
    url: str = ""
    secrets: tuple[str, ...] = field(default=(), repr=False)
    #: PAYMENTS_WEBHOOK_EVENTS: event types the static endpoint gets (empty: all).
    events: tuple[str, ...] = ()
    retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    disable_after: float = DEFAULT_DISABLE_AFTER
    #: One POST's connect and read timeouts (WEBHOOK_TIMEOUT: both).
    timeout: float = 10.0
    #: How long events are kept for replay (WEBHOOK_EVENT_RETENTION): past the retry schedule's ~27 h.
    event_retention: float = 3 * 86400.0
    #: Concurrent POSTs of one drain (WEBHOOK_CONCURRENCY), and how long one drain runs at most (WEBHOOK_DRAIN_SECONDS).
    concurrency: int = 8
    drain_seconds: float = 20.0

    @property
    def claim_seconds(self) -> float:
        """How long a claimed delivery stays out of the schedule: past one POST; after it, it is due again (the
        drain that claimed it died)."""
        return 2 * self.timeout + 30.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> WebhookSettings:
        env = dict(os.environ if env is None else env)

        def get(name: str) -> str:
            return env.get(name, "").strip()

        def dur(name: str, default: float) -> float:
            return parse_duration(get(name), name=name) if get(name) else default

        url, secret = get("PAYMENTS_WEBHOOK_URL"), get("PAYMENTS_WEBHOOK_SECRET")
        secrets = tuple(s for s in secret.replace(",", " ").split() if s)
        if url and not secrets:
            raise ConfigError("PAYMENTS_WEBHOOK_URL is set without PAYMENTS_WEBHOOK_SECRET (whsec_...)")
        from worker.webhooks.signing import check_secret

        for s in secrets:
            check_secret(s, "PAYMENTS_WEBHOOK_SECRET")
        from worker.webhooks.endpoints import check_events, check_url

        if url:
            check_url(url, "PAYMENTS_WEBHOOK_URL")
        try:
            concurrency = int(get("WEBHOOK_CONCURRENCY") or 8)
        except ValueError:
            raise ConfigError("WEBHOOK_CONCURRENCY is not a whole number") from None
        settings = cls(
            url=url, secrets=secrets,
            events=check_events(get("PAYMENTS_WEBHOOK_EVENTS").replace(",", " ").split()),
            retry_schedule=parse_schedule(get("WEBHOOK_RETRY_SCHEDULE")) if get("WEBHOOK_RETRY_SCHEDULE")
            else DEFAULT_RETRY_SCHEDULE,
            disable_after=dur("WEBHOOK_DISABLE_AFTER", DEFAULT_DISABLE_AFTER),
            timeout=dur("WEBHOOK_TIMEOUT", 10.0),
            event_retention=dur("WEBHOOK_EVENT_RETENTION", 3 * 86400.0),
            concurrency=concurrency,
            drain_seconds=dur("WEBHOOK_DRAIN_SECONDS", 20.0),
        )
        if settings.event_retention < sum(settings.retry_schedule) + 3600:
            raise ConfigError("WEBHOOK_EVENT_RETENTION must outlast WEBHOOK_RETRY_SCHEDULE by an hour at least")
        if settings.timeout <= 0 or settings.concurrency < 1:
            raise ConfigError("WEBHOOK_TIMEOUT must be more than 0, WEBHOOK_CONCURRENCY at least 1")
        return settings
