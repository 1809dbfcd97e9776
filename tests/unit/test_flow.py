"""The payment flow's decisions (issue 12's rules, as tables), with a FAKE gateway (a scripted class, not mocks)
and the real results store on a real Redis (tests/support/redis_store.py): the ledger rules are the store's Lua,
written once. No sleeping.

Leases, ages and the commit horizon are the store's time, Redis's, held still by the tests' clock: a test makes time
pass with a tiny ``commit_horizon`` (or lease) and ``clock.advance``. Every test says how many money-moving requests
the fake gateway received.
"""
from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
import time
import types
import uuid

import pytest
from cryptography.fernet import Fernet

from tests.support.env import TEST_CARD_KEY
from tests.support.fake_gateway import SALE_TRANS, FakeGateway, duplicate, reply
from worker.config import Settings
from worker.gateway import GatewayUnavailable, NotSent, OutcomeUnknown, Rejected, Response
from worker.gateway.protocol import parse_query_reply, parse_transaction_reply
from worker.payments.flow import ALREADY_VOIDED, MAX_SENDS, GatewayOutage, LeaseBusy, PaymentFlow
from worker.payments.leases import LeaseKeeper
from worker.payments.requests import request_fingerprints
from worker.payments.sweep import run_sweep
from worker.states import TASK_STATUSES
from worker.store import CONTRACT_FIELDS

from . import gateway_replies as R

CARD = {"number": "4111111111111111", "expire": "1230", "cvv2": "123"}
OTHER_CARD = {"number": "5454545454545454", "expire": "1230", "cvv2": "123"}
CUSTOMER = {"name1": "Bob", "name2": "Tester"}
OTHER_TRANS = "100000000202"
THIRD_TRANS = "100000000303"
KEY = TEST_CARD_KEY
OLD_KEY = Fernet.generate_key().decode()
HORIZON = 60.0  # long enough that nothing a test does gets past it
TINY = 0.3      # a commit horizon a test waits out (clock.advance)


def parsed(pairs):
    """What the real client makes of a canned bp10emu reply: the Response, or the exception it raises."""
    try:
        return parse_transaction_reply(302, R.location(pairs), "", secret_key=R.SECRET)
    except Exception as exc:
        return exc


def parsed_stq(row):
    try:
        return parse_query_reply(200, R.body(row), secret_key=R.SECRET)
    except Exception as exc:
        return exc


_NO_DIGITS = str.maketrans("0123456789", "ghijklmnop")


def new_id(kind="pay"):
    # no digits: a random hex id has a run of 13+ Luhn-valid digits about once in a thousand, which the store
    # rightly refuses to keep as a payment id
    return f"{kind}-{uuid.uuid4().hex[:16].translate(_NO_DIGITS)}"


def make_flow(store, gateway, *, keys=(KEY,), horizon=HORIZON, lease=30.0, operation_budget=60.0, call_budget=30.0):
    return PaymentFlow(store, gateway, list(keys), lease, horizon, operation_budget, call_budget)


def checked(outcome):
    """Every outcome a task can return: the contract's fields, and never PENDING or RETRYING."""
    assert outcome["status"] in TASK_STATUSES, outcome
    assert outcome["status"] not in ("PENDING", "RETRYING")
    for f in CONTRACT_FIELDS:
        assert f in outcome, f
    return outcome


def sale(flow, pid, amount="3.00", card=None, **kw):
    return checked(flow.charge("sale", pid, amount=amount, card=dict(card or CARD), customer=CUSTOMER, **kw))


def parked(call):
    """Run a flow call that must park the operation; the GatewayOutage it raised."""
    with pytest.raises(GatewayOutage) as info:
        call()
    return info.value


def statuses(store, pid):
    return [h["status"] for h in store.history(pid) if not h["note"].startswith("attempt ")]


def approved_sale(store, pid=None, trans_id=SALE_TRANS, amount="3.00", **kw):
    """A sale the flow charged and recorded APPROVED (through a throwaway fake)."""
    pid = pid or new_id("sale")
    gw = FakeGateway([reply(trans_id=trans_id, order_id=pid, amount=amount)])
    outcome = sale(make_flow(store, gw), pid, amount=amount, **kw)
    assert outcome["status"] == "APPROVED" and len(gw.sends) == 1
    return outcome


def approved_auth(store, pid=None, trans_id=SALE_TRANS, amount="5.00"):
    pid = pid or new_id("auth")
    gw = FakeGateway([reply(message="Approved Auth", trans_type="AUTH", trans_id=trans_id, amount=amount)])
    outcome = checked(make_flow(store, gw).charge("auth", pid, amount=amount, card=dict(CARD)))
    assert outcome["status"] == "APPROVED" and len(gw.sends) == 1
    return outcome


def late_commit_first_delivery(store, pid, horizon):
    """Delivery 1: the sale times out on read (it may still commit), stq says absent: parked UNKNOWN."""
    gw = FakeGateway([OutcomeUnknown("read timeout")], stq=[None])
    out = parked(lambda: sale(make_flow(store, gw, horizon=horizon), pid))
    assert out.parked_as == "UNKNOWN" and len(gw.sends) == 1 and len(gw.queries) == 1
    return out


# ================================================================================== plain outcomes
def test_approved_sale_is_one_send_and_a_final_record_with_its_attempt_journaled(store):
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
    record = store.get(pid)
    assert record["status"] == "APPROVED" and statuses(store, pid) == ["PENDING", "APPROVED"]
    assert record["sends"] == "1" and record["history"][0]["note"].endswith("attempt 1")  # noted in the claim
    assert record["fingerprint"] == request_fingerprints("sale", amount="3.00", card_number=CARD["number"],
                                                         card_keys=[KEY])[0]
    assert CARD["number"] not in repr(record)


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
    assert outcome["error_class"] == "InvalidInput"
    assert gw.sends == [] and gw.queries == []


@pytest.mark.parametrize("final", ["APPROVED", "DECLINED", "ERROR"])
def test_final_record_is_returned_as_is_without_a_call(store, final):
    pid = new_id()
    store.claim(pid, "sale", fields={"order_id": pid}, owner="first", lease_seconds=60)
    store.transition(pid, final, fields={"trans_id": SALE_TRANS, "message": f"recorded {final}"},
                     expect="PENDING", owner="first")
    gw = FakeGateway()
    for redelivered in (False, True):
        outcome = sale(make_flow(store, gw), pid, redelivered=redelivered)
        assert outcome["status"] == final and outcome["message"] == f"recorded {final}"
    assert gw.sends == [] and gw.queries == []


# ================================================================================== late commit
@pytest.mark.parametrize("stq_answer,status", [
    (reply(trans_id=OTHER_TRANS), "APPROVED"),   # it committed: adopted
    (reply("DECLINED", "Declined Sale", trans_id=OTHER_TRANS), "DECLINED"),
    (None, "UNKNOWN"),                             # absent, but it may still commit: parked with a next check
    (NotSent("stq unreachable"), "UNKNOWN"),       # cannot tell
    (OutcomeUnknown("stq timed out"), "UNKNOWN"),
    (reply(trans_type="AUTH"), "UNKNOWN"),         # a transaction of another type under our ORDER_ID
    (OutcomeUnknown("stq row carries a BP_STAMP that does not verify"), "UNKNOWN"),
], ids=["found", "found-declined", "absent-within-horizon", "stq-not-sent", "stq-unknown", "stq-wrong-type",
        "stq-stamp-fails"])
def test_outcome_unknown_is_never_resent_within_the_horizon(store, stq_answer, status):
    gw = FakeGateway([OutcomeUnknown("read timeout")], stq=[stq_answer])
    pid = new_id()
    flow = make_flow(store, gw)
    if status == "UNKNOWN":
        out = parked(lambda: sale(flow, pid))
        assert out.parked_as == "UNKNOWN"
        record = store.get(pid)
        assert record["status"] == "UNKNOWN" and record["sent_ts"] and record.get("in_flight") == "0"
        if stq_answer is None:
            assert out.check_in == pytest.approx(HORIZON + 1)
            assert float(record["next_check_ts"]) == pytest.approx(float(record["updated_ts"]) + HORIZON + 1, abs=0.01)
            assert "commit horizon" in record["message"]
        else:
            assert out.check_in is None and "stq cannot tell" in record["message"]
    else:
        outcome = sale(flow, pid)
        assert outcome["status"] == status and outcome["trans_id"] == OTHER_TRANS
        assert outcome["reconciled"] == "stq"
    assert len(gw.sends) == 1  # never blindly resent
    assert gw.queries == [{"trans_id": None, "order_id": pid}]


