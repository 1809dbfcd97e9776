"""The tasks' broker policies (tasks/payments.py, ``PaymentTask.__call__``), as unit tests: a delivery runs the
task as the worker does (Celery's request pushed, then the task called), over the worker's own wiring with the
in-memory store and a scripted gateway (an app of their own from ``create_app``, made current: no Redis, no
broker, no mocks).

What a delivery may end in: an outcome (returned), or a re-queue (Celery's ``Retry``, with its countdown; raised
only, never published: the request is eager, as under ``Task.apply``).
"""
from __future__ import annotations

import contextlib

import celery
import pytest
import redis
from celery.exceptions import MaxRetriesExceededError, Retry, SoftTimeLimitExceeded

from tasks import auth, refund, sale, void
from tasks.payments import MAX_BUSY_RETRIES, outage_countdown
from tests.support.env import TEST_CARD_KEY
from tests.support.fake_gateway import SALE_TRANS, FakeGateway, reply
from tests.support.redis_store import StoreUnderTest, new_store
from tests.support.unit_services import UnitServices
from worker.broker.app import create_app, current
from worker.config import Settings
from worker.gateway import NotSent, OutcomeUnknown

CARD = {"number": "4111111111111111", "expire": "1230", "cvv2": "123"}
TASK_ID = "msg-aaaa"
SETTINGS = Settings(card_key=TEST_CARD_KEY, outage_retries=5, outage_backoff=5.0, outage_backoff_max=60.0,
                    visibility_timeout=300.0, commit_horizon_setting=60.0)


@pytest.fixture
def wire(store):
    """wire(gateway, **settings): the services every task of this test uses (an app of its own, current)."""
    with contextlib.ExitStack() as stack:
        def wire(gateway, **settings):
            svc = UnitServices(Settings(**{**SETTINGS.__dict__, **settings}), store, gateway)
            stack.enter_context(current(create_app(svc.settings, services=svc, main="unit-task-policies")))
            return svc

        yield wire


def deliver(task, *args, task_id=TASK_ID, retries=0, **kwargs):
    """One delivery of a message of ``task`` by the test's app (the current one): its outcome, or the ``Retry`` it
    raises (a re-queue)."""
    task = celery.current_app.tasks[task.name]
    task.push_request(id=task_id, task=task.name, args=list(args), kwargs=kwargs, retries=retries,
                      called_directly=False, is_eager=True, delivery_info={})
    try:
        return task(*args, **kwargs)
    finally:
        task.pop_request()


def requeued(call) -> Retry:
    with pytest.raises(Retry) as info:
        call()
    return info.value


# ================================================================================== refused: a recorded ERROR
@pytest.mark.parametrize("task,args,kwargs,named", [
    (sale, (), {"amount": "3.00"}, "card"),                                   # missing (no card, no token)
    (sale, ("3.00", CARD), {"colour": "blue"}, "colour"),                     # unknown
    (sale, ("3.00", CARD, *[None] * 8, "extra"), {}, "positional"),           # too many
    (refund, (), {"amount": "1.00"}, "trans_id"),
    (void, (SALE_TRANS,), {"amount": "1.00"}, "amount"),                      # void takes no amount
], ids=["missing", "unknown-keyword", "too-many", "refund-missing-trans-id", "void-amount"])
def test_bad_arguments_are_a_recorded_error_not_a_lost_job(store, wire, task, args, kwargs, named):
    gw = FakeGateway()
    wire(gw)
    outcome = deliver(task, *args, **kwargs)
    assert outcome["status"] == "ERROR" and outcome["error_class"] == "InvalidInput"
    # a sale's card is optional in the signature (a token may stand for it): the flow names it when neither is there
    assert ("bad arguments" in outcome["message"] or "invalid input" in outcome["message"])
    assert named in outcome["message"]
    assert outcome["payment_id"] == TASK_ID and store.get(TASK_ID)["status"] == "ERROR"
    assert gw.sends == [] and gw.queries == []


