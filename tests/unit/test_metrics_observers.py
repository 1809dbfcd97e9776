"""What the flow and the gateway client tell their observer (the metrics' seam), and what WorkerMetrics makes of it.

The flow runs over the in-memory store and the fake gateway; the client over a scripted transport. The observer
is a recording class; WorkerMetrics writes to a private prometheus-client registry read back here.
"""
from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from tests.support.env import TEST_CARD_KEY
from tests.support.fake_gateway import FakeGateway, reply
from tests.support.redis_store import new_store
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
    assert value(registry, "payments_operations_total", operation="sale", status="APPROVED") == 2
    assert value(registry, "payments_amount_total", operation="sale", status="APPROVED") == pytest.approx(5.5)
    assert value(registry, "payments_amount_total", operation="sale", status="DECLINED") == 0
    assert value(registry, "payments_operations_total", operation="other", status="other") == 1
    assert value(registry, "payments_gateway_request_seconds_count", endpoint="other", result="approved") == 1
    assert value(registry, "payments_gateway_request_seconds_bucket", endpoint="bp10emu", result="approved",
                 le="0.025") == 1
    assert value(registry, "payments_gateway_retries_total", error_class="other") == 1
    assert value(registry, "payments_reconciliations_total", result="found") == 1
    assert value(registry, "payments_in_flight", operation="sale") == 1
    label_values = {v for metric in registry.collect() for s in metric.samples for v in s.labels.values()}
    assert not any(v.startswith("pay-") or v.isdigit() for v in label_values)
