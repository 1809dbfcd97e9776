"""The payment flow's decisions, with a FAKE gateway (a scripted class, not mocks) and a real results store.

The store runs on Redis database 9 (env TEST_REDIS_URL) under a unique key prefix per test, which is
deleted afterwards. Every test says how many money-moving requests the fake gateway received.
"""
from __future__ import annotations

import os
import uuid

import pytest

from tests.support.clocks import OffsetClock
from tests.support.redis_db import redis_or_skip
from worker.flow import ALREADY_VOIDED, MAX_SENDS, PaymentFlow, RetryLater
from worker.gateway import NotSent, OutcomeUnknown, Rejected, Response
from worker.store import ResultsStore

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/9")

CARD = {"number": "4111111111111111", "expire": "1230", "cvv2": "123"}
CUSTOMER = {"name1": "Bob", "name2": "Tester"}
SALE_TRANS = "100000000101"
OTHER_TRANS = "100000000202"


def reply(status="APPROVED", message="Approved Sale", trans_type="SALE", trans_id=SALE_TRANS, **fields):
    base = dict(amount="3.00", auth_code="AUTH42", avs="_", cvv2="M", masked_account="xxxxxxxxxxxx1111",
                card_type="VISA")
    if status != "APPROVED" or trans_type in ("VOID", "CAPTURE", "REFUND"):
        base.update(auth_code="")
    base.update(fields)
    return Response(status=status, message=message, trans_id=trans_id, trans_type=trans_type, **base)


class FakeGateway:
    """The client's verbs, answering from a script.

    ``script``: what each money-moving call does in turn (a Response to return, or an exception to raise).
    ``stq``: what each ``query`` does in turn (a Response, None for "provably absent", or an exception).
    Calls are recorded; running out of script is a test failure (an unexpected call).
    """

    def __init__(self, script=(), stq=()):
        self.script = list(script)
        self.stq = list(stq)
        self.sends: list[dict] = []
        self.queries: list[dict] = []

    def _next(self, queue, what):
        assert queue, f"unexpected gateway call: {what}"
        item = queue.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def _send(self, verb, **call):
        self.sends.append({"verb": verb, **call})
        return self._next(self.script, f"{verb} {call}")

    def sale(self, amount, card, customer=None, order_id=None, duplicate_override=False, invoice_id=None):
        return self._send("sale", amount=amount, card=card, order_id=order_id,
                          duplicate_override=duplicate_override, invoice_id=invoice_id)

    def auth(self, amount, card, customer=None, order_id=None, duplicate_override=False, invoice_id=None):
        return self._send("auth", amount=amount, card=card, order_id=order_id,
                          duplicate_override=duplicate_override, invoice_id=invoice_id)

    def capture(self, trans_id, amount=None, order_id=None):
        return self._send("capture", trans_id=trans_id, amount=amount, order_id=order_id)

    def refund(self, trans_id, amount=None, order_id=None):
        return self._send("refund", trans_id=trans_id, amount=amount, order_id=order_id)

    def void(self, trans_id, order_id=None):
        return self._send("void", trans_id=trans_id, order_id=order_id)

    def query(self, *, trans_id=None, order_id=None, days_back=30):
        self.queries.append({"trans_id": trans_id, "order_id": order_id})
        return self._next(self.stq, f"query {order_id or trans_id}")


@pytest.fixture(scope="module")
def client():
    with redis_or_skip(REDIS_URL) as r:
        yield r


@pytest.fixture
def clock():
    return OffsetClock()


@pytest.fixture
def store(client, clock):
    prefix = f"test:flow:{uuid.uuid4().hex}:"
    yield ResultsStore(client, prefix=prefix, clock=clock)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)


def new_id(kind="pay"):
    return f"{kind}-{uuid.uuid4().hex[:16]}"


def make_flow(store, gateway):
    return PaymentFlow(store=store, gateway=gateway, lease_seconds=30)


def sale(flow, pid, amount="3.00", **kw):
    return flow.charge("sale", pid, amount=amount, card=dict(CARD), customer=CUSTOMER, **kw)


def statuses(store, pid):
    return [h["status"] for h in store.history(pid)]


def approved_sale(store, pid=None, trans_id=SALE_TRANS, **kw):
    """A sale the flow charged and recorded APPROVED (through a throwaway fake)."""
    pid = pid or new_id("sale")
    outcome = sale(make_flow(store, FakeGateway([reply(trans_id=trans_id, order_id=pid)])), pid, **kw)
    assert outcome["status"] == "APPROVED"
    return outcome