@pytest.mark.parametrize("kwargs,named", [
    ({"idempotency_key": ""}, "idempotency_key"),
    ({"idempotency_key": True}, "idempotency_key"),
    ({"idempotency_key": "k" * 101}, "idempotency_key"),
    ({"idempotency_key": "key\n1"}, "idempotency_key"),
    ({"idempotency_key": {"sealed_id": "not-a-token", "masked": "xxxxxxxxxxxx1111"}}, "idempotency_key"),
    ({"order_id": {"sealed_id": "not-a-token", "masked": "xxxxxxxxxxxx1111"}}, "order_id"),
    ({"idempotency_key": "key "}, "idempotency_key"),   # a message that did not come through delay(): the same rule
    ({"idempotency_key": " key"}, "idempotency_key"),
    ({"idempotency_key": "a key"}, "idempotency_key"),
    ({"idempotency_key": "4111 1111 1111 1111"}, "idempotency_key"),  # spaces: refused whatever it looks like
    ({"card": {"invalid": "card data refused at publish"}}, "card"),
    ({"card": {"sealed": "not-a-token", "masked": "xxxxxxxxxxxx1111"}}, "card"),
], ids=["empty-key", "bool-key", "long-key", "control-char-key", "sealed-key-does-not-open",
        "sealed-order-id-does-not-open", "trailing-space-key", "leading-space-key", "inner-space-key",
        "spaced-card-number-key", "invalid-marker", "seal-does-not-open"])
def test_invalid_input_found_by_the_task_is_refused(store, wire, kwargs, named):
    gw = FakeGateway()
    wire(gw)
    outcome = deliver(sale, **{"amount": "3.00", "card": CARD, **kwargs})
    assert outcome["status"] == "ERROR" and outcome["error_class"] == "InvalidInput"
    assert f"invalid input: {named}" in outcome["message"] and "4111" not in repr(outcome)
    assert outcome["payment_id"] == TASK_ID and store.get(TASK_ID)["status"] == "ERROR"
    assert gw.sends == []


@pytest.mark.parametrize("key", ["4111-1111-1111-1111", 5555555555554444, 42])
def test_a_card_like_or_int_idempotency_key_is_accepted(store, wire, key):
    gw = FakeGateway([reply()])
    wire(gw)
    outcome = deliver(sale, "3.00", CARD, idempotency_key=key)
    assert outcome["status"] == "APPROVED" and len(gw.sends) == 1
    assert str(key) not in store.dump() or key == 42


def test_live_mode_refuses_a_card_like_identifier_that_arrived_in_clear(store, wire):
    gw = FakeGateway()
    svc = wire(gw, bluepay_mode="LIVE")
    outcome = deliver(sale, "3.00", svc.vault.encrypt(CARD), order_id=5555555555554444)
    assert outcome["status"] == "ERROR" and outcome["message"].startswith("invalid input: order_id")
    assert gw.sends == [] and "5555555555554444" not in store.dump()


def test_a_refusal_delivered_again_returns_the_stored_one(store, wire):
    wire(FakeGateway())
    first = deliver(sale, amount="3.00")
    assert deliver(sale, amount="3.00", retries=1) == first


def test_a_key_refused_for_bad_arguments_answers_another_request_with_a_mismatch(store, wire):
    """Issue 24, item 6: the refusal binds the key to the refused message's arguments."""
    gw = FakeGateway()
    wire(gw)
    refused = deliver(sale, amount="3.00", colour="blue", idempotency_key="order-78", task_id="t-1")
    assert refused["error_class"] == "InvalidInput" and refused["payment_id"] == "t-1"  # not bound: the task id
    stored = store.get(refused["payment_id"])
    other = deliver(sale, "3.00", CARD, idempotency_key=refused["payment_id"], task_id="t-2")
    assert other["status"] == "ERROR" and other["error_class"] == "IdempotencyMismatch", other
    assert deliver(sale, amount="3.00", colour="blue", idempotency_key="order-78", task_id="t-1") == refused
    assert store.get(refused["payment_id"]) == stored and gw.sends == []


@pytest.mark.parametrize("mode,card,encrypted,status", [
    ("LIVE", CARD, False, "ERROR"),     # in production only encrypted card data may cross the broker
    ("LIVE", CARD, True, "APPROVED"),
    ("TEST", CARD, False, "APPROVED"),  # accepted in TEST
], ids=["live-clear", "live-sealed", "test-clear"])
def test_live_mode_refuses_card_data_that_arrived_in_clear(store, wire, mode, card, encrypted, status):
    gw = FakeGateway([reply(order_id=TASK_ID)] if status == "APPROVED" else [])
    svc = wire(gw, bluepay_mode=mode)
    outcome = deliver(sale, "3.00", svc.vault.encrypt(card) if encrypted else card)
    assert outcome["status"] == status
    if status == "ERROR":
        assert outcome["message"].startswith("invalid input: card") and "unencrypted" in outcome["message"]
    assert len(gw.sends) == (status == "APPROVED")


