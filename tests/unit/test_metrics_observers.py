"""What the flow and the gateway client tell their observer (the metrics' seam), and what WorkerMetrics makes of it.

The flow runs over the in-memory store and the fake gateway; the client over a scripted transport. The observer
is a recording class; WorkerMetrics writes to a private prometheus-client registry read back here.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
from prometheus_client import CollectorRegistry

import worker.ops.metrics
from tests.support.env import TEST_CARD, TEST_CARD_KEY
from tests.support.fake_gateway import FakeGateway, reply
from tests.support.redis_store import new_store
from tests.support.unit_services import UnitServices
from worker.broker.app import create_app, current
from worker.config import Settings, parse_accounts
from worker.gateway import BluePayClient, NotSent, OutcomeUnknown
from worker.gateway.observe import error_class_of, result_of
from worker.gateway.transport import HttpReply
from worker.ops.metrics import WorkerMetrics
from worker.payments.flow import GatewayOutage, PaymentFlow

from . import gateway_replies as R
from .test_gateway_client import CARD, FakeTransport, ok302


class Recorder:
    def __init__(self):
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args))

    def of(self, name):
        return [c[1:] for c in self.calls if c[0] == name]


def flow_with(gateway, observer):
    store = new_store()
    return PaymentFlow(store, gateway, [TEST_CARD_KEY], observer=observer), store


def test_an_approved_sale_is_one_outcome_with_its_amount_and_one_delivery_in_flight_then_none():
    seen = Recorder()
    flow, _ = flow_with(FakeGateway([reply()]), seen)
    flow.charge("sale", "pay-a", amount="3.00", card=dict(CARD))
    assert seen.of("outcome") == [("sale", "APPROVED", "3.00")]
    assert seen.of("in_flight") == [("sale", 1), ("sale", -1)]
    # delivered again: the stored outcome is returned, nothing new is counted
    flow.charge("sale", "pay-a", amount="3.00", card=dict(CARD))
    assert seen.of("outcome") == [("sale", "APPROVED", "3.00")]


def test_a_read_timeout_parks_unknown_counts_the_stq_answer_and_no_outcome_and_in_flight_returns_to_zero():
    seen = Recorder()
    flow, _ = flow_with(FakeGateway([OutcomeUnknown("read timeout")], stq=[None]), seen)
    with pytest.raises(GatewayOutage):
        flow.charge("sale", "pay-b", amount="3.00", card=dict(CARD))
    assert seen.of("outcome") == []
    assert seen.of("parked") == [("sale", "UNKNOWN")]
    assert seen.of("reconciliation") == [("absent",)]
    assert sum(d for _, d in seen.of("in_flight")) == 0


def test_bad_input_is_one_error_outcome_and_a_skipped_void_one_skipped():
    seen = Recorder()
    flow, _ = flow_with(FakeGateway(), seen)
    flow.charge("sale", "pay-c", amount="3.001", card=dict(CARD))
    flow.void_after({"payment_id": "pay-c", "status": "ERROR"})
    assert seen.of("outcome") == [("sale", "ERROR", "3.001"), ("void", "SKIPPED", "3.001")]


def test_the_client_reports_each_attempt_and_each_retry_by_the_transports_class():
    seen = Recorder()
    refused = NotSent("refused")
    refused.cause_name = "ConnectionError (NewConnectionError)"
    t = FakeTransport(refused, ok302(R.approved()))
    client = BluePayClient(account_id=R.ACCOUNT, secret_key=R.SECRET, transport=t, sleep=lambda s: None,
                           observer=seen)
    client.sale("3.00", CARD)
    assert [(e, r) for e, r, _ in seen.of("request")] == [("bp10emu", "not_sent"), ("bp10emu", "approved")]
    assert seen.of("retry") == [("ConnectionError",)]
    t.script = [HttpReply(200, None, "")]
    client.query(order_id="pay-d")
    assert seen.of("request")[-1][:2] == ("stq", "absent")


def test_result_words():
    assert result_of(exc=OutcomeUnknown("x")) == "unknown"
    assert result_of(exc=ValueError("x")) == "error"
    assert result_of(reply("DECLINED", "Declined")) == "declined"
    assert result_of(reply("ERROR", "x")) == "error"
    assert error_class_of(NotSent("x")) == "NotSent"


def value(registry, name, **labels):
    return registry.get_sample_value(name, labels) or 0.0


def test_worker_metrics_count_what_they_are_told_with_bounded_labels():
    registry = CollectorRegistry()
    m = WorkerMetrics(registry)
    m.outcome("sale", "APPROVED", "3.00")
    m.outcome("sale", "APPROVED", "2.50")
    m.outcome("sale", "DECLINED", "not-a-number")
    m.outcome("pay-123", "4111111111111111", "1.00")  # never a label: counted as other/other
    m.request("bp10emu", "approved", 0.02)
    m.request("http://x/y", "approved", 0.02)
    m.retry("ConnectTimeout")
    m.retry("not a class name {1}")
    m.reconciliation("found")
    m.in_flight("sale", 1)
    d = {"merchant": "default"}
    assert value(registry, "payments_operations_total", **d, operation="sale", status="APPROVED") == 2
    assert value(registry, "payments_amount_total", **d, operation="sale", status="APPROVED") == pytest.approx(5.5)
    assert value(registry, "payments_amount_total", **d, operation="sale", status="DECLINED") == 0
    assert value(registry, "payments_operations_total", **d, operation="other", status="other") == 1
    assert value(registry, "payments_gateway_request_seconds_count", **d, endpoint="other", result="approved") == 1
    assert value(registry, "payments_gateway_request_seconds_bucket", **d, endpoint="bp10emu", result="approved",
                 le="0.025") == 1
    assert value(registry, "payments_gateway_retries_total", merchant="default", error_class="other") == 1
    assert value(registry, "payments_reconciliations_total", merchant="default", result="found") == 1
    assert value(registry, "payments_in_flight", merchant="default", operation="sale") == 1
    label_values = {v for metric in registry.collect() for s in metric.samples for v in s.labels.values()}
    assert not any(v.startswith("pay-") or v.isdigit() for v in label_values)


def test_two_merchants_outcomes_land_in_separate_series_and_an_unknown_name_never_becomes_a_label():
    registry = CollectorRegistry()
    m = WorkerMetrics(registry)
    shop2 = m.for_merchant("shop2")
    assert m.for_merchant("shop2") is shop2
    m.for_merchant("default").outcome("sale", "APPROVED", "3.00")
    shop2.outcome("sale", "APPROVED", "7.00")
    shop2.outcome("sale", "DECLINED", "1.00")
    shop2.parked("sale", "UNKNOWN")
    shop2.reconciliation("absent")
    shop2.in_flight("sale", 1)
    shop2.request("bp10emu", "declined", 0.02)
    shop2.retry("ConnectTimeout")
    m.for_merchant("unknown").outcome("sale", "ERROR", "")
    m.for_merchant("Shop 2; DROP").outcome("sale", "ERROR", "")  # never configured: not a name, never the text
    m.settlement("clean", {}, "shop2")
    assert value(registry, "payments_operations_total", merchant="default", operation="sale", status="APPROVED") == 1
    assert value(registry, "payments_operations_total", merchant="shop2", operation="sale", status="APPROVED") == 1
    assert value(registry, "payments_amount_total", merchant="shop2", operation="sale", status="APPROVED") == 7
    assert value(registry, "payments_amount_total", merchant="default", operation="sale", status="APPROVED") == 3
    assert value(registry, "payments_operations_total", merchant="default", operation="sale", status="DECLINED") == 0
    assert value(registry, "payments_parked_total", merchant="shop2", operation="sale", status="UNKNOWN") == 1
    assert value(registry, "payments_reconciliations_total", merchant="shop2", result="absent") == 1
    assert value(registry, "payments_in_flight", merchant="shop2", operation="sale") == 1
    assert value(registry, "payments_in_flight", merchant="default", operation="sale") == 0
    assert value(registry, "payments_gateway_request_seconds_count", merchant="shop2", endpoint="bp10emu",
                 result="declined") == 1
    assert value(registry, "payments_gateway_retries_total", merchant="shop2", error_class="ConnectTimeout") == 1
    assert value(registry, "payments_operations_total", merchant="unknown", operation="sale", status="ERROR") == 1
    assert value(registry, "payments_operations_total", merchant="other", operation="sale", status="ERROR") == 1
    assert value(registry, "payments_settlement_reconciliations_total", merchant="shop2", result="clean") == 1
    merchants = {s.labels.get("merchant") for metric in registry.collect() for s in metric.samples}
    assert merchants - {None} == {"default", "shop2", "unknown", "other"}


def test_the_rare_counters_of_every_configured_account_start_at_zero():
    registry = CollectorRegistry()
    m = WorkerMetrics(registry)
    m.known(("default", "shop2"))
    for merchant in ("default", "shop2"):
        assert registry.get_sample_value("payments_settlement_differences_total",
                                         {"merchant": merchant, "kind": "gateway_only"}) == 0
        assert registry.get_sample_value("payments_settlement_reconciliations_total",
                                         {"merchant": merchant, "result": "no_verdict"}) == 0
        assert registry.get_sample_value("payments_gateway_breaker_changes_total",
                                         {"merchant": merchant, "change": "opened"}) == 0


def test_a_task_counts_under_its_account_and_a_message_naming_an_unknown_account_as_unknown(monkeypatch):
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    monkeypatch.setattr(worker.ops.metrics, "observer", lambda: metrics)
    base = Settings()
    accounts = parse_accounts(json.dumps({"shop2": {"account_id": "100000000002", "secret_key": "S" * 32}}),
                              base=base.account(), duration=lambda v, n: float(v))  # type: ignore[arg-type]
    settings = dataclasses.replace(base, accounts=accounts)
    svc = UnitServices(settings, new_store(), FakeGateway([reply()]))
    svc._gateways["shop2"] = FakeGateway([reply()])  # type: ignore[assignment]
    with current(create_app(settings, services=svc)) as app:
        sale = app.tasks["payments.sale"]
        assert sale.apply(kwargs={"amount": "3.00", "card": dict(TEST_CARD)}).get()["status"] == "APPROVED"
        assert sale.apply(kwargs={"amount": "4.00", "card": dict(TEST_CARD), "merchant": "shop2"}
                          ).get()["status"] == "APPROVED"
        refused = sale.apply(kwargs={"amount": "5.00", "card": dict(TEST_CARD), "merchant": "Shop 9 <x>"}).get()
    assert refused["status"] == "ERROR" and "not a configured merchant account" in refused["message"]
    for merchant, status, n in (("default", "APPROVED", 1), ("shop2", "APPROVED", 1), ("unknown", "ERROR", 1),
                                ("default", "ERROR", 0)):
        assert value(registry, "payments_operations_total", merchant=merchant, operation="sale", status=status) == n
    assert value(registry, "payments_amount_total", merchant="shop2", operation="sale", status="APPROVED") == 4
    label_values = {v for metric in registry.collect() for s in metric.samples for v in s.labels.values()}
    assert not any("Shop" in v or "<" in v for v in label_values)