def test_an_stq_lookup_the_breaker_held_back_looks_again_when_it_lets_us(store):
    """The breaker open: the lookup of an attempt in doubt is re-queued after the cooldown left, not at the outage
    backoff (which would spend every re-queue within one outage), on the first delivery and on a later one."""
    held = GatewayUnavailable("gateway unavailable: circuit breaker open (default)", retry_after=12.0)
    gw = FakeGateway([OutcomeUnknown("connection reset")], stq=[held, held])
    pid = new_id()
    flow = make_flow(store, gw)
    for _ in range(2):
        out = parked(lambda: sale(flow, pid))
        assert out.parked_as == "UNKNOWN" and out.check_in == 12.0
        assert "stq cannot tell" in store.get(pid)["message"]
    assert len(gw.sends) == 1


# ================================================================================== only a row provably ours
def _row(*args, **over):
    return reply(*args, **{"trans_id": OTHER_TRANS, **over})


@pytest.mark.parametrize("rows,status,trans_id", [
    ([_row()], "APPROVED", OTHER_TRANS),
    ([_row(order_id="{pid} ")], "UNKNOWN", None),            # another key's row (stq may trim what it searches)
    ([_row(order_id="other-payment")], "UNKNOWN", None),
    ([_row(amount="4.00")], "UNKNOWN", None),                   # another amount
    ([_row(amount="")], "UNKNOWN", None),
    ([_row(masked_account="xxxxxxxxxxxx4242")], "UNKNOWN", None),  # another card
    ([_row(masked_account="")], "APPROVED", OTHER_TRANS),      # the card not shown: the other rules decide
    ([_row(trans_type="")], "UNKNOWN", None),                   # no type: cannot tell
    ([_row(trans_type="AUTH")], "UNKNOWN", None),
    ([_row("DECLINED", "Declined Sale", trans_id=THIRD_TRANS), _row()], "APPROVED", OTHER_TRANS),  # several rows
    ([_row(order_id="other-payment", trans_id=THIRD_TRANS), _row()], "APPROVED", OTHER_TRANS),
    ([_row(), _row(trans_id=THIRD_TRANS)], "UNKNOWN", None),   # two approved rows of ours: a human looks
    ([_row("DECLINED", "Declined Sale")], "DECLINED", OTHER_TRANS),
], ids=["ours", "key-with-a-space", "other-order-id", "other-amount", "no-amount", "other-card", "card-not-shown",
        "no-type", "other-type", "declined-then-approved", "foreign-then-ours", "two-approved", "declined"])
def test_only_a_row_provably_ours_is_adopted(store, clock, rows, status, trans_id):
    """Past the horizon, so "absent" would mean sending again: a row that is not provably ours is "cannot tell"."""
    pid = new_id()
    late_commit_first_delivery(store, pid, TINY)
    clock.advance(TINY + 0.1)
    rows = [dataclasses.replace(r, order_id=r.order_id.replace("{pid}", pid)) for r in rows]
    gw = FakeGateway(stq=[rows])
    flow = make_flow(store, gw, horizon=TINY)
    if status == "UNKNOWN":
        out = parked(lambda: sale(flow, pid))
        assert out.parked_as == "UNKNOWN" and "stq" in store.get(pid)["message"]
    else:
        outcome = sale(flow, pid)
        assert (outcome["status"], outcome["trans_id"], outcome["reconciled"]) == (status, trans_id, "stq")
    assert gw.sends == [] and len(gw.queries) == 1  # never resent


@pytest.mark.parametrize("operation,asked,row,adopted", [
    ("refund", None, dict(amount="2.00"), True),                  # no more than the sale's 3.00
    ("refund", None, dict(amount="3.00"), True),
    ("refund", None, dict(amount="5.00"), False),                 # more than the sale: not this refund
    ("refund", None, dict(amount=""), False),
    ("refund", "1.00", dict(amount="1.00"), True),
    ("refund", "1.00", dict(amount="2.00"), False),
    ("refund", None, dict(amount="3.00", trans_type="VOID"), True),  # a refund of an unsettled sale: a VOID
    ("refund", None, dict(amount="2.00", raw={"master_id": THIRD_TRANS}), False),  # of another transaction
    ("refund", None, dict(amount="2.00", raw={"master_id": SALE_TRANS}), True),
    ("refund", None, dict(amount="2.00", masked_account="xxxxxxxxxxxx4242"), False),  # the sale's card was 1111
    ("void", None, dict(amount="3.00"), True),
    ("void", None, dict(amount="", raw={"origin": THIRD_TRANS}), False),
    ("capture", None, dict(amount="3.00"), True),
    ("capture", None, dict(amount="3.01"), False),
], ids=["refund-rest", "refund-all", "refund-more-than-sale", "refund-no-amount", "refund-asked", "refund-other-amount",
        "refund-as-void", "refund-of-another", "refund-of-ours", "refund-other-card", "void", "void-of-another",
        "capture-all", "capture-more"])
def test_a_follow_up_adopts_only_a_row_provably_its_own(store, clock, operation, asked, row, adopted):
    approved_sale(store, amount="3.00")  # its trans id is SALE_TRANS, card 1111 (an auth for the capture is alike)
    if operation == "capture":
        approved_auth(store, trans_id=SALE_TRANS, amount="3.00")
    pid = new_id(operation)
    types = {"refund": "REFUND", "void": "VOID", "capture": "CAPTURE"}
    found = reply(message="Approved", trans_id=OTHER_TRANS, order_id=pid, **{"trans_type": types[operation], **row})
    gw = FakeGateway([OutcomeUnknown("read timeout")], stq=[found])
    flow = make_flow(store, gw)
    kwargs = {} if operation == "void" else {"amount": asked}
    if adopted:
        outcome = checked(flow.follow_up(operation, pid, trans_id=SALE_TRANS, **kwargs))
        assert outcome["status"] == "APPROVED" and outcome["reconciled"] == "stq"
    else:
        assert parked(lambda: flow.follow_up(operation, pid, trans_id=SALE_TRANS, **kwargs)).parked_as == "UNKNOWN"
    assert len(gw.sends) == 1


def test_the_sweep_never_adopts_nor_closes_on_a_row_not_ours(store, clock):
    pid = new_id()
    late_commit_first_delivery(store, pid, TINY)
    clock.advance(5)  # past the horizon and the next check
    gw = FakeGateway(stq=[_row(order_id="other-payment")])
    flow = make_flow(store, gw, horizon=TINY)
    assert flow.reconcile(store.get(pid), give_up_after=3600) == "still_unknown"
    record = store.get(pid)
    assert record["status"] == "UNKNOWN" and not record.get("not_charged") and gw.sends == []


def test_stq_is_asked_over_the_records_redis_times(store, clock):
    """The window comes from the attempt journal's times in the store (Redis TIME), never this process's calendar."""
    pid = new_id()
    late_commit_first_delivery(store, pid, TINY)
    created = float(store.get(pid)["created_ts"])
    clock.advance(3 * 86400)  # the sweep looks three days later
    gw = FakeGateway(stq=[_row()])
    assert make_flow(store, gw, horizon=TINY).reconcile(store.get(pid), give_up_after=10 * 86400) == "adopted"
    window = gw.windows[0]
    assert window is not None
    first, last = window
    assert first == pytest.approx(created) and last == pytest.approx(created + 3 * 86400, abs=1)


@pytest.mark.parametrize("wait,stq_answer,sends,status", [
    (False, None, 0, "UNKNOWN"),     # still within the horizon: parked again, nothing sent
    (False, reply(), 0, "APPROVED"),  # it committed late: adopted
    (True, None, 1, "APPROVED"),     # past the horizon and absent: it never landed, send again
    (True, reply(), 0, "APPROVED"),
    (True, NotSent("stq down"), 0, "UNKNOWN"),
], ids=["within-absent", "within-found", "past-absent-resend", "past-found", "past-cannot-tell"])
def test_late_commit_resumed_delivery(store, clock, wait, stq_answer, sends, status):
    pid = new_id()
    late_commit_first_delivery(store, pid, TINY)
    if wait:
        clock.advance(TINY + 0.1)
    gw = FakeGateway([reply()] * sends, stq=[stq_answer])
    flow = make_flow(store, gw, horizon=TINY if wait else HORIZON)  # "within": however slow this machine is
    if status == "UNKNOWN":
        assert parked(lambda: sale(flow, pid)).parked_as == "UNKNOWN"
    else:
        outcome = sale(flow, pid)
        assert outcome["status"] == status and outcome["attempts"] == 2
    assert len(gw.sends) == sends and len(gw.queries) == 1
    if sends:
        assert gw.sends[0]["order_id"] == pid and gw.sends[0]["duplicate_override"] is False  # same ORDER_ID
        assert store.get(pid)["sends"] == "2"