# ================================================================================== the ordinary path
def test_a_sale_runs_under_its_idempotency_key_and_clears_its_outbox_entry(store, wire):
    gw = FakeGateway([reply()])
    wire(gw)
    store.outbox.put(TASK_ID, {"name": "payments.sale"})
    outcome = deliver(sale, "3.00", CARD, idempotency_key="order-77")
    assert outcome["status"] == "APPROVED" and outcome["payment_id"] == "order-77"
    assert gw.sends[0]["order_id"] == "order-77" and gw.queries == []  # first delivery: no stq
    assert store.outbox.stale(-1) == []


def test_a_delivery_that_may_have_run_before_asks_stq_first(store, wire):
    gw = FakeGateway(stq=[reply(message="Approved Auth", trans_type="AUTH")])
    wire(gw)
    outcome = deliver(auth, "3.00", CARD, retries=1)  # a re-queued message: an earlier run may have sent it
    assert outcome["status"] == "APPROVED" and outcome["reconciled"] == "stq"
    assert gw.sends == [] and gw.queries == [{"trans_id": None, "order_id": TASK_ID}]


def test_the_chain_link_voids_the_sale_outcome_it_is_given(store, wire):
    wire(FakeGateway([reply()]))
    sold = deliver(sale, "3.00", CARD, task_id="sale-1")
    gw = FakeGateway([reply(message="Approved Void", trans_type="VOID", trans_id="100000000202")])
    wire(gw)
    outcome = deliver(void, sold, task_id="void-1")
    assert outcome["status"] == "APPROVED" and outcome["payment_id"] == "sale-1:void"
    assert gw.sends == [{"verb": "void", "trans_id": SALE_TRANS, "order_id": "sale-1:void"}]
    assert store.get("sale-1")["status"] == "VOIDED"


# ================================================================================== gateway outage
@pytest.mark.parametrize("retries,jitter,at_least,countdown", [
    (0, 1.0, None, 5.0),      # backoff x 2^retries
    (1, 1.0, None, 10.0),
    (3, 1.0, None, 40.0),
    (4, 1.0, None, 60.0),     # backoff_max
    (9, 1.0, None, 60.0),
    (2, 0.5, None, 10.0),     # jitter: half to all of it
    (0, 1.0, 61.0, 61.0),     # a commit horizon still running: at least that
    (5, 0.5, 30.0, 30.0),
    (0, 1.0, 500.0, 75.0),    # never past a quarter of the visibility timeout
    (20, 1.0, None, 60.0),
], ids=["first", "second", "fourth", "capped", "long-capped", "jitter", "horizon", "horizon-over-jitter",
        "visibility-ceiling", "many"])
def test_outage_countdown(retries, jitter, at_least, countdown):
    assert outage_countdown(retries, backoff=5.0, backoff_max=60.0, visibility_timeout=300.0, at_least=at_least,
                            jitter=jitter) == countdown


def test_outage_countdown_jitter_stays_within_half_to_all_of_the_backoff():
    waits = {outage_countdown(2, backoff=5.0, backoff_max=60.0, visibility_timeout=300.0) for _ in range(200)}
    assert all(10.0 <= w <= 20.0 for w in waits) and len(waits) > 1


def test_gateway_not_reached_requeues_with_a_growing_backoff(store, wire):
    gw = FakeGateway([NotSent("connection refused")] * 4)
    wire(gw)
    for retries in (0, 1, 2, 4):  # each delivery finds it RETRYING (known unsent): sends again, no stq
        with pytest.raises(Retry) as retry:
            deliver(sale, "3.00", CARD, retries=retries)
        ceiling = min(60.0, 5.0 * 2 ** retries)
        assert ceiling / 2 <= retry.value.when <= ceiling
        assert store.get(TASK_ID)["status"] == "RETRYING"
    assert len(gw.sends) == 4 and gw.queries == []


def test_outcome_unknown_requeues_no_sooner_than_the_commit_horizon(store, wire):
    gw = FakeGateway([OutcomeUnknown("read timeout")], stq=[None])
    wire(gw)
    retry = requeued(lambda: deliver(sale, "3.00", CARD))
    assert retry.when == 61.0  # the horizon (60 s) + 1, over the 2.5-5 s backoff
    assert store.get(TASK_ID)["status"] == "UNKNOWN"


@pytest.mark.parametrize("first,status,not_charged", [
    (NotSent("connection refused"), "ERROR", "1"),  # provably never sent: a final failure without a charge
    (OutcomeUnknown("read timeout"), "UNKNOWN", None),  # may have been sent: left for the sweep's stq
], ids=["unsent", "maybe-sent"])
def test_when_the_outage_requeues_run_out_the_task_gives_up(store, wire, clock, first, status, not_charged):
    gw = FakeGateway([first], stq=[None] if status == "UNKNOWN" else [])
    wire(gw)
    requeued(lambda: deliver(sale, "3.00", CARD))
    clock.advance(61)
    again = FakeGateway([NotSent("connection refused")], stq=[None])
    wire(again)
    outcome = deliver(sale, "3.00", CARD, retries=SETTINGS.outage_retries)
    assert outcome["status"] == status and outcome.get("not_charged") == not_charged
    assert "after 5 re-queues" in store.get(TASK_ID)["history"][-1]["note"]
    assert len(gw.sends) == 1 and len(again.sends) == 1


