"""The exporter's families from a snapshot of the in-memory store (no Redis), and the metric names the alert rules
and the Grafana dashboard use: each is one the workers or the exporter serve, and each dashboard query parses
(promtool, through a throw-away rules file; skipped without it)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import types
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from tests.support.redis_store import StoreUnderTest, new_store
from worker.config import Settings
from worker.guard import GuardSettings
from worker.ops.exporter import PaymentsCollector
from worker.ops.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
# the breaker off (it is on by default): these snapshots have no Redis for its gauge to read (breaker_text has one)
SETTINGS = Settings(reconcile_after=600, sweep_interval=300, guard=GuardSettings(breaker_failures=0))
PROMTOOL = shutil.which("promtool") or ""


def exported_text(store: StoreUnderTest, broker: dict) -> str:
    def read() -> dict:
        return dict(store.health.snapshot(stale_auth_age=SETTINGS.stale_auth_age), broker=broker)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(PaymentsCollector(types.SimpleNamespace(settings=SETTINGS), None, read=read))
    return generate_latest(registry).decode()


def worker_text() -> str:
    registry = CollectorRegistry()
    m = WorkerMetrics(registry)
    m.outcome("sale", "APPROVED", "3.00")
    m.parked("sale", "UNKNOWN")
    m.request("bp10emu", "approved", 0.1)
    m.retry("ConnectTimeout")
    m.reconciliation("found")
    m.in_flight("sale", 1)
    return generate_latest(registry).decode()


def names(text: str) -> set[str]:
    """Sample names, and the families declared (``# TYPE``: a family may have no sample yet)."""
    samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    return samples | {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def test_the_exporter_reports_the_stores_counts_ages_and_the_broker():
    store = new_store()
    clock = store.clock
    store.claim("u1", "sale", owner="w", lease_seconds=30, fields={"amount": "3.00"})
    store.transition("u1", "UNKNOWN", owner="w")
    store.outbox.put("t1", {"name": "payments.sale"})
    store.outbox.stale(3600)  # a sweep sees the entry: its age starts
    clock.advance(90)
    store.health.record_sweep({"ran": True, "reconcile_still_unknown": 1, "reason": "x"}, started=clock() - 2)
    text = exported_text(store, {"queues": {"celery": 4}, "unacked": 2})
    for line in ('payments_records{status="UNKNOWN"} 1.0', 'payments_records{status="APPROVED"} 0.0',
                 "payments_unknown_oldest_age_seconds 90.0", "payments_outbox_size 1.0",
                 "payments_outbox_oldest_age_seconds 90.0", 'payments_queue_length{queue="celery"} 4.0',
                 "payments_queue_unacked 2.0", 'payments_sweep_last_actions{action="reconcile_still_unknown"} 1.0',
                 "payments_sweep_last_duration_seconds 2.0", "payments_config_reconcile_after_seconds 600.0"):
        assert line in text, line
    assert 'action="ran"' not in text and 'action="reason"' not in text


def test_the_exporter_reports_each_other_accounts_records_and_oldest_in_doubt():
    store = new_store()
    store.claim("d1", "sale", owner="w", lease_seconds=30, fields={"amount": "3.00"})
    store.transition("d1", "UNKNOWN", owner="w")
    store.claim("s1", "sale", owner="w", lease_seconds=30, fields={"amount": "3.00", "merchant": "shop2"})
    store.transition("s1", "UNKNOWN", owner="w")
    store.clock.advance(30)

    def read() -> dict:
        found = store.health.snapshot()
        return dict(found, broker={"queues": {}, "unacked": 0},
                    merchants=store.health.merchants(["default", "shop2", "shop3"]))

    registry = CollectorRegistry(auto_describe=False)
    registry.register(PaymentsCollector(types.SimpleNamespace(settings=SETTINGS), None, read=read))
    text = generate_latest(registry).decode()
    for line in ('payments_records{status="UNKNOWN"} 2.0',  # every account, as before
                 'payments_merchant_records{merchant="shop2",status="UNKNOWN"} 1.0',
                 'payments_merchant_records{merchant="shop3",status="UNKNOWN"} 0.0',
                 'payments_merchant_unknown_oldest_age_seconds{merchant="shop2"} 30.0',
                 'payments_merchant_retrying_oldest_age_seconds{merchant="shop2"} 0.0'):
        assert line in text, line
    assert 'merchant="default"' not in text  # default's: payments_records minus the others'


def referenced(text: str) -> set[str]:
    return {name for name in re.findall(r"\bpayments_[a-z_]+\b", text) if not name.endswith("_")}


def retention_counters() -> set[str]:
    """The counters the sweep's retention step declares itself (worker/archive/retention.py's ``_count``)."""
    source = (ROOT / "worker" / "archive" / "retention.py").read_text()
    return {f"{name}_total" for name in re.findall(r'_count\("(payments_[a-z_]+)"', source)}


def served() -> set[str]:
    exported = names(exported_text(new_store(), {"queues": {"celery": 0}, "unacked": 0}))
    return exported | names(worker_text()) | names(breaker_text()) | names(in_flight_text()) | retention_counters()


class OpenBreakerRedis:
    """The two reads the breaker gauge makes (worker/guard/shared.py: breaker_state), of a breaker open 10 s more."""

    def hmget(self, key: str, *fields: str) -> list[str]:
        assert key == "payments:guard:default:breaker" and fields == ("state", "failures", "open_until", "opened")
        return ["open", "5", "1010.0", "3"]

    def time(self) -> tuple[int, int]:
        return 1000, 0


def breaker_text() -> str:
    settings = Settings(guard=GuardSettings(breaker_failures=5))
    registry = CollectorRegistry(auto_describe=False)
    svc = types.SimpleNamespace(settings=settings, redis=OpenBreakerRedis())
    registry.register(PaymentsCollector(svc, None, read=lambda: dict(
        new_store().health.snapshot(stale_auth_age=1.0), broker={"queues": {}, "unacked": 0})))
    return generate_latest(registry).decode()


def test_the_exporter_shows_the_shared_breaker_when_it_is_on():
    text = breaker_text()
    assert 'payments_gateway_breaker_state{merchant="default"} 2.0' in text
    assert 'payments_gateway_breaker_opened_total{merchant="default"} 3.0' in text
    assert "payments_gateway_breaker_state" not in exported_text(new_store(),
                                                                 {"queues": {}, "unacked": 0})


class TwoInFlightRedis:
    """The two reads the bulkhead's gauge makes (worker/guard/shared.py: in_flight): two places held, by Redis time."""

    def time(self) -> tuple[int, int]:
        return 1000, 0

    def zcount(self, key: str, low: str, high: str) -> int:
        assert key == "payments:guard:default:in_flight" and (low, high) == ("(1000.000000", "+inf")
        return 2


def in_flight_text() -> str:
    settings = Settings(guard=GuardSettings(max_in_flight=4, breaker_failures=0))
    registry = CollectorRegistry(auto_describe=False)
    svc = types.SimpleNamespace(settings=settings, redis=TwoInFlightRedis())
    registry.register(PaymentsCollector(svc, None, read=lambda: dict(
        new_store().health.snapshot(stale_auth_age=1.0), broker={"queues": {}, "unacked": 0})))
    return generate_latest(registry).decode()


def test_the_exporter_shows_the_bulkhead_when_it_is_on():
    text = in_flight_text()
    assert 'payments_gateway_in_flight{merchant="default"} 2.0' in text
    assert 'payments_gateway_max_in_flight{merchant="default"} 4.0' in text
    assert "payments_gateway_in_flight" not in breaker_text()


def test_the_exporter_reports_redis_memory_and_its_limits():
    text = exported_text(new_store(), {"queues": {"celery": 0}, "unacked": 0, "memory": {
        "used": 900, "maxmemory": 1000, "total_system_memory": 8000}})
    for line in ("payments_redis_used_memory_bytes 900.0", "payments_redis_maxmemory_bytes 1000.0",
                 "payments_redis_total_system_memory_bytes 8000.0"):
        assert line in text, line


def test_the_settlement_counters_start_at_zero_so_the_first_finding_is_an_increase():
    registry = CollectorRegistry()
    WorkerMetrics(registry)
    text = generate_latest(registry).decode()
    assert 'payments_settlement_differences_total{kind="gateway_only",merchant="default"} 0.0' in text
    assert 'payments_settlement_reconciliations_total{merchant="default",result="no_verdict"} 0.0' in text


def test_every_metric_the_alerts_and_the_dashboard_use_is_served():
    alerts = (ROOT / "ops" / "prometheus" / "alerts.yml").read_text()
    dashboard = (ROOT / "ops" / "grafana" / "payments.json").read_text()
    missing = (referenced(alerts) | referenced(dashboard)) - served()
    assert missing == set()


@pytest.mark.skipif(not PROMTOOL, reason="promtool not installed (apt-get install prometheus)")
def test_every_dashboard_query_parses(tmp_path):
    dashboard = json.loads((ROOT / "ops" / "grafana" / "payments.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": e}
                                                         for i, e in enumerate(exprs)]}]}
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    done = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / "queries.yml")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