def test_late_commit_within_horizon_check_in_is_what_is_left_of_it(store, clock):
    pid = new_id()
    late_commit_first_delivery(store, pid, 5.0)
    clock.advance(0.5)
    gw = FakeGateway(stq=[None])
    out = parked(lambda: sale(make_flow(store, gw, horizon=5.0), pid))
    assert 4.0 < out.check_in < 5.6  # the rest of the horizon (+1 s), not a whole new one
    assert gw.sends == []


# ================================================================================== RETRYING vs UNKNOWN
def test_not_sent_parks_retrying_and_the_redelivery_sends_without_stq(store):
    pid = new_id()
    gw = FakeGateway([NotSent("connection refused")])
    out = parked(lambda: sale(make_flow(store, gw), pid))
    assert out.parked_as == "RETRYING" and out.check_in is None
    record = store.get(pid)
    assert record["status"] == "RETRYING" and not record.get("sent_ts") and gw.queries == []
    assert len(gw.sends) == 1

    again = FakeGateway([reply()])
    outcome = sale(make_flow(store, again), pid)  # the broker's re-queue
    assert outcome["status"] == "APPROVED" and outcome["attempts"] == 2
    assert len(again.sends) == 1 and again.queries == []  # RETRYING is known-not-sent: no stq needed
    assert statuses(store, pid) == ["PENDING", "RETRYING", "PENDING", "APPROVED"]


def test_not_sent_after_an_earlier_maybe_sent_attempt_is_unknown_not_retrying(store, clock):
    pid = new_id()
    late_commit_first_delivery(store, pid, TINY)
    clock.advance(TINY + 0.1)
    gw = FakeGateway([NotSent("connection refused")], stq=[None])
    out = parked(lambda: sale(make_flow(store, gw, horizon=TINY), pid))
    assert out.parked_as == "UNKNOWN"
    assert store.get(pid)["status"] == "UNKNOWN"
    assert len(gw.sends) == 1 and len(gw.queries) == 1


def test_wall_time_budget_spent_before_sending_parks_retrying_nothing_was_sent(store):
    pid = new_id()
    gw = FakeGateway()
    out = parked(lambda: sale(make_flow(store, gw, operation_budget=0), pid))
    assert out.parked_as == "RETRYING"  # the claim noted attempt 1, but it was never made
    record = store.get(pid)
    assert record["status"] == "RETRYING" and not record.get("sent_ts")
    assert gw.sends == [] and gw.queries == []


def test_a_crash_mid_call_parks_the_attempt_as_maybe_sent(store):
    pid = new_id()
    gw = FakeGateway([RuntimeError("bug in the middle of a call")])
    with pytest.raises(RuntimeError):
        sale(make_flow(store, gw), pid)
    record = store.get(pid)
    assert record["status"] == "UNKNOWN" and record["sent_ts"] and "RuntimeError" in record["message"]
    assert len(gw.sends) == 1 and gw.queries == []


# ================================================================================== give_up_retrying
@pytest.mark.parametrize("state,status,not_charged", [
    ("RETRYING", "ERROR", "1"),      # provably unsent: a final failure without a charge
    ("UNKNOWN", "UNKNOWN", None),    # may have been sent: stays for the sweep (only stq may settle it)
    ("UNKNOWN-not-sent-later", "UNKNOWN", None),
], ids=["unsent", "maybe-sent", "maybe-sent-then-refused"])
def test_give_up_retrying(store, clock, state, status, not_charged):
    pid = new_id()
    if state == "RETRYING":
        gw = FakeGateway([NotSent("refused")])
        parked(lambda: sale(make_flow(store, gw), pid))
    elif state == "UNKNOWN":
        gw = FakeGateway([OutcomeUnknown("read timeout")], stq=[None])
        parked(lambda: sale(make_flow(store, gw), pid))
    else:
        late_commit_first_delivery(store, pid, TINY)
        clock.advance(TINY + 0.1)
        gw = FakeGateway([NotSent("refused")], stq=[None])
        parked(lambda: sale(make_flow(store, gw, horizon=TINY), pid))
    quiet = FakeGateway()
    outcome = checked(make_flow(store, quiet).give_up_retrying("sale", pid, "gateway unreachable after 5 re-queues"))
    assert outcome["status"] == status and outcome.get("not_charged") == not_charged
    assert store.get(pid)["status"] == status
    if status == "UNKNOWN":
        assert "sweep" in outcome["message"]
    assert len(gw.sends) == 1 and quiet.sends == [] and quiet.queries == []


def test_give_up_retrying_leaves_a_live_holder_and_final_records_alone(store):
    held, done = new_id(), new_id()
    store.claim(held, "sale", fields={"order_id": held}, owner="live", lease_seconds=60)
    approved_sale(store, done)
    gw = FakeGateway()
    flow = make_flow(store, gw)
    assert checked(flow.give_up_retrying("sale", held, "x"))["status"] == "UNKNOWN"  # shown, never PENDING
    assert store.get(held)["status"] == "PENDING" and store.get(held)["lease_owner"] == "live"
    assert checked(flow.give_up_retrying("sale", done, "x"))["status"] == "APPROVED"
    assert flow.give_up_retrying("sale", new_id(), "x")["status"] == "UNKNOWN"
    assert gw.sends == [] and gw.queries == []


# ================================================================================== keys bound to requests
def _first_sale(store, pid, state):
    """The first request under ``pid``: a 3.00 sale of CARD, left final or parked."""
    if state == "APPROVED":
        approved_sale(store, pid)
    elif state == "RETRYING":
        parked(lambda: sale(make_flow(store, FakeGateway([NotSent("refused")])), pid))
    elif state == "UNKNOWN":
        parked(lambda: sale(make_flow(store, FakeGateway([OutcomeUnknown("timeout")], stq=[None])), pid))
    return store.get(pid)


SECOND_REQUESTS = {
    "other-amount": lambda f, pid: f.charge("sale", pid, amount="9.00", card=dict(CARD)),
    "other-card": lambda f, pid: f.charge("sale", pid, amount="3.00", card=dict(OTHER_CARD)),
    "other-operation-auth": lambda f, pid: f.charge("auth", pid, amount="3.00", card=dict(CARD)),
    "other-operation-refund": lambda f, pid: f.follow_up("refund", pid, trans_id=SALE_TRANS),
    "other-operation-void": lambda f, pid: f.follow_up("void", pid, trans_id=SALE_TRANS),
}


@pytest.mark.parametrize("state", ["APPROVED", "RETRYING", "UNKNOWN"])
@pytest.mark.parametrize("second", list(SECOND_REQUESTS))
def test_same_key_with_another_request_is_an_idempotency_mismatch(store, state, second):
    pid = new_id("key")
    before = _first_sale(store, pid, state)
    gw = FakeGateway()
    outcome = checked(SECOND_REQUESTS[second](make_flow(store, gw), pid))
    assert outcome["status"] == "ERROR" and outcome["error_class"] == "IdempotencyMismatch"
    assert pid in outcome["message"] and "nothing was sent" in outcome["message"]
    assert store.get(pid) == before  # the first record is untouched (status, lease, attempts, history)
    assert gw.sends == [] and gw.queries == []


@pytest.mark.parametrize("second", [
    dict(operation="refund", trans_id=OTHER_TRANS, amount="1.00"),   # other target
    dict(operation="refund", trans_id=SALE_TRANS, amount="2.00"),    # other amount
    dict(operation="refund", trans_id=SALE_TRANS, amount=None),      # no amount is another request too
    dict(operation="capture", trans_id=SALE_TRANS, amount="1.00"),   # other operation
], ids=["other-target", "other-amount", "no-amount", "other-operation"])
def test_follow_up_keys_are_bound_to_target_and_amount(store, second):
    approved_sale(store)
    pid = new_id("refund")
    gw = FakeGateway([reply(message="Approved Return", trans_type="REFUND", trans_id=OTHER_TRANS)])
    first = checked(make_flow(store, gw).follow_up("refund", pid, trans_id=SALE_TRANS, amount="1.00"))
    assert first["status"] == "APPROVED"
    before = store.get(pid)
    again = FakeGateway()
    op = second.pop("operation")
    outcome = checked(make_flow(store, again).follow_up(op, pid, **second))
    assert outcome["error_class"] == "IdempotencyMismatch" and store.get(pid) == before
    assert len(gw.sends) == 1 and again.sends == [] and again.queries == []


