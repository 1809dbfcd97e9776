"""``payments metrics --port P``: the store's and the broker's gauges for Prometheus, from one process.

A custom collector (prometheus-client): each scrape reads :func:`worker.ops.monitor.snapshot` (two round trips to
Redis, no key scans) and reports::

    payments_records{status}                          records in the store by status
    payments_merchant_records{merchant,status}        the same of each account other than default (default's:
                                                      payments_records minus their sum), every status
    payments_merchant_{unknown,retrying}_oldest_age_seconds{merchant}   the ages below, of each of those accounts
    payments_unknown_oldest_age_seconds               age of the oldest UNKNOWN (0: none); count: payments_records
    payments_retrying_oldest_age_seconds              the same for RETRYING
    payments_needs_human, payments_needs_human_oldest_age_seconds
    payments_non_final_oldest_age_seconds             the longest an operation has waited since its last change
    payments_outbox_size, payments_outbox_oldest_age_seconds
    payments_outbox_republished_total, payments_outbox_given_up_total
    payments_queue_length{queue}, payments_queue_unacked
    payments_redis_used_memory_bytes, payments_redis_maxmemory_bytes (0: no limit),
    payments_redis_total_system_memory_bytes     Redis's INFO memory (the memory alert: noeviction refuses writes)
    payments_open_auths, payments_open_auth_oldest_age_seconds, payments_stale_auths (older than STALE_AUTH_AGE)
    payments_sweep_last_run_timestamp_seconds (0: never), payments_sweep_last_duration_seconds,
    payments_sweep_last_actions{action}               what the last sweep did (reconcile_adopted, outbox_republished...)
    payments_config_{reconcile_after,visibility_timeout,sweep_interval,stale_auth_age}_seconds  (for the alerts)
    payments_gateway_breaker_state{merchant}          the shared circuit breaker (GATEWAY_BREAKER_FAILURES > 0):
                                                      0 closed, 1 half-open, 2 open; and
                                                      payments_gateway_breaker_opened_total{merchant}
    payments_gateway_in_flight{merchant}              the bulkhead (GATEWAY_MAX_IN_FLIGHT > 0): requests in flight now,
                                                      and payments_gateway_max_in_flight{merchant} (the cap)
    payments_webhook_deliveries_total{result}         webhook attempts by result: delivered, failed_attempt (tried
                                                      again later), exhausted (the last attempt failed), abandoned
                                                      (endpoint removed or disabled)
    payments_webhook_events_total, payments_webhook_endpoints_disabled_total (by WEBHOOK_DISABLE_AFTER)
    payments_webhook_undelivered, payments_webhook_oldest_undelivered_age_seconds, payments_webhook_failed
                                                      (the failed set's size: until replayed)
    payments_webhook_intake_lag                       transitions the webhook intake has not read yet
    payments_exporter_redis_up, payments_exporter_scrape_seconds

Ages use Redis server time. Labels are bounded: statuses, queue names, the sweep's action words.
"""
from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from worker.ops.monitor import age, snapshot
from worker.states import Status

log = logging.getLogger("payments.exporter")
_ACTION = re.compile(r"^[a-z][a-z0-9_]{0,60}$")
_NOT_ACTIONS = frozenset({"ran", "started", "finished", "seconds", "reason"})


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _merchant_families(found: dict[str, Any]) -> Iterator[Metric]:
    """Records by status and the oldest UNKNOWN / RETRYING of each account other than ``default`` (the store's
    per-account counts; ``default`` is what payments_records has more)."""
    merchants: dict[str, dict[str, Any]] = found.get("merchants") or {}
    records = GaugeMetricFamily("payments_merchant_records", "Records in the store by status, of one merchant account "
                                "other than default", labels=["merchant", "status"])
    ages = {name: GaugeMetricFamily(f"payments_merchant_{name}_oldest_age_seconds", f"Age of one merchant account's "
                                    f"oldest {name.upper()} record since its creation (0: none)", labels=["merchant"])
            for name in ("unknown", "retrying")}
    for merchant, entry in sorted(merchants.items()):
        for status in Status:
            records.add_metric([merchant, status.value], entry["by_status"].get(status.value, 0))
        for name, family in ages.items():
            oldest = entry[name]["oldest"]
            family.add_metric([merchant], 0.0 if oldest is None else max(0.0, float(found["now"]) - float(oldest)))
    yield records
    yield from ages.values()


