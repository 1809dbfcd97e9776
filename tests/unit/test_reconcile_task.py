"""The daily reconciliation under beat: RECONCILE_REPORT_AT in the schedule, and the task (previous day by default,
retried when the report cannot be had) over the in-memory store and a fake report."""
from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from celery.exceptions import Retry
from celery.schedules import crontab

from celeryconfig import config_for
from tasks.reconciliation import RETRY_EVERY
from tests.support.redis_store import StoreUnderTest, new_store
from tests.support.unit_services import UnitServices
from tests.unit.test_reconcile import FakeReportGateway, row
from worker.broker.app import create_app, current
from worker.config import ConfigError, Settings
from worker.gateway import ReportIncomplete
from worker.store.reconciliations import Reconciliations


def test_the_beat_schedule_runs_it_at_reconcile_report_at() -> None:
    schedule = config_for(Settings(reconcile_report_at="03:45"))["beat_schedule"]["payments-reconcile-report"]
    assert schedule["task"] == "payments.reconcile_report"
    assert schedule["schedule"] == crontab(hour=3, minute=45)
    assert Settings().reconcile_report_time == (2, 0)
    for bad in ("24:00", "2am", "02:60", ""):
        with pytest.raises(ConfigError, match="RECONCILE_REPORT_AT"):
            Settings(reconcile_report_at=bad).check()


def services(gateway) -> tuple[UnitServices, StoreUnderTest]:
    store = new_store()
    svc = UnitServices(Settings(), store, gateway)
    svc.reconciliations = Reconciliations(store)  # type: ignore[attr-defined]
    return svc, store


def test_the_task_reconciles_yesterday_and_keeps_it() -> None:
    gateway = FakeReportGateway([row(order_id="walk-in")])
    svc, _ = services(gateway)
    with current(create_app(Settings(), services=svc)) as app:
        summary = app.tasks["payments.reconcile_report"].apply().get()
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    assert gateway.reports == [(yesterday, yesterday + timedelta(days=1), settled) for settled in (False, True)]
    assert summary["day"] == yesterday.isoformat() and summary["differences"] == 1 and "findings" not in summary
    assert svc.reconciliations.kept(yesterday.isoformat())["by_kind"]["gateway_only"] == 1  # type: ignore[attr-defined]


def test_a_report_that_cannot_be_had_is_asked_for_again_later() -> None:
    gateway = FakeReportGateway([row()], fail_after=0, failure=ReportIncomplete("cut"))
    svc, _ = services(gateway)
    with current(create_app(Settings(), services=svc)) as app, pytest.raises(Retry) as retry:
        app.tasks["payments.reconcile_report"].apply(kwargs={"day": "2025-06-15"}, throw=True)
    assert retry.value.when == RETRY_EVERY and gateway.reports[0][0] == date(2025, 6, 15)
    assert svc.reconciliations.kept("2025-06-15") is None  # type: ignore[attr-defined]


def test_a_worker_serving_metrics_counts_each_day_and_its_differences(monkeypatch) -> None:
    from prometheus_client import CollectorRegistry

    import worker.ops.metrics
    from worker.ops.metrics import WorkerMetrics

    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    monkeypatch.setattr(worker.ops.metrics, "observer", lambda: metrics)
    svc, _ = services(FakeReportGateway([row(order_id="walk-in"), row(trans_id="100000000009", order_id="other")]))
    with current(create_app(Settings(), services=svc)) as app:
        app.tasks["payments.reconcile_report"].apply(kwargs={"day": "2025-06-15"}).get()
    broken, _ = services(FakeReportGateway([row()], fail_after=0))
    with current(create_app(Settings(), services=broken)) as app, pytest.raises(Retry):
        app.tasks["payments.reconcile_report"].apply(kwargs={"day": "2025-06-15"}, throw=True)

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    assert value("payments_settlement_reconciliations_total", merchant="default", result="differences") == 1
    assert value("payments_settlement_reconciliations_total", merchant="default", result="no_verdict") == 1
    assert value("payments_settlement_reconciliations_total", merchant="default", result="clean") == 0
    assert value("payments_settlement_differences_total", merchant="default", kind="gateway_only") == 2