@pytest.mark.parametrize("state", ["APPROVED", "UNKNOWN"])
def test_same_key_same_request_gets_the_stored_outcome(store, state):
    pid = new_id("key")
    _first_sale(store, pid, state)
    gw = FakeGateway(stq=[reply()] if state == "UNKNOWN" else [])
    outcome = sale(make_flow(store, gw), pid)  # "3.00" and the same card (amount normalised: "3" would match too)
    assert outcome["status"] == "APPROVED" and outcome.get("error_class") is None
    assert gw.sends == []
    same = sale(make_flow(store, FakeGateway()), pid, amount="3")
    assert same["status"] == "APPROVED" and same.get("error_class") is None


@pytest.mark.parametrize("first_keys,second_keys,matches", [
    ([OLD_KEY], [KEY, OLD_KEY], True),   # rotation: stored under the old key, new key first
    ([KEY, OLD_KEY], [KEY, OLD_KEY], True),
    ([KEY, OLD_KEY], [KEY], True),       # the first key's fingerprint is the one stored
    ([OLD_KEY], [KEY], False),           # the old key dropped: its records can no longer be matched
], ids=["rotated", "same-keys", "old-key-dropped-later", "old-key-dropped"])
def test_key_rotation(store, first_keys, second_keys, matches):
    pid = new_id("key")
    gw = FakeGateway([reply()])
    assert sale(make_flow(store, gw, keys=first_keys), pid)["status"] == "APPROVED"
    again = FakeGateway()
    outcome = sale(make_flow(store, again, keys=second_keys), pid)
    if matches:
        assert outcome["status"] == "APPROVED" and outcome["trans_id"] == SALE_TRANS
    else:
        assert outcome["error_class"] == "IdempotencyMismatch"
    assert len(gw.sends) == 1 and again.sends == [] and again.queries == []


def test_fingerprint_is_keyed_and_never_the_number():
    one = request_fingerprints("sale", amount="3.00", card_number=CARD["number"], card_keys=[KEY, OLD_KEY])
    assert len(one) == 2 and one[0] != one[1] and all(CARD["number"] not in f for f in one)
    assert one == request_fingerprints("sale", amount="3.00", card_number="4111 1111 1111 1111",
                                       card_keys=[KEY, OLD_KEY])
    different = [
        request_fingerprints("sale", amount="3.01", card_number=CARD["number"], card_keys=[KEY]),
        request_fingerprints("auth", amount="3.00", card_number=CARD["number"], card_keys=[KEY]),
        request_fingerprints("sale", amount="3.00", card_number=OTHER_CARD["number"], card_keys=[KEY]),
        request_fingerprints("refund", amount="3.00", target=SALE_TRANS),
        request_fingerprints("refund", amount="3.00", target=OTHER_TRANS),
    ]
    assert len({d[0] for d in different} | {one[0]}) == 6


# ================================================================================== only the lease holder writes
def test_busy_lease_of_another_worker_means_lease_busy_without_a_call(store):
    pid = new_id()
    store.claim(pid, "sale", fields={"order_id": pid}, owner="other-host:1:x", lease_seconds=60)
    gw = FakeGateway()
    with pytest.raises(LeaseBusy) as info:
        sale(make_flow(store, gw), pid)
    assert 0.5 <= info.value.countdown <= 10.0
    assert gw.sends == [] and gw.queries == []
    record = store.get(pid)
    assert record["status"] == "PENDING" and record["lease_owner"] == "other-host:1:x"


@pytest.mark.parametrize("existing", ["PENDING-live", "UNKNOWN", "APPROVED"])
def test_refuse_while_a_record_exists_returns_its_own_error_and_leaves_the_record(store, existing):
    pid = new_id()
    if existing == "APPROVED":
        approved_sale(store, pid)
    else:
        store.claim(pid, "sale", fields={"order_id": pid}, owner="other-host:1:x", lease_seconds=60, journal=True)
        if existing == "UNKNOWN":
            store.transition(pid, "UNKNOWN", owner="other-host:1:x", sent=None)
    before = store.get(pid)
    gw = FakeGateway()
    flow = make_flow(store, gw)
    outcome = checked(flow.refuse("sale", pid, "invalid input: card: sealed card data cannot be opened"))
    assert outcome["status"] == "ERROR" and outcome["error_class"] == "InvalidInput"
    assert outcome["payment_id"] == pid and "sealed card data" in outcome["message"]
    bad = sale(flow, pid, amount="-1")  # bad input while another holds it: the same
    assert bad["status"] == "ERROR" and bad["error_class"] == "InvalidInput"
    assert store.get(pid) == before
    assert gw.sends == [] and gw.queries == []


def test_refuse_without_a_record_records_a_final_error_once(store):
    pid = new_id()
    gw = FakeGateway()
    flow = make_flow(store, gw)
    first = checked(flow.refuse("sale", pid, "invalid input: bad arguments"))
    assert first["status"] == "ERROR" and store.get(pid)["status"] == "ERROR"
    again = checked(flow.refuse("sale", pid, "invalid input: bad arguments"))
    assert again == first  # the same refusal delivered again: the stored one
    assert gw.sends == [] and gw.queries == []


@pytest.mark.parametrize("bad,later", [
    (dict(amount="abc"), dict(amount="3.00")),
    (dict(amount="abc"), dict(amount="abc", card=OTHER_CARD)),  # another bad request: not the stored refusal either
    (dict(card={"number": "4111111111111112", "expire": "1230"}), dict(amount="5.00")),
], ids=["bad-amount-then-valid", "bad-then-other-bad", "bad-card-then-valid"])
def test_a_key_refused_for_bad_input_is_bound_to_that_request(store, bad, later):
    pid = new_id()
    gw = FakeGateway()
    flow = make_flow(store, gw)
    refused = sale(flow, pid, **bad)
    assert refused["status"] == "ERROR" and refused["error_class"] == "InvalidInput"
    stored = store.get(pid)
    other = sale(flow, pid, **later)
    assert other["status"] == "ERROR" and other != refused
    if later.get("amount") != "abc":
        assert other["error_class"] == "IdempotencyMismatch", other
    assert store.get(pid) == stored  # the refusal's record is left alone
    assert sale(flow, pid, **bad) == refused  # the same refused request again: the stored refusal
    assert gw.sends == [] and gw.queries == []


def test_a_refused_follow_up_key_is_bound_to_that_request(store):
    pid = new_id("refund")
    gw = FakeGateway()
    flow = make_flow(store, gw)
    refused = checked(flow.follow_up("refund", pid, trans_id="not-a-trans-id"))
    assert refused["error_class"] == "InvalidInput"
    other = checked(flow.follow_up("refund", pid, trans_id=SALE_TRANS, amount="1.00"))
    assert other["error_class"] == "IdempotencyMismatch" and gw.sends == []
    assert checked(flow.follow_up("refund", pid, trans_id="not-a-trans-id")) == refused


def test_a_foreign_transition_is_refused(store):
    pid = new_id()
    gw = FakeGateway([NotSent("refused")])
    parked(lambda: sale(make_flow(store, gw), pid))
    store.claim(pid, "sale", owner="holder", lease_seconds=60)
    before = store.get(pid)
    for owner in ("intruder", None, ""):
        assert store.transition(pid, "ERROR", owner=owner, fields={"message": "overwritten"}) is None
        assert store.transition(pid, "APPROVED", owner=owner, expect="PENDING") is None
    assert store.get(pid) == before
    assert len(gw.sends) == 1


def test_a_delivery_that_lost_its_lease_mid_call_writes_nothing(store):
    pid = new_id()

    def taken_over(call):
        holder = store.get(pid)["lease_owner"]  # say this worker's process was judged dead meanwhile
        assert store.claim(pid, "sale", owner="thief", lease_seconds=60, dead_owner=holder).kind == "resumed"
        return reply()

    gw = FakeGateway([taken_over])
    outcome = sale(make_flow(store, gw), pid)
    assert outcome["status"] == "UNKNOWN"  # the record as the new holder has it (PENDING, shown as UNKNOWN)
    record = store.get(pid)
    assert record["status"] == "PENDING" and record["lease_owner"] == "thief" and record["sent_ts"]
    assert len(gw.sends) == 1