# ================================================================================== another worker holds it
def test_a_held_operation_requeues_until_the_lease_may_have_lapsed(store, wire):
    store.claim(TASK_ID, "sale", owner="other-host:1:x", lease_seconds=3)
    gw = FakeGateway()
    wire(gw)
    retry = requeued(lambda: deliver(sale, "3.00", CARD))
    assert retry.when == 3.5  # what is left of the lease, and a little
    assert store.get(TASK_ID)["lease_owner"] == "other-host:1:x" and gw.sends == []


def test_a_held_operation_after_the_last_busy_requeue_returns_the_current_outcome(store, wire):
    store.claim(TASK_ID, "sale", owner="other-host:1:x", lease_seconds=60)
    before = store.get(TASK_ID)
    gw = FakeGateway()
    wire(gw)
    outcome = deliver(sale, "3.00", CARD, retries=MAX_BUSY_RETRIES)
    assert outcome["status"] == "UNKNOWN" and outcome["payment_id"] == TASK_ID  # in flight elsewhere
    assert store.get(TASK_ID) == before and gw.sends == []


# ================================================================================== time limits and bugs
def test_the_soft_time_limit_mid_call_returns_the_parked_outcome(store, wire):
    gw = FakeGateway([SoftTimeLimitExceeded()])
    wire(gw)
    outcome = deliver(sale, "3.00", CARD)
    assert outcome["status"] == "UNKNOWN" and "interrupted (SoftTimeLimitExceeded)" in outcome["message"]
    record = store.get(TASK_ID)
    assert record["status"] == "UNKNOWN" and record["sent_ts"]  # it may have been sent: the sweep asks stq


def test_a_bug_mid_call_returns_the_parked_outcome(store, wire):
    wire(FakeGateway([RuntimeError("bug")]))
    outcome = deliver(sale, "3.00", CARD)
    assert outcome["status"] == "UNKNOWN" and "RuntimeError" in outcome["message"]


class ClaimFailsOnce(StoreUnderTest):
    """A store whose first claim fails with ``error`` (a bug, or Redis away); then it works."""

    def __init__(self, client, *, error: Exception, **kw):
        super().__init__(client, **kw)
        self.error: Exception | None = error

    def claim(self, *args, **kwargs):
        error, self.error = self.error, None
        if error is not None:
            raise error
        return super().claim(*args, **kwargs)


def test_a_bug_before_any_record_is_a_recorded_internal_error(clock):
    store = new_store(ClaimFailsOnce, error=KeyError("bug"))
    with current(create_app(SETTINGS, services=UnitServices(SETTINGS, store, FakeGateway()))):
        outcome = deliver(sale, "3.00", CARD)
    assert outcome["status"] == "ERROR" and outcome["error_class"] == "InternalError"
    assert outcome["message"] == "internal error: KeyError" and (store.get(TASK_ID) or {})["status"] == "ERROR"


@pytest.mark.parametrize("error", [redis.ConnectionError("down"), redis.TimeoutError("slow")],
                         ids=["connection", "timeout"])
@pytest.mark.parametrize("retries", [0, 19])
def test_redis_unavailable_requeues_the_message(clock, error, retries):
    store = new_store(ClaimFailsOnce, error=error)
    gw = FakeGateway()
    with current(create_app(SETTINGS, services=UnitServices(SETTINGS, store, gw))):
        retry = requeued(lambda: deliver(sale, "3.00", CARD, retries=retries))
    assert retry.when == 5 and store.get(TASK_ID) is None and gw.sends == []


def test_redis_unavailable_for_twenty_requeues_fails_the_task(clock):
    store = new_store(ClaimFailsOnce, error=redis.ConnectionError("down"))
    app = create_app(SETTINGS, services=UnitServices(SETTINGS, store, FakeGateway()))
    with current(app), pytest.raises(MaxRetriesExceededError):
        deliver(sale, "3.00", CARD, retries=20)