class PaymentsCollector:
    """``read``: what one scrape looks at (default: :func:`worker.ops.monitor.snapshot` of ``svc`` and ``app``)."""

    def __init__(self, svc: Any, app: Any, read: Callable[[], dict[str, Any]] | None = None) -> None:
        self.svc = svc
        self.app = app
        self.read = read or (lambda: snapshot(svc, app))

    def describe(self) -> list[Metric]:
        return []  # collected on each scrape only (registering must not read Redis)

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        try:
            found = self.read()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("scrape: Redis unavailable: %s", type(exc).__name__)
            yield _gauge("payments_exporter_redis_up", "Whether the last scrape could read Redis", 0)
            return
        yield from self._families(found)
        yield from _merchant_families(found)
        yield from self._breaker()
        yield from self._in_flight()
        yield _gauge("payments_exporter_redis_up", "Whether the last scrape could read Redis", 1)
        yield _gauge("payments_exporter_scrape_seconds", "How long reading Redis took in this scrape",
                     time.perf_counter() - started)

    def _families(self, found: dict[str, Any]) -> Iterator[Metric]:
        s = self.svc.settings
        records = GaugeMetricFamily("payments_records", "Records in the store by status", labels=["status"])
        by_status = found["by_status"]
        for status in Status:
            records.add_metric([status.value], by_status.get(status.value, 0))
        yield records
        for name, what in (("unknown", "UNKNOWN"), ("retrying", "RETRYING")):
            yield _gauge(f"payments_{name}_oldest_age_seconds", f"Age of the oldest {what} record since its creation "
                         "(0: none)", age(found, name) or 0.0)
        yield _gauge("payments_needs_human", "Records a human must look at", found["needs_human"]["count"])
        yield _gauge("payments_needs_human_oldest_age_seconds", "Since the oldest needs_human record was last changed",
                     age(found, "needs_human") or 0.0)
        yield _gauge("payments_non_final_oldest_age_seconds", "Longest wait of a non-final record since its last "
                     "change (0: none)", age(found, "non_final") or 0.0)
        yield _gauge("payments_outbox_size", "Published payment messages no worker has claimed yet",
                     found["outbox"]["count"])
        yield _gauge("payments_outbox_oldest_age_seconds",
                     "Age of the oldest outbox entry, from the sweep that first saw it (0: none)",
                     age(found, "outbox") or 0.0)
        stats = found["stats"]
        yield CounterMetricFamily("payments_outbox_republished", "Outbox messages the sweep published again",
                                  value=stats.get("outbox_republished", 0))
        yield CounterMetricFamily("payments_outbox_given_up", "Outbox messages given up for a human",
                                  value=stats.get("outbox_given_up", 0))
        queues = GaugeMetricFamily("payments_queue_length", "Messages waiting in a broker queue", labels=["queue"])
        for name, count in found["broker"]["queues"].items():
            queues.add_metric([name], count)
        yield queues
        yield _gauge("payments_queue_unacked", "Messages taken by workers and not yet acknowledged",
                     found["broker"]["unacked"])
        yield from self._memory(found["broker"].get("memory") or {})
        yield _gauge("payments_open_auths", "Approved auths neither captured nor voided", found["open_auths"]["count"])
        yield _gauge("payments_open_auth_oldest_age_seconds", "Age of the oldest open auth (0: none)",
                     age(found, "open_auths") or 0.0)
        yield _gauge("payments_stale_auths", "Open auths older than STALE_AUTH_AGE", found.get("stale_auths", 0))
        yield from self._sweep(found.get("sweep"))
        yield from _webhooks(found.get("webhooks") or {})
        for name, value in (("reconcile_after", s.reconcile_after), ("visibility_timeout", s.visibility_timeout),
                            ("sweep_interval", s.sweep_interval), ("stale_auth_age", s.stale_auth_age)):
            yield _gauge(f"payments_config_{name}_seconds", f"The {name.upper()} setting (alert thresholds)", value)

    def _breaker(self) -> Iterator[Metric]:
        """The circuit breaker of every merchant account that has one (worker/guard/): 0 closed, 1 half-open, 2 open."""
        s = self.svc.settings
        names = getattr(s, "merchant_names", ("default",))
        on = [name for name in names if s.account(name).guard.breaker_failures] if hasattr(s, "account") else (
            ["default"] if s.guard.breaker_failures else [])
        if not on:
            return
        from worker.guard import breaker_state

        gauge = GaugeMetricFamily("payments_gateway_breaker_state", "The gateway circuit breaker: 0 closed, "
                                  "1 half-open, 2 open (nothing is sent)", labels=["merchant"])
        opened = CounterMetricFamily("payments_gateway_breaker_opened", "Times the breaker opened",
                                     labels=["merchant"])
        for name in on:
            state = breaker_state(self.svc.redis, prefix=s.key_prefix, merchant=name)
            gauge.add_metric([state.merchant], {"closed": 0, "half_open": 1, "open": 2}[state.state])
            opened.add_metric([state.merchant], state.opened)
        yield gauge
        yield opened

    def _in_flight(self) -> Iterator[Metric]:
        """The bulkhead (GATEWAY_MAX_IN_FLIGHT): each capped merchant's gateway requests in flight now, and its cap."""
        s = self.svc.settings
        names = getattr(s, "merchant_names", ("default",))
        capped = [s.account(name) for name in names if s.account(name).guard.max_in_flight] if hasattr(
            s, "account") else []
        if not capped:
            return
        from worker.guard import in_flight

        now = GaugeMetricFamily("payments_gateway_in_flight", "Gateway requests in flight (the bulkhead's count)",
                                labels=["merchant"])
        cap = GaugeMetricFamily("payments_gateway_max_in_flight", "The bulkhead's cap (GATEWAY_MAX_IN_FLIGHT)",
                                labels=["merchant"])
        for account in capped:
            now.add_metric([account.name], in_flight(self.svc.redis, prefix=s.key_prefix, merchant=account.name))
            cap.add_metric([account.name], account.guard.max_in_flight)
        yield now
        yield cap

    def _memory(self, memory: dict[str, int]) -> Iterator[Metric]:
        # noeviction: at maxmemory Redis refuses writes and every payment stops (the alert watches the ratio)
        yield _gauge("payments_redis_used_memory_bytes", "Redis used_memory (INFO memory)", memory.get("used", 0))
        yield _gauge("payments_redis_maxmemory_bytes", "Redis maxmemory (0: no limit set)", memory.get("maxmemory", 0))
        yield _gauge("payments_redis_total_system_memory_bytes", "The memory of Redis's host (INFO memory; 0: unknown)",
                     memory.get("total_system_memory", 0))

    def _sweep(self, sweep: dict[str, Any] | None) -> Iterator[Metric]:
        sweep = sweep or {}
        yield _gauge("payments_sweep_last_run_timestamp_seconds", "When the last sweep ended (0: never)",
                     float(sweep.get("finished") or 0))
        yield _gauge("payments_sweep_last_duration_seconds", "How long the last sweep took",
                     float(sweep.get("seconds") or 0))
        actions = GaugeMetricFamily("payments_sweep_last_actions", "What the last sweep did, by action",
                                    labels=["action"])
        for action, count in sorted(sweep.items()):
            if action not in _NOT_ACTIONS and _ACTION.match(action) and isinstance(count, int):
                actions.add_metric([action], count)
        yield actions