def test_the_heartbeat_keeps_the_lease_while_a_call_is_in_flight(store, clock):
    pid = new_id()
    seen: list[str] = []

    def slow(call):
        for _ in range(6):  # 1.2 s, twice the lease: only renewals keep it
            clock.advance(0.2)
            flow.keeper.renew_due()  # one heartbeat (every lease / 3; its own thread beats in real time)
        seen.append(store.claim(pid, "sale", owner="other", lease_seconds=30).kind)
        return reply()

    gw = FakeGateway([slow])
    flow = make_flow(store, gw, lease=0.6)
    outcome = sale(flow, pid)
    assert seen == ["busy"] and outcome["status"] == "APPROVED"
    assert len(gw.sends) == 1


def test_the_heartbeat_stops_at_the_operations_deadline(store):
    pid = new_id()
    store.claim(pid, "sale", owner="w1", lease_seconds=30)
    keeper = LeaseKeeper(store, 30)
    with keeper.holding(pid, "w1", time.monotonic() + 60):
        assert keeper.renew_due() == 1
    with keeper.holding(pid, "w1", time.monotonic() - 1):
        assert keeper.renew_due() == 0  # past its wall-time budget: the lease is left to lapse
    with keeper.holding(pid, "someone-else", time.monotonic() + 60):
        assert keeper.renew_due() == 0


# ================================================================================== redelivered, dead owners
@pytest.mark.parametrize("stq_answer,status,check_in", [
    (reply(), "APPROVED", None),
    (None, "UNKNOWN", HORIZON + 1),  # absent, but the earlier delivery's send may still commit
    (NotSent("stq down"), "UNKNOWN", None),
], ids=["found", "absent-within-horizon", "cannot-tell"])
def test_redelivered_message_without_a_record_asks_stq_before_the_first_send(store, stq_answer, status, check_in):
    pid = new_id()
    gw = FakeGateway(stq=[stq_answer])
    flow = make_flow(store, gw)
    if status == "UNKNOWN":
        out = parked(lambda: sale(flow, pid, redelivered=True))
        assert out.parked_as == "UNKNOWN" and out.check_in == (pytest.approx(check_in) if check_in else None)
        assert store.get(pid)["sent_ts"]
    else:
        outcome = sale(flow, pid, redelivered=True)
        assert outcome["status"] == "APPROVED" and outcome["reconciled"] == "stq"
    assert gw.sends == [] and len(gw.queries) == 1


def test_redelivered_message_past_the_horizon_and_absent_is_sent_once(store, clock):
    pid = new_id()
    first = FakeGateway(stq=[None])
    parked(lambda: sale(make_flow(store, first, horizon=TINY), pid, redelivered=True))
    clock.advance(TINY + 0.1)
    gw = FakeGateway([reply()], stq=[None])
    assert sale(make_flow(store, gw, horizon=TINY), pid, redelivered=True)["status"] == "APPROVED"
    assert first.sends == [] and len(gw.sends) == 1 and gw.sends[0]["order_id"] == pid


@pytest.mark.parametrize("horizon,wait,stq_answer,sends,status", [
    (HORIZON, 0.0, None, 0, "UNKNOWN"),       # its attempt may have been sent until its lease ended
    (HORIZON, 0.0, reply(), 0, "APPROVED"),
    (HORIZON, 0.0, NotSent("down"), 0, "UNKNOWN"),
    (TINY, TINY + 0.1, None, 1, "APPROVED"),  # lease end + horizon passed, absent: never landed
], ids=["absent-within", "found", "cannot-tell", "absent-past-horizon"])
def test_expired_lease_of_an_attempt_in_flight_counts_as_maybe_sent_until_the_lease_ended(
        store, clock, horizon, wait, stq_answer, sends, status):
    pid = new_id()
    first = store.claim(pid, "sale", fields={"order_id": pid, "amount": "3.00"}, owner="gone-host:1:x",
                        lease_seconds=0.2, journal=True)
    lease_until = float(first.record["lease_until"])
    clock.advance(0.3 + wait)
    gw = FakeGateway([reply()] * sends, stq=[stq_answer])
    flow = make_flow(store, gw, horizon=horizon)
    if status == "UNKNOWN":
        out = parked(lambda: sale(flow, pid))
        assert out.parked_as == "UNKNOWN"
        record = store.get(pid)
        assert float(record["sent_ts"]) == pytest.approx(lease_until, abs=0.002)
        if stq_answer is None:
            assert out.check_in < horizon + 1  # counted from the end of the lease, not from now
    else:
        assert sale(flow, pid)["status"] == status
    assert len(gw.sends) == sends and len(gw.queries) == 1


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("stq_answer,status", [(None, "UNKNOWN"), (reply(), "APPROVED")])
def test_a_dead_owners_live_lease_is_taken_over_and_its_attempt_counts_as_sent_until_now(store, stq_answer, status):
    pid = new_id()
    dead = f"{socket.gethostname()}:{_dead_pid()}:deadbeef"
    store.claim(pid, "sale", fields={"order_id": pid}, owner=dead, lease_seconds=60, journal=True)
    gw = FakeGateway(stq=[stq_answer])
    flow = make_flow(store, gw)
    if status == "UNKNOWN":
        out = parked(lambda: sale(flow, pid))
        assert out.parked_as == "UNKNOWN" and out.check_in == pytest.approx(HORIZON + 1, abs=0.1)
    else:
        assert sale(flow, pid)["status"] == "APPROVED"
    assert store.get(pid)["attempts"] == 2 and store.get(pid).get("lease_owner") != dead
    assert gw.sends == [] and len(gw.queries) == 1


# ================================================================================== DUPLICATE
def test_verified_duplicate_with_stq_absent_and_nothing_sent_before_is_resent_with_override(store):
    gw = FakeGateway([parsed(R.duplicate()), reply()], stq=[None])
    pid = new_id()
    outcome = sale(make_flow(store, gw), pid)
    assert outcome["status"] == "APPROVED"
    assert [s["duplicate_override"] for s in gw.sends] == [False, True]
    assert [s["order_id"] for s in gw.sends] == [pid, pid]
    assert store.get(pid)["sends"] == "2" and len(gw.queries) == 1


@pytest.mark.parametrize("stq_answer,status,sends", [
    (reply(), "APPROVED", 1),             # the DUPLICATE was of our own earlier charge: adopted
    (NotSent("stq down"), "UNKNOWN", 1),  # cannot tell: parked, not resent
], ids=["ours", "cannot-tell"])
def test_duplicate_reconciled_through_stq(store, stq_answer, status, sends):
    gw = FakeGateway([duplicate()], stq=[stq_answer])
    pid = new_id()
    flow = make_flow(store, gw)
    if status == "UNKNOWN":
        assert parked(lambda: sale(flow, pid)).parked_as == "UNKNOWN"
        assert not store.get(pid).get("sent_ts")  # the gateway refused it: this attempt did not land
    else:
        assert sale(flow, pid)["status"] == status
    assert len(gw.sends) == sends


def test_duplicate_after_an_earlier_maybe_sent_attempt(store, clock):
    pid = new_id()
    late_commit_first_delivery(store, pid, TINY)
    # within the horizon: the flow does not send at all, so no DUPLICATE can be overridden
    within = FakeGateway(stq=[None])
    assert parked(lambda: sale(make_flow(store, within, horizon=HORIZON), pid)).parked_as == "UNKNOWN"
    assert within.sends == []
    # past the horizon (absent): the earlier attempt never landed; a DUPLICATE now is of another operation
    clock.advance(TINY + 0.1)
    gw = FakeGateway([duplicate(), reply()], stq=[None, None])
    assert sale(make_flow(store, gw, horizon=TINY), pid)["status"] == "APPROVED"
    assert [s["duplicate_override"] for s in gw.sends] == [False, True] and len(gw.queries) == 2


def test_every_send_answered_duplicate_stops_after_max_sends_as_unknown(store):
    gw = FakeGateway([duplicate()] * MAX_SENDS, stq=[None] * MAX_SENDS)
    pid = new_id()
    out = parked(lambda: sale(make_flow(store, gw), pid))
    assert out.parked_as == "UNKNOWN" and store.get(pid)["status"] == "UNKNOWN"
    assert len(gw.sends) == MAX_SENDS and [s["duplicate_override"] for s in gw.sends] == [False, True, True]