# ================================================================================== retry_failed: a burnt key re-run
def test_a_refusal_burns_the_key_until_the_producer_says_retry_failed(store, wire):
    # a card encrypted with another PAYMENTS_CARD_KEY: refused, nothing sent; fixed, sent again under the same key
    gw = FakeGateway([reply(order_id="order-9")])
    svc = wire(gw)
    foreign = {"sealed": "not-a-token", "masked": "xxxxxxxxxxxx1111"}
    refused = deliver(sale, "3.00", foreign, idempotency_key="order-9")
    assert refused["status"] == "ERROR" and refused["error_class"] == "InvalidInput"
    encrypted = svc.vault.encrypt(CARD)
    # without the producer's word, another request under a refused key is a mismatch (issue 24 item 6)
    mismatch = deliver(sale, "3.00", encrypted, idempotency_key="order-9", task_id="msg-2")
    assert mismatch["error_class"] == "IdempotencyMismatch" and gw.sends == []
    assert deliver(sale, "3.00", foreign, idempotency_key="order-9", task_id="msg-2b") == refused  # burnt
    outcome = deliver(sale, "3.00", encrypted, idempotency_key="order-9", retry_failed=True, task_id="msg-3")
    assert outcome["status"] == "APPROVED" and outcome["payment_id"] == "order-9" and len(gw.sends) == 1
    assert "error_class" not in outcome
    # done: retry_failed changes nothing about an answered payment (no second charge)
    again = deliver(sale, "3.00", encrypted, idempotency_key="order-9", retry_failed=True, task_id="msg-4")
    assert again["status"] == "APPROVED" and len(gw.sends) == 1


def test_retry_failed_keeps_the_key_bound_to_its_request(store, wire):
    gw = FakeGateway([NotSent("refused"), reply(order_id="order-10")])
    wire(gw, outage_retries=0)
    first = deliver(sale, "3.00", CARD, idempotency_key="order-10")  # unreachable, out of re-queues: not_charged
    assert first["status"] == "ERROR" and first.get("not_charged") == "1"
    other = deliver(sale, "4.00", CARD, idempotency_key="order-10", retry_failed=True, task_id="msg-2")
    assert other["status"] == "ERROR" and other["error_class"] == "IdempotencyMismatch"
    assert store.get("order-10")["status"] == "ERROR" and store.get("order-10")["amount"] == "3.00"
    # the same request, once the gateway is back
    outcome = deliver(sale, "3.00", CARD, idempotency_key="order-10", retry_failed=True, task_id="msg-3")
    assert outcome["status"] == "APPROVED" and len(gw.sends) == 2 and "not_charged" not in outcome


def test_retry_failed_never_reruns_a_decline(store, wire):
    gw = FakeGateway([reply(status="DECLINED", message="Declined Sale", order_id="order-11")])
    wire(gw)
    declined = deliver(sale, "4.00", CARD, idempotency_key="order-11")
    assert deliver(sale, "4.00", CARD, idempotency_key="order-11", retry_failed=True, task_id="msg-2") == declined
    assert len(gw.sends) == 1


def test_retry_failed_must_be_a_bool(store, wire):
    wire(FakeGateway())
    outcome = deliver(sale, "3.00", CARD, retry_failed="yes")
    assert outcome["status"] == "ERROR" and "retry_failed" in outcome["message"]


# ================================================================================== CREDIT (docs/tokens.md)
def test_credit_is_off_unless_enabled(store, wire):
    from tasks import credit

    gw = FakeGateway()
    wire(gw)
    outcome = deliver(credit, amount="3.00", card=CARD)
    assert outcome["status"] == "ERROR" and outcome["error_class"] == "CreditDisabled"
    assert "PAYMENTS_ENABLE_CREDIT" in outcome["message"] and gw.sends == []


def test_credit_when_enabled_sends_money_to_the_card(store, wire):
    from tasks import credit

    gw = FakeGateway([reply(message="Approved Credit", trans_type="CREDIT")])
    wire(gw, enable_credit=True)
    outcome = deliver(credit, amount="3.00", card=CARD, idempotency_key="credit-1")
    assert outcome["status"] == "APPROVED" and outcome["operation"] == "credit"
    assert [s["verb"] for s in gw.sends] == ["credit"] and str(gw.sends[0]["amount"]) == "3.00"
    again = deliver(credit, amount="3.00", card=CARD, idempotency_key="credit-1", task_id="msg-bbbb")
    assert again["trans_id"] == outcome["trans_id"] and len(gw.sends) == 1  # the key: once


def test_credit_takes_no_token(store, wire):
    from tasks import credit

    gw = FakeGateway()
    wire(gw, enable_credit=True)
    outcome = deliver(credit, amount="3.00", card=None)
    assert outcome["status"] == "ERROR" and "card" in outcome["message"] and gw.sends == []