#: the webhook counters' names in the schedule's stats hash -> the result label
_WEBHOOK_RESULTS = {"delivered": "delivered", "failed_attempts": "failed_attempt", "exhausted": "exhausted",
                    "abandoned": "abandoned"}


def _webhooks(hooks: dict[str, Any]) -> Iterator[Metric]:
    stats = hooks.get("stats") or {}
    deliveries = CounterMetricFamily("payments_webhook_deliveries", "Webhook delivery attempts by result",
                                     labels=["result"])
    for name, label in _WEBHOOK_RESULTS.items():
        deliveries.add_metric([label], stats.get(name, 0))
    yield deliveries
    yield CounterMetricFamily("payments_webhook_events", "Webhook events recorded", value=stats.get("events", 0))
    yield CounterMetricFamily("payments_webhook_endpoints_disabled", "Endpoints disabled by WEBHOOK_DISABLE_AFTER",
                              value=stats.get("endpoints_disabled", 0))
    yield _gauge("payments_webhook_undelivered", "Webhook deliveries not yet made", hooks.get("undelivered", 0))
    yield _gauge("payments_webhook_oldest_undelivered_age_seconds", "Age of the oldest undelivered webhook event "
                 "(0: none)", hooks.get("oldest_undelivered_age", 0.0))
    yield _gauge("payments_webhook_failed", "Webhook deliveries given up (the failed set, until replayed)",
                 hooks.get("failed", 0))
    yield _gauge("payments_webhook_intake_lag", "Transitions in the audit stream the webhook intake has not read yet",
                 hooks.get("intake_lag", 0))


def registry_for(svc: Any, app: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PaymentsCollector(svc, app))
    return registry


def exposition(svc: Any, app: Any) -> str:
    """One scrape's text (``payments metrics --once``)."""
    return generate_latest(registry_for(svc, app)).decode()


def serve(svc: Any, app: Any, *, port: int, host: str = "0.0.0.0") -> int:
    """Serve until SIGTERM or Ctrl-C."""
    server, _thread = start_http_server(port, addr=host, registry=registry_for(svc, app))
    print(f"payments metrics: serving http://{host}:{port}/metrics", flush=True)
    stopped = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        while not stopped.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return 0