# ================================================================================== unstamped replies
UNSTAMPED = {
    "approved": R.unstamped(R.approved()),
    "declined": R.unstamped(R.declined()),
    "security-error": dict(R.SECURITY_ERROR),
    "missing": dict(R.MISSING),
    "error-other-secret": R.error("INVALID AMOUNT FORMAT", secret="someone-else"),
    "duplicate": {"Result": "APPROVED", "MESSAGE": "DUPLICATE"},
}


@pytest.mark.parametrize("name", list(UNSTAMPED))
def test_an_unstamped_reply_is_never_final(store, name):
    answer = parsed(UNSTAMPED[name])
    assert isinstance(answer, OutcomeUnknown) and not answer.duplicate
    gw = FakeGateway([answer], stq=[None])
    pid = new_id()
    out = parked(lambda: sale(make_flow(store, gw), pid))
    assert out.parked_as == "UNKNOWN" and out.check_in == pytest.approx(HORIZON + 1)  # reconciled, not settled
    assert store.get(pid)["status"] == "UNKNOWN" and store.get(pid)["sent_ts"]
    assert len(gw.sends) == 1 and gw.sends[0]["duplicate_override"] is False


def test_an_unstamped_already_voided_is_not_counted_as_done(store):
    sold = approved_sale(store)
    gw = FakeGateway([parsed(R.unstamped(R.error("Already Voided")))], stq=[None])
    out = parked(lambda: make_flow(store, gw).follow_up("void", new_id("void"), trans_id=SALE_TRANS,
                                                          parent=sold["payment_id"]))
    assert out.parked_as == "UNKNOWN" and store.get(sold["payment_id"])["status"] == "APPROVED"
    assert len(gw.sends) == 1


# Issue 23: BluePay's stq rows carry no stamp; one that does must verify.
@pytest.mark.parametrize("row,status", [
    (R.stq_stamped(order_id="o"), "APPROVED"),
    (R.stq_row(order_id="o"), "APPROVED"),
    (R.stq_stamped(order_id="o", secret="someone-else"), "UNKNOWN"),
], ids=["stamped", "unstamped", "other-secret"])
def test_an_stq_row_is_adopted_unless_its_stamp_fails(store, row, status):
    try:
        answer = parsed_stq(row)
    except OutcomeUnknown as exc:  # what the client raises for a row whose stamp does not verify
        answer = exc
    gw = FakeGateway([OutcomeUnknown("read timeout")], stq=[answer])
    pid = "o"  # the rows' ORDER_ID: only a row under ours is ever adopted
    flow = make_flow(store, gw)
    if status == "UNKNOWN":
        assert parked(lambda: sale(flow, pid)).parked_as == "UNKNOWN"
    else:
        assert sale(flow, pid)["status"] == "APPROVED"
    assert len(gw.sends) == 1


# ================================================================================== voids, settled, follow-ups
def test_void_after_a_declined_sale_is_skipped_without_a_call(store):
    pid = new_id("sale")
    declined = sale(make_flow(store, FakeGateway([reply("DECLINED", "Declined Sale", amount="4.00")])), pid,
                    amount="4.00", then_void=True)
    gw = FakeGateway()
    outcome = checked(make_flow(store, gw).void_after(declined))
    assert outcome["status"] == "SKIPPED" and "DECLINED" in outcome["message"]
    assert outcome["payment_id"] == f"{pid}:void"
    assert gw.sends == [] and gw.queries == []
    assert store.get(pid)["status"] == "DECLINED"


def _declined_chain_sale(store):
    pid = new_id("sale")
    return sale(make_flow(store, FakeGateway([reply("DECLINED", "Declined Sale", amount="4.00")])), pid,
                amount="4.00", then_void=True)


def test_a_skip_whose_delivery_died_between_its_claim_and_its_record_is_skipped_by_the_next_delivery(store):
    # The chain link's claim created the void's record (PENDING, leased) and the worker was killed before it recorded
    # SKIPPED. The redelivered link used to return that PENDING record and leave it so (seen once in
    # test_killed_workers_lose_nothing_and_charge_once: "its chained void ended PENDING").
    declined = _declined_chain_sale(store)
    void_id = f"{declined['payment_id']}:void"
    dead = f"{socket.gethostname()}:{_dead_pid()}:deadbeef"
    assert store.claim(void_id, "void", fields={"parent": declined["payment_id"], "order_id": void_id}, owner=dead,
                       lease_seconds=60, mode="create_only").kind == "claimed"
    gw = FakeGateway()
    outcome = checked(make_flow(store, gw).void_after(declined))
    assert outcome["status"] == "SKIPPED" and outcome["payment_id"] == void_id
    assert store.get(void_id)["status"] == "SKIPPED"
    assert gw.sends == [] and gw.queries == []


def test_a_skip_whose_live_holder_has_not_recorded_it_yet_is_re_queued_not_returned_pending(store):
    declined = _declined_chain_sale(store)
    void_id = f"{declined['payment_id']}:void"
    store.claim(void_id, "void", fields={"parent": declined["payment_id"], "order_id": void_id}, owner="other-host:1:x",
                lease_seconds=60, mode="create_only")
    with pytest.raises(LeaseBusy):
        make_flow(store, FakeGateway()).void_after(declined)
    assert store.get(void_id)["status"] == "PENDING"


def test_a_skip_taken_over_from_a_record_with_an_attempt_out_is_left_to_the_sweep(store, clock):
    # Not a skip's own record (an attempt may have reached the gateway): only stq may settle it, never SKIPPED.
    declined = _declined_chain_sale(store)
    void_id = f"{declined['payment_id']}:void"
    store.claim(void_id, "void", fields={"parent": declined["payment_id"], "order_id": void_id}, owner="other-host:1:x",
                lease_seconds=1, journal=True)
    clock.advance(2)
    gw = FakeGateway()
    outcome = make_flow(store, gw).void_after(declined)
    assert outcome["status"] == "UNKNOWN" and store.get(void_id)["status"] == "UNKNOWN"
    assert gw.sends == [] and gw.queries == []


def test_void_after_an_approved_sale_voids_it_and_marks_the_sale_voided(store):
    sold = approved_sale(store, then_void=True)
    gw = FakeGateway([reply(message="Approved Void", trans_type="VOID", trans_id=OTHER_TRANS)])
    outcome = checked(make_flow(store, gw).void_after(sold))
    assert outcome["status"] == "APPROVED" and outcome["message"] == "Approved Void"
    assert gw.sends == [{"verb": "void", "trans_id": SALE_TRANS, "order_id": f"{sold['payment_id']}:void"}]
    sale_record = store.get(sold["payment_id"])
    assert sale_record["status"] == "VOIDED" and sale_record["voided_by"] == f"{sold['payment_id']}:void"
    again = FakeGateway()  # the chain link again (redelivery): the void's record is final, nothing is sent
    assert make_flow(store, again).void_after(sold)["status"] == "APPROVED" and again.sends == []


def test_already_voided_counts_as_done(store):
    sold = approved_sale(store)
    gw = FakeGateway([Rejected(Response(status="ERROR", message=ALREADY_VOIDED, trans_type="VOID"))], stq=[None])
    outcome = checked(make_flow(store, gw).follow_up("void", new_id("void"), trans_id=SALE_TRANS,
                                                     parent=sold["payment_id"]))
    assert outcome["status"] == "APPROVED" and "counted as done" in outcome["message"]
    assert len(gw.sends) == 1 and len(gw.queries) == 1
    assert store.get(sold["payment_id"])["status"] == "VOIDED"


def test_already_voided_by_an_earlier_delivery_of_the_same_void_records_that_void(store):
    sold = approved_sale(store)
    void_id = new_id("void")
    ours = reply(message="Approved Void", trans_type="VOID", trans_id=OTHER_TRANS, order_id=void_id)
    gw = FakeGateway([Rejected(Response(status="ERROR", message=ALREADY_VOIDED, trans_type="VOID"))], stq=[ours])
    outcome = checked(make_flow(store, gw).follow_up("void", void_id, trans_id=SALE_TRANS, parent=sold["payment_id"]))
    assert outcome["status"] == "APPROVED" and outcome["trans_id"] == OTHER_TRANS and outcome["reconciled"] == "stq"
    assert len(gw.sends) == 1 and gw.queries == [{"trans_id": None, "order_id": void_id}]
    assert store.get(sold["payment_id"])["status"] == "VOIDED"


