"""The payment tasks end to end: producer -> Redis -> real celery worker -> sandbox over HTTP -> store."""
from __future__ import annotations

import time
import uuid

import pytest

from tasks import auth, capture, refund, sale, void
from tests.support.env import CUSTOMER, TEST_CARD
from tests.support.workers import running_worker, worker_env
from worker.gateway import BluePayClient
from worker.services import services


def stored(payment_id: str) -> dict:
    """The store's record of ``payment_id`` (it must exist)."""
    record = services().store.get(payment_id)
    assert record is not None, payment_id
    return record

TIMEOUT = 30


def run(sig_or_result):
    return sig_or_result.get(timeout=TIMEOUT)


def charges(sandbox, order_id):
    return [e for e in sandbox.ledger(order_id=order_id) if e["trans_type"] in ("SALE", "AUTH")]


@pytest.fixture(autouse=True)
def _worker(celery_worker, clean_faults):
    yield


def test_seed_flow_approved_sale_is_voided_and_declined_sale_void_is_skipped(sandbox):
    result = (sale.s(amount="3.00", card=TEST_CARD, customer=CUSTOMER) | void.s()).delay()
    sale_outcome, void_outcome = result.parent.get(timeout=TIMEOUT), result.get(timeout=TIMEOUT)
    assert sale_outcome["status"] == "APPROVED"
    assert sale_outcome["message"] == "Approved Sale"
    assert sale_outcome["masked_account"] == "xxxxxxxxxxxx1111"
    assert sale_outcome["card_type"] == "VISA"
    assert len(sale_outcome["trans_id"]) == 12
    assert void_outcome["status"] == "APPROVED" and void_outcome["message"] == "Approved Void"
    sale_record = stored(sale_outcome["payment_id"])
    assert sale_record["status"] == "VOIDED" and sale_record["then_void"] == "1"
    assert sale_record["voided_by"] == void_outcome["payment_id"] == f"{sale_outcome['payment_id']}:void"
    ledger_sale = charges(sandbox, sale_outcome["payment_id"])
    assert len(ledger_sale) == 1 and ledger_sale[0]["voided"]

    result = (sale.s(amount="4.00", card=TEST_CARD, customer=CUSTOMER) | void.s()).delay()
    declined, skipped = result.parent.get(timeout=TIMEOUT), result.get(timeout=TIMEOUT)
    assert declined["status"] == "DECLINED" and declined["message"] == "Declined Sale"
    assert skipped["status"] == "SKIPPED" and "DECLINED" in skipped["message"]
    assert [e for e in sandbox.ledger() if e["trans_type"] == "VOID" and e.get("origin") == declined["trans_id"]] == []


def test_outcome_has_the_contract_fields():
    outcome = run(sale.delay(amount="5.00", card=TEST_CARD, customer=CUSTOMER))
    for key in ("payment_id", "operation", "status", "message", "trans_id", "avs", "cvv2", "masked_account",
                "card_type", "auth_code", "amount", "order_id", "attempts", "created_at", "updated_at"):
        assert key in outcome
    assert outcome["amount"] == "5.00" and outcome["operation"] == "sale" and outcome["attempts"] == 1
    assert outcome["order_id"] == outcome["payment_id"]


def test_auth_then_capture_marks_the_auth_captured(sandbox):
    authorized = run(auth.delay(amount="7.00", card=TEST_CARD, customer=CUSTOMER))
    assert authorized["status"] == "APPROVED" and authorized["message"] == "Approved Auth"
    captured = run(capture.delay(authorized["trans_id"], amount="7.00"))
    assert captured["status"] == "APPROVED" and captured["message"] == "Approved Capture"
    assert stored(authorized["payment_id"])["status"] == "CAPTURED"


def test_zero_dollar_auth_is_information_stored():
    outcome = run(auth.delay(amount="0.00", card=TEST_CARD))
    assert outcome["status"] == "APPROVED" and outcome["message"] == "INFORMATION STORED"