# ---------------------------------------------------------------------------------- plain outcomes
def test_approved_sale_is_one_send_and_a_final_record(store):
    gw = FakeGateway([reply()])
    pid = new_id()
    outcome = sale(make_flow(store, gw), pid, invoice_id="ORD-1")
    assert outcome["status"] == "APPROVED" and outcome["message"] == "Approved Sale"
    assert outcome["trans_id"] == SALE_TRANS and outcome["auth_code"] == "AUTH42"
    assert outcome["masked_account"] == "xxxxxxxxxxxx1111" and outcome["card_type"] == "VISA"
    assert outcome["order_id"] == outcome["payment_id"] == pid and outcome["amount"] == "3.00"
    assert outcome["invoice_id"] == "ORD-1" and outcome["attempts"] == 1
    assert len(gw.sends) == 1 and gw.sends[0]["order_id"] == pid and gw.sends[0]["duplicate_override"] is False
    assert gw.sends[0]["invoice_id"] == "ORD-1"
    assert gw.queries == []
    assert store.get(pid)["status"] == "APPROVED" and statuses(store, pid) == ["PENDING", "APPROVED"]


def test_declined_sale_is_a_normal_final_outcome(store):
    gw = FakeGateway([reply("DECLINED", "Declined Sale", amount="4.00")])
    pid = new_id()
    outcome = sale(make_flow(store, gw), pid, amount="4.00")
    assert outcome["status"] == "DECLINED" and outcome["message"] == "Declined Sale"
    assert len(gw.sends) == 1 and gw.queries == []
    assert store.get(pid)["status"] == "DECLINED"


def test_rejected_request_is_a_final_error_with_the_gateways_message_and_no_retry(store):
    gw = FakeGateway([Rejected(Response(status="ERROR", message="INVALID AMOUNT FORMAT"))])
    pid = new_id()
    outcome = sale(make_flow(store, gw), pid)
    assert outcome["status"] == "ERROR" and outcome["message"] == "INVALID AMOUNT FORMAT"
    assert outcome["error_class"] == "Rejected"
    assert len(gw.sends) == 1 and gw.queries == []
    assert store.get(pid)["status"] == "ERROR"


def test_invalid_input_is_a_final_error_without_any_gateway_call(store):
    gw = FakeGateway()
    pid = new_id()
    outcome = sale(make_flow(store, gw), pid, amount="3.001")
    assert outcome["status"] == "ERROR" and "invalid input" in outcome["message"] and "amount" in outcome["message"]
    assert gw.sends == [] and gw.queries == []


# ---------------------------------------------------------------------------------- outcome unknown
def test_outcome_unknown_then_stq_finds_it_adopts_the_charge_with_one_send(store):
    found = reply(trans_id=OTHER_TRANS)
    gw = FakeGateway([OutcomeUnknown("read timeout")], stq=[found])
    pid = new_id()
    outcome = sale(make_flow(store, gw), pid)
    assert outcome["status"] == "APPROVED" and outcome["trans_id"] == OTHER_TRANS
    assert outcome["reconciled"] == "stq"
    assert len(gw.sends) == 1
    assert gw.queries == [{"trans_id": None, "order_id": pid}]


def test_outcome_unknown_then_stq_absent_sends_again_with_the_same_order_id(store):
    gw = FakeGateway([OutcomeUnknown("connection reset after send"), reply()], stq=[None])
    pid = new_id()
    outcome = sale(make_flow(store, gw), pid)
    assert outcome["status"] == "APPROVED" and outcome["trans_id"] == SALE_TRANS
    assert [s["order_id"] for s in gw.sends] == [pid, pid]
    assert [s["duplicate_override"] for s in gw.sends] == [False, False]
    assert len(gw.queries) == 1


@pytest.mark.parametrize("stq_answer", [
    NotSent("stq unreachable"),
    OutcomeUnknown("stq timed out"),
    reply(trans_type="AUTH"),  # a transaction of another type under our ORDER_ID: not ours to adopt
], ids=["stq-not-sent", "stq-unknown", "stq-wrong-type"])
def test_outcome_unknown_and_stq_cannot_tell_parks_unknown_and_retries_later(store, stq_answer):
    gw = FakeGateway([OutcomeUnknown("HTTP 500")], stq=[stq_answer])
    pid = new_id()
    with pytest.raises(RetryLater) as info:
        sale(make_flow(store, gw), pid)
    assert info.value.outage is True and info.value.parked_as == "UNKNOWN"
    assert len(gw.sends) == 1  # never blindly resent
    record = store.get(pid)
    assert record["status"] == "UNKNOWN" and "stq cannot tell" in record["message"]