@pytest.mark.parametrize("operation,message,refund_needed", [
    ("void", "Cannot VOID a settled transaction.", True),   # the gateway's own words
    ("void", "CANNOT VOID A SETTLED TRANSACTION", True),
    ("void", "  Cannot VOID a settled transaction.", True),
    ("void", "Transaction settled", False),                 # mentions "settled", is not the refusal
    ("void", "Batch not settled yet; try later", False),
    ("void", "Error: cannot void a settled transaction", False),
    ("void", "Cannot VOID a CAPTURED AUTH (void the CAPTURE instead).", False),
    ("refund", "Cannot VOID a settled transaction.", False),  # only a void's refusal means "refund it"
], ids=["exact", "upper", "leading-space", "settled-word", "not-settled", "prefixed", "captured", "refund"])
def test_settled_refusal_is_matched_on_the_gateways_message_only(store, operation, message, refund_needed):
    sold = approved_sale(store)
    gw = FakeGateway([Rejected(Response(status="ERROR", message=message, trans_type=operation.upper()))])
    outcome = checked(make_flow(store, gw).follow_up(operation, new_id(operation), trans_id=SALE_TRANS,
                                                     parent=sold["payment_id"]))
    assert outcome["status"] == "ERROR"
    assert (outcome.get("refund_needed") == "1") is refund_needed
    assert outcome["message"].startswith("refund needed") is refund_needed
    assert store.get(sold["payment_id"])["status"] == "APPROVED"  # not voided
    assert len(gw.sends) == 1 and gw.queries == []


# ================================================================================== repairs
def test_capture_marks_the_auth_captured(store):
    authorized = approved_auth(store)
    gw = FakeGateway([reply(message="Approved Capture", trans_type="CAPTURE", trans_id=OTHER_TRANS)])
    outcome = checked(make_flow(store, gw).follow_up("capture", new_id("capture"), trans_id=SALE_TRANS,
                                                     amount="5.00"))
    assert outcome["status"] == "APPROVED"
    assert gw.sends[0]["trans_id"] == SALE_TRANS and str(gw.sends[0]["amount"]) == "5.00" and len(gw.sends) == 1
    auth = store.get(authorized["payment_id"])
    assert auth["status"] == "CAPTURED" and auth["captured_by"] == outcome["payment_id"]


def test_refund_answered_as_a_void_marks_the_sale_voided(store):
    sold = approved_sale(store)
    gw = FakeGateway([reply(message="Approved Void", trans_type="VOID", trans_id=OTHER_TRANS)])
    refunded = checked(make_flow(store, gw).follow_up("refund", new_id("refund"), trans_id=SALE_TRANS))
    assert refunded["status"] == "APPROVED"
    assert store.get(sold["payment_id"])["status"] == "VOIDED" and len(gw.sends) == 1


@pytest.mark.parametrize("amounts,after", [
    (["1.00", "2.00"], [("PARTIALLY_REFUNDED", "1.00"), ("REFUNDED", "3.00")]),
    (["0.50", "1.00", "1.50"], [("PARTIALLY_REFUNDED", "0.50"), ("PARTIALLY_REFUNDED", "1.50"), ("REFUNDED", "3.00")]),
    (["1.00", None], [("PARTIALLY_REFUNDED", "1.00"), ("REFUNDED", "3.00")]),  # None: what is left of it
], ids=["1+2", "0.5+1+1.5", "1+rest"])
def test_partial_refunds_accumulate(store, amounts, after):
    sold = approved_sale(store)
    took = [amount or "3.00" if i == 0 else amount or "2.00" for i, amount in enumerate(amounts)]  # the gateway's
    gw = FakeGateway([reply(message="Approved Return", trans_type="REFUND", trans_id=f"10000000090{i}", amount=t)
                      for i, t in enumerate(took)])
    flow = make_flow(store, gw)
    for amount, (status, total) in zip(amounts, after, strict=True):
        refunded = checked(flow.follow_up("refund", new_id("refund"), trans_id=SALE_TRANS, amount=amount))
        assert refunded["status"] == "APPROVED"
        record = store.get(sold["payment_id"])
        assert (record["status"], record["refunded_amount"]) == (status, total)
    assert len(gw.sends) == len(amounts)


@pytest.mark.parametrize("first_recorded", ["rest", "partial"])
def test_a_refund_without_an_amount_counts_what_the_gateway_says_it_took(store, first_recorded):
    """The gateway refunded 1.00 (partial), then the rest, 2.00 (no amount): whichever answer the store records first,
    the sale ends REFUNDED with 3.00 refunded, never 4.00 (the rest counted as "total minus what the store knew")."""
    sold = approved_sale(store)
    answers = {"partial": reply(message="Approved Return", trans_type="REFUND", trans_id=OTHER_TRANS, amount="1.00"),
               "rest": reply(message="Approved Return", trans_type="REFUND", trans_id=THIRD_TRANS, amount="2.00")}
    asked = {"partial": "1.00", "rest": None}
    order = [first_recorded, "partial" if first_recorded == "rest" else "rest"]
    gw = FakeGateway([answers[name] for name in order])
    flow = make_flow(store, gw)
    ids = {}
    for name in order:
        ids[name] = new_id("refund")
        assert checked(flow.follow_up("refund", ids[name], trans_id=SALE_TRANS, amount=asked[name]))["status"] == \
            "APPROVED"
    record = store.get(sold["payment_id"])
    assert (record["status"], record["refunded_amount"]) == ("REFUNDED", "3.00")
    assert store.get(ids["rest"])["amount"] == "2.00"  # the refund says what it took
    assert len(gw.sends) == 2


def test_a_refund_without_an_amount_adopted_from_stq_counts_the_rows_amount(store):
    sold = approved_sale(store)
    pid = new_id("refund")
    row = reply(message="Approved Return", trans_type="REFUND", trans_id=OTHER_TRANS, amount="1.25", order_id=pid)
    gw = FakeGateway([OutcomeUnknown("read timeout")], stq=[row])
    assert checked(make_flow(store, gw).follow_up("refund", pid, trans_id=SALE_TRANS))["status"] == "APPROVED"
    record = store.get(sold["payment_id"])
    assert (record["status"], record["refunded_amount"]) == ("PARTIALLY_REFUNDED", "1.25")
    assert store.get(pid)["amount"] == "1.25" and store.get(pid)["reconciled"] == "stq"


def test_a_void_of_a_capture_reopens_the_auth(store):
    authorized = approved_auth(store)
    gw = FakeGateway([reply(message="Approved Capture", trans_type="CAPTURE", trans_id=OTHER_TRANS),
                      reply(message="Approved Void", trans_type="VOID", trans_id=THIRD_TRANS)])
    flow = make_flow(store, gw)
    captured = checked(flow.follow_up("capture", new_id("capture"), trans_id=SALE_TRANS))
    assert store.get(authorized["payment_id"])["status"] == "CAPTURED"
    assert checked(flow.follow_up("void", new_id("void"), trans_id=OTHER_TRANS))["status"] == "APPROVED"
    assert store.get(captured["payment_id"])["status"] == "VOIDED"
    auth = store.get(authorized["payment_id"])
    assert auth["status"] == "APPROVED" and not auth.get("captured_by")
    assert [r["payment_id"] for r in store.open_auths(-1)] == [authorized["payment_id"]]
    assert len(gw.sends) == 2


def _svc(store, flow):
    # retention off: no archive here (retention has tests of its own)
    return types.SimpleNamespace(settings=Settings(retention=0), store=store, flow=flow)


def test_sweep_repairs_a_follow_up_whose_reflection_was_skipped(store):
    sold = approved_sale(store)
    void_id = new_id("void")
    # the void went through, but its original was not updated (a crash of a worker that reflected separately)
    store.claim(void_id, "void", fields={"target": SALE_TRANS, "parent": sold["payment_id"]}, owner="w",
                lease_seconds=30)
    store.transition(void_id, "APPROVED", owner="w", expect="PENDING",
                     fields={"trans_id": OTHER_TRANS, "message": "Approved Void"})
    assert store.get(sold["payment_id"])["status"] == "APPROVED" and store.reflect_due() == [void_id]
    gw = FakeGateway()
    report = run_sweep(_svc(store, make_flow(store, gw)))
    assert report["ran"] and report["repair_reflected"] == 1
    assert store.get(sold["payment_id"])["status"] == "VOIDED" and store.reflect_due() == []
    assert make_flow(store, gw).repair(void_id) == "nothing"  # done once
    assert gw.sends == [] and gw.queries == []