def test_refund_of_an_unsettled_sale_comes_back_as_a_void():
    sold = run(sale.delay(amount="9.00", card=TEST_CARD))
    refunded = run(refund.delay(sold["trans_id"]))
    assert refunded["status"] == "APPROVED" and refunded["message"] == "Approved Void"
    assert stored(sold["payment_id"])["status"] == "VOIDED"


def test_void_of_a_settled_sale_says_refund_needed_and_refund_works(sandbox):
    sold = run(sale.delay(amount="11.00", card=TEST_CARD))
    sandbox.settle([sold["trans_id"]])
    voided = run(void.delay(sold["trans_id"]))
    assert voided["status"] == "ERROR" and voided["message"].startswith("refund needed")
    refunded = run(refund.delay(sold["trans_id"], amount="11.00"))
    assert refunded["status"] == "APPROVED" and refunded["message"] == "Approved Return"
    assert stored(sold["payment_id"])["status"] == "REFUNDED"


def test_a_void_of_a_partial_refund_gives_the_amount_back_at_the_gateway_and_in_the_store(sandbox):
    sold = run(sale.delay(amount="15.00", card=TEST_CARD))  # (the sandbox declines even amounts)
    assert sold["status"] == "APPROVED"
    first = run(refund.delay(sold["trans_id"], amount="5.00"))
    second = run(refund.delay(sold["trans_id"], amount="4.00"))
    assert [first["message"], second["message"]] == ["Approved Return", "Approved Return"]
    assert stored(sold["payment_id"])["refunded_amount"] == "9.00"
    voided = run(void.delay(first["trans_id"]))
    assert voided["status"] == "APPROVED" and voided["message"] == "Approved Void"
    record = stored(sold["payment_id"])
    assert (record["status"], record["refunded_amount"]) == ("PARTIALLY_REFUNDED", "4.00")
    # the gateway agrees: 11.00 is left to refund (15.00 - 4.00)
    rest = run(refund.delay(sold["trans_id"], amount="11.00"))
    assert rest["status"] == "APPROVED" and rest["message"] == "Approved Return"
    record = stored(sold["payment_id"])
    assert (record["status"], record["refunded_amount"]) == ("REFUNDED", "15.00")


def test_a_second_void_of_our_sale_counts_as_done():
    sold = run(sale.delay(amount="13.00", card=TEST_CARD))
    first = run(void.delay(sold["trans_id"]))
    second = run(void.delay(sold["trans_id"]))
    assert first["status"] == "APPROVED"
    assert second["status"] == "APPROVED" and "Already Voided" in second["message"]


def test_the_same_message_delivered_twice_charges_once(sandbox):
    task_id = str(uuid.uuid4())
    first = sale.apply_async(kwargs={"amount": "15.00", "card": TEST_CARD}, task_id=task_id)
    second = sale.apply_async(kwargs={"amount": "15.00", "card": TEST_CARD}, task_id=task_id)
    outcome = first.get(timeout=TIMEOUT)
    assert outcome["status"] == "APPROVED"
    second.get(timeout=TIMEOUT)
    assert len(charges(sandbox, task_id)) == 1
    assert stored(task_id)["status"] == "APPROVED"


def test_idempotency_key_returns_the_stored_outcome_without_a_second_charge(sandbox):
    key = f"order-{uuid.uuid4().hex}"
    first = run(sale.delay(amount="17.00", card=TEST_CARD, idempotency_key=key))
    again = run(sale.delay(amount="17.00", card=TEST_CARD, idempotency_key=key))
    assert first["payment_id"] == again["payment_id"] == key
    assert again["trans_id"] == first["trans_id"]
    assert len(charges(sandbox, key)) == 1