def test_duplicate_reply_then_stq_absent_is_resent_with_duplicate_override(store):
    dup = reply(message="DUPLICATE", trans_id="")
    gw = FakeGateway([OutcomeUnknown("DUPLICATE", duplicate=True, response=dup), reply()], stq=[None])
    pid = new_id()
    outcome = sale(make_flow(store, gw), pid)
    assert outcome["status"] == "APPROVED"
    assert [s["duplicate_override"] for s in gw.sends] == [False, True]
    assert [s["order_id"] for s in gw.sends] == [pid, pid]


def test_duplicate_reply_of_our_own_earlier_charge_is_adopted_not_resent(store):
    dup = reply(message="DUPLICATE", trans_id="")
    gw = FakeGateway([OutcomeUnknown("DUPLICATE", duplicate=True, response=dup)], stq=[reply()])
    outcome = sale(make_flow(store, gw), new_id())
    assert outcome["status"] == "APPROVED" and outcome["trans_id"] == SALE_TRANS
    assert len(gw.sends) == 1


def test_every_send_proved_absent_stops_after_max_sends_as_retrying(store):
    gw = FakeGateway([OutcomeUnknown("HTTP 500")] * MAX_SENDS, stq=[None] * MAX_SENDS)
    pid = new_id()
    with pytest.raises(RetryLater) as info:
        sale(make_flow(store, gw), pid)
    assert info.value.outage is True and info.value.parked_as == "RETRYING"
    assert len(gw.sends) == MAX_SENDS and store.get(pid)["status"] == "RETRYING"


# ---------------------------------------------------------------------------------- not sent, busy, final
def test_not_sent_parks_retrying_without_stq_and_the_redelivery_sends_without_stq(store):
    pid = new_id()
    gw = FakeGateway([NotSent("connection refused")])
    with pytest.raises(RetryLater) as info:
        sale(make_flow(store, gw), pid)
    assert info.value.outage is True and info.value.parked_as == "RETRYING"
    assert store.get(pid)["status"] == "RETRYING" and gw.queries == []

    again = FakeGateway([reply()])
    outcome = sale(make_flow(store, again), pid)  # the broker's re-queue
    assert outcome["status"] == "APPROVED" and outcome["attempts"] == 2
    assert len(again.sends) == 1 and again.queries == []  # RETRYING is known-not-sent: no stq needed
    assert statuses(store, pid) == ["PENDING", "RETRYING", "PENDING", "APPROVED"]


def test_busy_lease_of_another_worker_means_retry_later_without_a_call(store):
    pid = new_id()
    store.claim(pid, "sale", fields={"order_id": pid}, owner="other-worker", lease_seconds=60)
    gw = FakeGateway()
    with pytest.raises(RetryLater) as info:
        sale(make_flow(store, gw), pid)
    assert info.value.outage is False
    assert 0.5 <= info.value.countdown <= 10.0
    assert gw.sends == [] and gw.queries == []
    record = store.get(pid)
    assert record["status"] == "PENDING" and record["lease_owner"] == "other-worker"


@pytest.mark.parametrize("final", ["APPROVED", "DECLINED", "ERROR"])
def test_final_record_is_returned_as_is_without_a_call(store, final):
    pid = new_id()
    store.claim(pid, "sale", fields={"order_id": pid}, owner="first", lease_seconds=60)
    store.transition(pid, final, fields={"trans_id": SALE_TRANS, "message": f"recorded {final}"}, expect="PENDING")
    gw = FakeGateway()
    outcome = sale(make_flow(store, gw), pid)
    assert outcome["status"] == final and outcome["message"] == f"recorded {final}"
    assert gw.sends == [] and gw.queries == []


def test_redelivered_in_flight_operation_found_by_stq_is_adopted_without_a_send(store):
    pid = new_id()
    store.claim(pid, "sale", fields={"order_id": pid}, owner="dead-worker", lease_seconds=0)
    gw = FakeGateway(stq=[reply()])
    outcome = sale(make_flow(store, gw), pid)
    assert outcome["status"] == "APPROVED" and outcome["reconciled"] == "stq"
    assert gw.sends == [] and len(gw.queries) == 1