def test_a_follow_up_of_a_non_final_original_is_reflected_once_the_original_is_final(store):
    pid = new_id("sale")
    store.claim(pid, "sale", fields={"amount": "3.00"}, owner="slow", lease_seconds=60)  # the sale still in flight
    gw = FakeGateway([reply(message="Approved Void", trans_type="VOID", trans_id=OTHER_TRANS)])
    flow = make_flow(store, gw)
    void_id = new_id("void")
    assert checked(flow.follow_up("void", void_id, trans_id=SALE_TRANS, parent=pid))["status"] == "APPROVED"
    assert store.get(pid)["status"] == "PENDING" and flow.repair(void_id) == "original_not_final"
    store.transition(pid, "APPROVED", owner="slow", fields={"trans_id": SALE_TRANS})
    assert flow.repair(void_id) == "reflected" and store.get(pid)["status"] == "VOIDED"
    assert len(gw.sends) == 1


# ================================================================================== the sweep's reconcile
def _left(store, state, *, lease=30.0):
    """A record a delivery left non-final, as the sweep finds it."""
    pid = new_id(state)
    store.claim(pid, "sale", fields={"order_id": pid, "amount": "3.00"}, owner="gone", lease_seconds=lease,
                journal=True)
    if state == "unknown":
        store.transition(pid, "UNKNOWN", owner="gone", sent=None, fields={"message": "read timeout"})
    elif state == "retrying":
        store.transition(pid, "RETRYING", owner="gone", sent=False, fields={"message": "refused"})
    return pid


@pytest.mark.parametrize("state,horizon,stq_answer,result,status", [
    ("unknown", TINY, reply(), "adopted", "APPROVED"),
    ("unknown", TINY, None, "not_charged", "ERROR"),          # absent past the horizon: proven not charged
    ("unknown", HORIZON, None, "still_unknown", "UNKNOWN"),   # absent within the horizon proves nothing yet
    ("unknown", TINY, NotSent("stq down"), "still_unknown", "UNKNOWN"),
    ("retrying", HORIZON, None, "not_charged", "ERROR"),      # nothing was ever sent
    ("retrying", HORIZON, reply(), "adopted", "APPROVED"),
    ("in_flight", HORIZON, None, "still_unknown", "UNKNOWN"),  # a dead owner's attempt: maybe sent
    ("in_flight", HORIZON, reply(), "adopted", "APPROVED"),
], ids=["unknown-found", "unknown-absent-past", "unknown-absent-within", "unknown-cannot-tell",
        "retrying-absent", "retrying-found", "in-flight-absent-within", "in-flight-found"])
def test_reconcile(store, clock, state, horizon, stq_answer, result, status):
    pid = _left(store, state, lease=0.1 if state == "in_flight" else 30.0)
    clock.advance(max(0.2, horizon + 0.1 if horizon == TINY else 0.2))
    gw = FakeGateway(stq=[stq_answer])
    assert make_flow(store, gw, horizon=horizon).reconcile(store.get(pid), give_up_after=3600) == result
    record = store.get(pid)
    assert record["status"] == status
    if result == "not_charged":
        assert record["not_charged"] == "1" and "nothing was charged" in record["message"]
    if result == "still_unknown" and stq_answer is None:
        # the next look is due when the horizon has passed, not after the long back-off
        assert float(record["next_check_ts"]) - float(record["updated_ts"]) <= horizon + 1
    assert gw.sends == [] and len(gw.queries) == 1


def test_reconcile_waits_longer_each_time_stq_cannot_tell_then_gives_up_for_a_human(store, clock):
    pid = _left(store, "unknown")
    flow = make_flow(store, FakeGateway(stq=[NotSent("down")] * 3))
    assert flow.reconcile(store.get(pid), give_up_after=3600, retry_base=0.5) == "still_unknown"
    first = store.get(pid)
    first_wait = float(first["next_check_ts"]) - float(first["updated_ts"])
    assert first["status"] == "UNKNOWN" and first["reconcile_tries"] == "1"
    assert first_wait == pytest.approx(0.5, abs=0.01)
    assert flow.reconcile(store.get(pid), give_up_after=3600, retry_base=0.5) == "skipped"  # not due yet
    clock.advance(0.55)
    assert flow.reconcile(store.get(pid), give_up_after=3600, retry_base=0.5) == "still_unknown"
    second = store.get(pid)
    assert second["reconcile_tries"] == "2"
    assert float(second["next_check_ts"]) - float(second["updated_ts"]) == pytest.approx(1.0, abs=0.01)
    clock.advance(1.05)
    assert flow.reconcile(store.get(pid), give_up_after=0, retry_base=0.5) == "gave_up"
    final = store.get(pid)
    assert final["status"] == "ERROR" and final["needs_human"] == "1"
    assert flow.gateway.sends == [] and len(flow.gateway.queries) == 3


@pytest.mark.parametrize("state", ["live-holder", "final"])
def test_reconcile_skips_what_it_may_not_touch(store, state):
    pid = new_id()
    if state == "final":
        approved_sale(store, pid)
    else:
        store.claim(pid, "sale", fields={"order_id": pid}, owner="live-worker", lease_seconds=60)
    before = store.get(pid)
    gw = FakeGateway()
    assert make_flow(store, gw).reconcile(before, give_up_after=3600) == "skipped"
    assert gw.sends == [] and gw.queries == [] and store.get(pid) == before


def test_the_sweep_reconciles_stale_records(store, clock):
    past = _left(store, "unknown")
    retrying = _left(store, "retrying")
    gw = FakeGateway(stq=[reply(), None])
    svc = types.SimpleNamespace(settings=Settings(reconcile_after=0, retention=0), store=store,
                                flow=make_flow(store, gw, horizon=TINY))
    clock.advance(TINY + 0.1)
    report = run_sweep(svc)
    assert report["reconcile_adopted"] == 1 and report["reconcile_not_charged"] == 1
    assert {store.get(past)["status"], store.get(retrying)["status"]} == {"APPROVED", "ERROR"}
    assert gw.sends == [] and len(gw.queries) == 2


# ================================================================================== task outcomes
def test_no_outcome_a_task_returns_is_pending_or_retrying(store):
    held = new_id()
    store.claim(held, "sale", fields={"order_id": held}, owner="live", lease_seconds=60)
    retrying = new_id()
    gw = FakeGateway([NotSent("refused")])
    flow = make_flow(store, gw)
    parked(lambda: sale(flow, retrying))
    assert store.get(held)["status"] == "PENDING" and store.get(retrying)["status"] == "RETRYING"
    for pid in (held, retrying):
        assert checked(flow.current_outcome(pid))["status"] == "UNKNOWN"
    assert flow.current_outcome(new_id())["status"] == "UNKNOWN"
    assert len(gw.sends) == 1


def test_give_up_retrying_that_stalled_past_its_lease_cannot_overwrite_a_final_outcome(store, clock,
                                                                                      monkeypatch):
    """give_up_retrying claims the record, then writes it: if it stalls past its lease in between, another
    delivery may take over and record the real outcome, which the late write must not replace."""
    pid = new_id()
    parked(lambda: sale(make_flow(store, FakeGateway([OutcomeUnknown("timeout")], stq=[None])), pid))
    gw = FakeGateway(stq=[reply()])
    slow = make_flow(store, FakeGateway(), lease=0.1)
    real_transition = store.transition
    stalls: list[str] = []

    def stalled(payment_id, status, **kw):
        if not stalls:  # the give-up's own write
            stalls.append(status)
            clock.advance(0.2)  # its lease lapses; a redelivery adopts the charge meanwhile
            assert sale(make_flow(store, gw), pid)["status"] == "APPROVED"
        return real_transition(payment_id, status, **kw)

    monkeypatch.setattr(store, "transition", stalled)
    outcome = slow.give_up_retrying("sale", pid, "gateway unreachable")
    monkeypatch.setattr(store, "transition", real_transition)
    assert stalls == ["UNKNOWN"]
    assert outcome["status"] == "APPROVED" and store.get(pid)["status"] == "APPROVED"
    assert gw.sends == [] and len(gw.queries) == 1


def test_the_redis_store_is_what_the_flow_calls_a_store(store) -> None:
    # Checked by mypy (./dev lint): every method of worker.payments.flow.Store, with compatible signatures.
    from worker.payments.flow import Store
    from worker.store import ResultsStore

    real: Store = ResultsStore(store.redis, prefix=store.prefix)
    assert callable(real.claim) and callable(real.transition)