def test_redelivered_in_flight_operation_adopts_the_charge_the_gateway_already_has(sandbox):
    """The worker died after the gateway charged: the redelivery finds it through stq."""
    key = f"inflight-{uuid.uuid4().hex}"
    store = services().store
    gateway = BluePayClient(account_id=sandbox.account_id, secret_key=sandbox.secret_key,
                            base_url=sandbox.interfaces_url)
    already = gateway.sale("19.00", TEST_CARD, CUSTOMER, order_id=key)
    store.claim(key, "sale", fields={"amount": "19.00", "order_id": key}, owner="dead-worker", lease_seconds=0)
    outcome = run(sale.delay(amount="19.00", card=TEST_CARD, idempotency_key=key))
    assert outcome["status"] == "APPROVED" and outcome["trans_id"] == already.trans_id
    assert len(charges(sandbox, key)) == 1


def test_redelivered_in_flight_operation_absent_at_the_gateway_is_sent_once(sandbox):
    key = f"inflight-{uuid.uuid4().hex}"
    services().store.claim(key, "sale", fields={"amount": "21.00", "order_id": key}, owner="dead-worker",
                           lease_seconds=0)
    outcome = run(sale.delay(amount="21.00", card=TEST_CARD, idempotency_key=key))
    assert outcome["status"] == "APPROVED" and outcome["attempts"] == 2
    assert len(charges(sandbox, key)) == 1


@pytest.mark.parametrize("fault", ["drop_after_commit", "slow_after_commit", "http_500_after_commit", "garbled",
                                   "bad_stamp"])
def test_outcome_unknown_after_the_charge_is_reconciled_to_the_charge(sandbox, fault):
    sandbox.set_faults({"sequence": [fault], "slow_seconds": 4})
    outcome = run(sale.delay(amount="23.00", card=TEST_CARD))
    assert outcome["status"] == "APPROVED", outcome
    assert len(charges(sandbox, outcome["payment_id"])) == 1


@pytest.mark.parametrize("fault", ["http_502", "http_503", "refuse"])
def test_failure_before_processing_is_sent_again_and_charged_once(sandbox, fault):
    sandbox.set_faults({"sequence": [fault]})
    outcome = run(sale.delay(amount="25.00", card=TEST_CARD))
    assert outcome["status"] == "APPROVED", outcome
    assert len(charges(sandbox, outcome["payment_id"])) == 1


def test_gateway_outage_is_retried_through_the_broker_then_charged(sandbox):
    sandbox.outage(1.5)
    time.sleep(0.3)  # the listening socket is closed: connections are refused, not reset
    outcome = run(sale.delay(amount="27.00", card=TEST_CARD))
    assert outcome["status"] == "APPROVED", outcome
    assert len(charges(sandbox, outcome["payment_id"])) == 1
    history = [h["status"] for h in stored(outcome["payment_id"])["history"]]
    assert "RETRYING" in history


@pytest.fixture
def breakerless_queue(sandbox, tmp_path):
    """A worker of its own with the circuit breaker off, on a queue of its own: the test below is about OUTAGE_RETRIES
    running out, which the breaker (on by default) stretches to a cooldown per re-queue (tests/reliability/
    test_gateway_guard.py tests the breaker in an outage)."""
    queue = f"no-breaker-{uuid.uuid4().hex[:6]}"
    with running_worker(worker_env(sandbox, GATEWAY_BREAKER_FAILURES=0), tmp_path / "worker.log", queues=queue):
        yield queue


def test_gateway_outage_longer_than_every_retry_ends_in_a_recorded_error(sandbox, breakerless_queue):
    sandbox.outage(10)
    time.sleep(0.3)
    outcome = run(sale.apply_async(kwargs={"amount": "37.00", "card": TEST_CARD}, queue=breakerless_queue))
    assert outcome["status"] == "ERROR" and "gateway unreachable" in outcome["message"], outcome
    assert stored(outcome["payment_id"])["status"] == "ERROR"
    sandbox.wait_ready(timeout=15)
    assert charges(sandbox, outcome["payment_id"]) == []