def test_redelivered_in_flight_operation_absent_at_stq_is_sent_once(store):
    pid = new_id()
    store.claim(pid, "sale", fields={"order_id": pid}, owner="dead-worker", lease_seconds=0)
    gw = FakeGateway([reply()], stq=[None])
    outcome = sale(make_flow(store, gw), pid)
    assert outcome["status"] == "APPROVED" and outcome["attempts"] == 2
    assert len(gw.sends) == 1 and gw.sends[0]["order_id"] == pid


def test_redelivered_in_flight_operation_stq_cannot_tell_is_parked_unknown_without_a_send(store):
    pid = new_id()
    store.claim(pid, "sale", fields={"order_id": pid}, owner="dead-worker", lease_seconds=0)
    gw = FakeGateway(stq=[NotSent("stq unreachable")])
    with pytest.raises(RetryLater) as info:
        sale(make_flow(store, gw), pid)
    assert info.value.parked_as == "UNKNOWN"
    assert gw.sends == [] and store.get(pid)["status"] == "UNKNOWN"


# ---------------------------------------------------------------------------------- voids and follow-ups
def test_void_after_a_declined_sale_is_skipped_without_a_call(store):
    pid = new_id("sale")
    declined = sale(make_flow(store, FakeGateway([reply("DECLINED", "Declined Sale", amount="4.00")])), pid,
                    amount="4.00", then_void=True)
    gw = FakeGateway()
    outcome = make_flow(store, gw).void_after(declined)
    assert outcome["status"] == "SKIPPED" and "DECLINED" in outcome["message"]
    assert outcome["payment_id"] == f"{pid}:void"
    assert gw.sends == [] and gw.queries == []
    assert store.get(pid)["status"] == "DECLINED"


def test_void_after_an_approved_sale_voids_it_and_marks_the_sale_voided(store):
    sold = approved_sale(store, then_void=True)
    gw = FakeGateway([reply(message="Approved Void", trans_type="VOID", trans_id=OTHER_TRANS)])
    outcome = make_flow(store, gw).void_after(sold)
    assert outcome["status"] == "APPROVED" and outcome["message"] == "Approved Void"
    assert gw.sends == [{"verb": "void", "trans_id": SALE_TRANS, "order_id": f"{sold['payment_id']}:void"}]
    sale_record = store.get(sold["payment_id"])
    assert sale_record["status"] == "VOIDED" and sale_record["voided_by"] == f"{sold['payment_id']}:void"
    # the chain link again (redelivery): the void's record is final, nothing is sent
    again = FakeGateway()
    assert make_flow(store, again).void_after(sold)["status"] == "APPROVED" and again.sends == []


def test_already_voided_counts_as_done(store):
    sold = approved_sale(store)
    # stq finds no VOID under this void's ORDER_ID: someone else voided the sale.
    gw = FakeGateway([Rejected(Response(status="ERROR", message=ALREADY_VOIDED, trans_type="VOID"))], stq=[None])
    outcome = make_flow(store, gw).follow_up("void", new_id("void"), trans_id=SALE_TRANS, parent=sold["payment_id"])
    assert outcome["status"] == "APPROVED" and outcome["message"].startswith(ALREADY_VOIDED)
    assert "counted as done" in outcome["message"]
    assert len(gw.sends) == 1 and len(gw.queries) == 1
    assert store.get(sold["payment_id"])["status"] == "VOIDED"


def test_already_voided_by_an_earlier_delivery_of_the_same_void_records_that_void(store):
    """Found by the reliability kills: the first delivery's VOID was still in flight when the redelivery's stq
    looked (absent), so the resend met "Already Voided"; the record must carry the VOID's trans id."""
    sold = approved_sale(store)
    void_id = new_id("void")
    ours = reply(message="Approved Void", trans_type="VOID", trans_id=OTHER_TRANS, order_id=void_id)
    gw = FakeGateway([Rejected(Response(status="ERROR", message=ALREADY_VOIDED, trans_type="VOID"))], stq=[ours])
    outcome = make_flow(store, gw).follow_up("void", void_id, trans_id=SALE_TRANS, parent=sold["payment_id"])
    assert outcome["status"] == "APPROVED" and outcome["trans_id"] == OTHER_TRANS
    assert outcome["reconciled"] == "stq"
    assert gw.queries == [{"trans_id": None, "order_id": void_id}]
    assert store.get(sold["payment_id"])["status"] == "VOIDED"


