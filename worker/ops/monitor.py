"""One look at the whole system, for the metrics exporter (``worker/ops/exporter.py``) and ``payments status``.

Every read is cheap whatever the store holds (``store.health``: index sizes and first members, small hashes;
the broker: ``LLEN`` of each queue and ``HLEN`` of kombu's ``unacked`` hash). :func:`attention` says what a
human should look at; ``ops/prometheus/alerts.yml`` pages on the same conditions (docs/monitoring.md, "Alerts and
what to do").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.config import Settings

#: kombu's Redis transport: a queue's priority lists are ``<queue>\\x06\\x16<priority>`` (priority 0: the queue).
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)


def broker_queues(app: Any) -> list[str]:
    """The queues payment messages go to: the app's declared queues, or its default one."""
    names = sorted(str(name) for name in (app.amqp.queues or {}))
    return names or [str(app.conf.task_default_queue or "celery")]


def broker_snapshot(client: Any, queues: list[str], *, unacked_key: str = "unacked") -> dict[str, Any]:
    """``{"queues": {name: messages waiting}, "unacked": messages taken by a worker and not acknowledged,
    "memory": Redis's memory use and limits}`` (one round trip)."""
    pipe = client.pipeline(transaction=False)
    for name in queues:
        for pri in PRIORITY_STEPS:
            pipe.llen(f"{name}{PRIORITY_SEP}{pri}" if pri else name)
    pipe.hlen(unacked_key)
    pipe.info("memory")
    replies = pipe.execute()
    per = len(PRIORITY_STEPS)
    waiting = {name: sum(int(n) for n in replies[i * per:(i + 1) * per]) for i, name in enumerate(queues)}
    return {"queues": waiting, "unacked": int(replies[-2]), "memory": redis_memory(replies[-1])}


def redis_memory(info: Any) -> dict[str, int]:
    """What the memory alert compares (INFO memory): ``used``, ``maxmemory`` (0: no limit) and
    ``total_system_memory`` (0 when Redis does not say)."""
    info = info if isinstance(info, dict) else {}

    def number(name: str) -> int:
        try:
            return int(info.get(name) or 0)
        except (TypeError, ValueError):
            return 0

    return {"used": number("used_memory"), "maxmemory": number("maxmemory"),
            "total_system_memory": number("total_system_memory")}


def unacked_key(app: Any) -> str:
    return str((app.conf.broker_transport_options or {}).get("unacked_key") or "unacked")


def snapshot(svc: Any, app: Any) -> dict[str, Any]:
    """The store's health (``store.health.snapshot``, ``merchants``) plus ``broker`` and ``webhooks``: three round
    trips to Redis (four with accounts other than ``default``)."""
    found: dict[str, Any] = svc.store.health.snapshot(stale_auth_age=svc.settings.stale_auth_age)
    # accounts other than default (no round trip without one): their records by status, oldest UNKNOWN / RETRYING
    found["merchants"] = svc.store.health.merchants(getattr(svc.settings, "merchant_names", ()))
    found["broker"] = broker_snapshot(svc.store.redis, broker_queues(app), unacked_key=unacked_key(app))
    found["webhooks"] = webhook_snapshot(svc)
    return found


def webhook_snapshot(svc: Any) -> dict[str, Any]:
    """The webhook schedule's sizes, oldest undelivered age and counters (one round trip, no scan)."""
    from worker.webhooks.deliveries import Deliveries
    from worker.webhooks.keys import WebhookKeys

    keys = WebhookKeys(svc.settings.key_prefix)
    return Deliveries(svc.store.redis, keys).health()


def age(found: dict[str, Any], name: str) -> float | None:
    """Seconds since the oldest member of one index (``unknown``, ``outbox``...), None when it is empty."""
    oldest = found.get(name, {}).get("oldest")
    return None if oldest is None else max(0.0, float(found["now"]) - float(oldest))


@dataclass(frozen=True)
class Thresholds:
    """When something needs a human: the same numbers the alert rules use (from the settings)."""

    unknown_age: float
    outbox_age: float
    sweep_age: float
    stale_auth_age: float

    @classmethod
    def of(cls, settings: Settings) -> Thresholds:
        return cls(unknown_age=2 * settings.reconcile_after, outbox_age=3 * settings.visibility_timeout,
                   sweep_age=3 * settings.sweep_interval,
                   stale_auth_age=settings.stale_auth_age + 3 * settings.sweep_interval)


def attention(found: dict[str, Any], settings: Settings, *, workers: list[str] | None = None,
              gateway_error: str | None = None) -> list[str]:
    """What needs a human now, one sentence each (empty: all is well). ``workers``: the ones that answered a ping
    (None: not asked); ``gateway_error``: why the gateway could not be reached (None: reached or not asked)."""
    limits = Thresholds.of(settings)
    out: list[str] = []
    unknown_age = age(found, "unknown")
    if unknown_age is not None and unknown_age > limits.unknown_age:
        out.append(f"{found['unknown']['count']} UNKNOWN, the oldest for {unknown_age:.0f}s "
                   f"(> 2 x RECONCILE_AFTER = {limits.unknown_age:g}s): money in doubt")
    if found["needs_human"]["count"]:
        out.append(f"{found['needs_human']['count']} records need a human (needs_human)")
    outbox_age = age(found, "outbox")
    if outbox_age is not None and outbox_age > limits.outbox_age:
        out.append(f"outbox: the oldest message is {outbox_age:.0f}s old (> 3 x BROKER_VISIBILITY_TIMEOUT = "
                   f"{limits.outbox_age:g}s): messages lost and not re-published")
    sweep = found.get("sweep")
    if sweep is None:
        out.append("the sweep has never run (is celery beat running?)")
    elif found["now"] - float(sweep.get("finished") or 0) > limits.sweep_age:
        out.append(f"the sweep last ran {found['now'] - float(sweep['finished']):.0f}s ago "
                   f"(> 3 x SWEEP_INTERVAL = {limits.sweep_age:g}s): is celery beat running?")
    auth_age = age(found, "open_auths")
    if auth_age is not None and auth_age > limits.stale_auth_age:
        out.append(f"{found.get('stale_auths', 0)} approved auths older than STALE_AUTH_AGE, the oldest "
                   f"{auth_age:.0f}s: the sweep is not voiding them")
    waiting = sum(found["broker"]["queues"].values()) if "broker" in found else 0
    if workers is not None and not workers:
        out.append(f"no worker answers a ping ({waiting} messages waiting)")
    if gateway_error is not None:
        out.append(f"the gateway cannot be reached: {gateway_error}")
    failed_hooks = (found.get("webhooks") or {}).get("failed", 0)
    if failed_hooks:
        out.append(f"{failed_hooks} webhook deliveries failed for good (payments webhooks failed; replay them)")
    return out