BAD_INPUT = [
    ("amount", dict(amount="3.001", card=TEST_CARD)),
    ("amount", dict(amount="-1.00", card=TEST_CARD)),
    ("amount", dict(amount="abc", card=TEST_CARD)),
    ("amount", dict(amount="3,00", card=TEST_CARD)),  # (an int or a float is refused at delay(): test_amounts.py)
    ("card", dict(amount="3.00", card={"number": "4111111111111112", "expire": "1230"})),
    ("card", dict(amount="3.00", card={"number": "4111111111111111", "expire": "0120"})),
    ("card", dict(amount="3.00", card={"number": "4111111111111111", "expire": "1330"})),
    ("card", dict(amount="3.00", card={"number": "4111111111111111", "expire": "1230", "cvv2": "12"})),
    ("card", dict(amount="3.00", card="4111111111111111")),
    ("customer", dict(amount="3.00", card=TEST_CARD, customer={"name1": "Bob\x00"})),
    ("customer", dict(amount="3.00", card=TEST_CARD, customer={"name1": "B" * 500})),
    ("customer", dict(amount="3.00", card=TEST_CARD, customer={"shoe_size": "9"})),
    ("card", dict(amount="3.00")),  # neither a card nor a token (docs/tokens.md)
    ("arguments", dict(card=TEST_CARD)),
    ("arguments", dict(amount="3.00", card=TEST_CARD, colour="blue")),
]


@pytest.mark.parametrize("field,kwargs", BAD_INPUT)
def test_bad_input_is_a_recorded_error_without_a_gateway_call(sandbox, field, kwargs):
    before = sandbox.stats()["requests"].get("bp10emu", 0)
    outcome = run(sale.delay(**kwargs))
    assert outcome["status"] == "ERROR"
    assert field in outcome["message"]
    assert stored(outcome["payment_id"])["status"] == "ERROR"
    assert sandbox.stats()["requests"].get("bp10emu", 0) == before


@pytest.mark.parametrize("call", [
    lambda: capture.delay("12345"),
    lambda: refund.delay("abcdefghijkl"),
    lambda: void.delay(None),
    lambda: capture.delay("100000000001", amount="1.001"),
])
def test_bad_trans_ids_and_amounts_on_follow_ups_are_recorded_errors(call):
    outcome = run(call())
    assert outcome["status"] == "ERROR" and "invalid input" in outcome["message"]


def test_unknown_trans_id_is_the_gateways_recorded_error():
    outcome = run(void.delay("999999999999"))
    assert outcome["status"] == "ERROR" and "COULD NOT LOCATE" in outcome["message"].upper()


def test_worker_keeps_serving_after_bad_input():
    run(sale.delay(amount="nope", card=TEST_CARD))
    assert run(sale.delay(amount="29.00", card=TEST_CARD))["status"] == "APPROVED"


def test_producer_order_id_travels_as_invoice_id_and_order_id_is_the_operation_id():
    outcome = run(sale.delay(amount="35.00", card=TEST_CARD, order_id="ORD-2026-0042"))
    assert outcome["status"] == "APPROVED"
    assert outcome["invoice_id"] == "ORD-2026-0042"
    assert outcome["order_id"] == outcome["payment_id"]


def test_in_flight_operation_of_a_dead_process_on_this_host_is_taken_over_at_once(sandbox):
    """A killed prefork child's job is requeued at once; its live lease must not stall it."""
    import socket
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_owner = f"{socket.gethostname()}:{gone.stdout.strip()}:deadbeef"
    key = f"dead-{uuid.uuid4().hex}"
    services().store.claim(key, "sale", fields={"amount": "41.00", "order_id": key}, owner=dead_owner,
                           lease_seconds=600)
    started = time.monotonic()
    outcome = run(sale.delay(amount="41.00", card=TEST_CARD, idempotency_key=key))
    assert outcome["status"] == "APPROVED" and outcome["attempts"] == 2
    assert time.monotonic() - started < 10
    assert len(charges(sandbox, key)) == 1