def test_void_of_a_settled_sale_says_refund_needed(store):
    sold = approved_sale(store)
    gw = FakeGateway([Rejected(Response(status="ERROR", message="Cannot VOID a settled transaction.",
                                        trans_type="VOID"))])
    outcome = make_flow(store, gw).follow_up("void", new_id("void"), trans_id=SALE_TRANS, parent=sold["payment_id"])
    assert outcome["status"] == "ERROR" and outcome["message"].startswith("refund needed")
    assert outcome["refund_needed"] == "1"
    assert len(gw.sends) == 1
    assert store.get(sold["payment_id"])["status"] == "APPROVED"  # not voided: it must be refunded


def test_capture_marks_the_auth_captured(store):
    pid = new_id("auth")
    authorized = make_flow(store, FakeGateway([reply(message="Approved Auth", trans_type="AUTH")])).charge(
        "auth", pid, amount="5.00", card=dict(CARD))
    assert authorized["status"] == "APPROVED"
    gw = FakeGateway([reply(message="Approved Capture", trans_type="CAPTURE", trans_id=OTHER_TRANS)])
    outcome = make_flow(store, gw).follow_up("capture", new_id("capture"), trans_id=SALE_TRANS, amount="5.00")
    assert outcome["status"] == "APPROVED"
    assert gw.sends[0]["trans_id"] == SALE_TRANS and gw.sends[0]["amount"] == "5.00"
    assert store.get(pid)["status"] == "CAPTURED"


def test_refund_answered_as_a_void_marks_the_sale_voided(store):
    sold = approved_sale(store)
    gw = FakeGateway([reply(message="Approved Void", trans_type="VOID", trans_id=OTHER_TRANS)])
    outcome = make_flow(store, gw).follow_up("refund", new_id("refund"), trans_id=SALE_TRANS)
    assert outcome["status"] == "APPROVED"
    assert store.get(sold["payment_id"])["status"] == "VOIDED"


# ---------------------------------------------------------------------------------- the sweep's reconcile
def unknown_record(store, clock, operation="sale"):
    pid = new_id(operation)
    store.claim(pid, operation, fields={"order_id": pid}, owner="dead-worker", lease_seconds=30)
    store.transition(pid, "UNKNOWN", expect="PENDING", owner="dead-worker", fields={"message": "time limit"})
    return store.get(pid)


def test_reconcile_adopts_what_stq_finds(store, clock):
    record = unknown_record(store, clock)
    gw = FakeGateway(stq=[reply()])
    assert make_flow(store, gw).reconcile(record, give_up_after=3600) == "adopted"
    assert store.get(record["payment_id"])["status"] == "APPROVED" and gw.sends == []


def test_reconcile_closes_what_stq_proves_absent_as_not_charged(store, clock):
    record = unknown_record(store, clock)
    gw = FakeGateway(stq=[None])
    assert make_flow(store, gw).reconcile(record, give_up_after=3600) == "not_charged"
    final = store.get(record["payment_id"])
    assert final["status"] == "ERROR" and final["not_charged"] == "1" and "nothing was charged" in final["message"]
    assert gw.sends == []


def test_reconcile_waits_longer_each_time_stq_cannot_tell_then_gives_up_for_a_human(store, clock):
    record = unknown_record(store, clock)
    pid = record["payment_id"]
    flow = make_flow(store, FakeGateway(stq=[NotSent("down")] * 3))

    assert flow.reconcile(store.get(pid), give_up_after=1000, retry_base=60) == "still_unknown"
    first = store.get(pid)
    assert first["status"] == "UNKNOWN" and first["reconcile_tries"] == "1"
    first_wait = float(first["next_check_ts"]) - clock()
    assert 55 < first_wait <= 60

    assert flow.reconcile(store.get(pid), give_up_after=1000, retry_base=60) == "skipped"  # not due yet

    clock.advance(61)
    assert flow.reconcile(store.get(pid), give_up_after=1000, retry_base=60) == "still_unknown"
    second = store.get(pid)
    assert second["reconcile_tries"] == "2"
    assert float(second["next_check_ts"]) - clock() > first_wait  # the delay grows

    clock.advance(1000)
    assert flow.reconcile(store.get(pid), give_up_after=1000, retry_base=60) == "gave_up"
    final = store.get(pid)
    assert final["status"] == "ERROR" and final["needs_human"] == "1"
    assert flow.gateway.sends == []


def test_reconcile_leaves_a_record_another_worker_holds(store, clock):
    pid = new_id()
    store.claim(pid, "sale", fields={"order_id": pid}, owner="live-worker", lease_seconds=60)
    gw = FakeGateway()
    assert make_flow(store, gw).reconcile(store.get(pid), give_up_after=3600) == "skipped"
    assert gw.queries == [] and store.get(pid)["status"] == "PENDING"
