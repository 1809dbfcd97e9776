"""The sweep's decisions (worker/payments/sweep.py ``run_sweep``), as unit tests: the worker's own wiring over the
in-memory
store and a scripted gateway, with a fake clock, so that a week-old authorization takes ``clock.advance``.

Not here: re-publishing a lost outbox message (it publishes to the broker: tests/e2e/test_outbox.py).
"""
from __future__ import annotations

import json
import time

import pytest

from tests.support.env import TEST_CARD_KEY
from tests.support.fake_gateway import SALE_TRANS, FakeGateway, UnexpectedCall, reply
from tests.support.unit_services import UnitServices
from worker.config import Settings
from worker.gateway import NotSent
from worker.payments.sweep import LOCK_NAME, MAX_REPUBLISH, finish_chain_void, outbox_age, outbox_due, run_sweep

WEEK = 7 * 86400.0
SETTINGS = Settings(card_key=TEST_CARD_KEY, stale_auth_age=WEEK, reconcile_after=600.0, sweep_interval=300.0,
                    visibility_timeout=300.0, commit_horizon_setting=60.0)
AUTH_TRANS, CAPTURE_TRANS, VOID_TRANS = "100000000111", "100000000222", "100000000333"


def sweep(store, gateway, settings=SETTINGS, **kw):
    return run_sweep(UnitServices(settings, store, gateway), **kw)


def approved(store, pid, operation, trans_id, *, reflect=True, **fields):
    """A record a worker finished APPROVED (``reflect``: and reflected its follow-up, as the flow does)."""
    store.claim(pid, operation, fields={"order_id": pid, **fields}, owner="w", lease_seconds=30)
    return store.transition(pid, "APPROVED", owner="w", expect="PENDING", reflect=reflect,
                            fields={"trans_id": trans_id, "message": "Approved"})


def voided(trans_id=VOID_TRANS):
    return reply(message="Approved Void", trans_type="VOID", trans_id=trans_id)


# ================================================================================== the lock
def test_a_sweep_while_another_holds_the_lock_does_nothing(store, clock):
    approved(store, "a1", "auth", AUTH_TRANS, amount="5.00")
    clock.advance(WEEK + 1)
    token = store.locks.acquire(LOCK_NAME, 60)
    gw = FakeGateway()
    assert sweep(store, gw) == {"ran": False, "reason": "another sweep is running"}
    assert store.get("a1")["status"] == "APPROVED" and gw.sends == []
    assert store.locks.release(LOCK_NAME, token)  # still the other sweep's


def test_the_lock_is_released_after_a_sweep_even_one_that_failed(store, clock):
    assert sweep(store, FakeGateway()) == {"ran": True}
    approved(store, "a1", "auth", AUTH_TRANS)
    clock.advance(WEEK + 1)
    with pytest.raises(UnexpectedCall):
        sweep(store, FakeGateway())  # the stale auth's void meets a gateway with nothing to say
    assert store.locks.acquire(LOCK_NAME, 60) is not None


def test_an_expired_lock_of_a_sweep_that_died_does_not_block_the_next(store, clock):
    store.locks.acquire(LOCK_NAME, 0.05)  # Redis's own expiry: real time, not the test's clock
    time.sleep(0.1)
    assert sweep(store, FakeGateway())["ran"] is True


# ================================================================================== stale authorizations
def test_a_stale_authorization_is_voided_under_a_deterministic_id(store, clock):
    approved(store, "a1", "auth", AUTH_TRANS, amount="5.00")
    clock.advance(WEEK + 1)
    gw = FakeGateway([voided()])
    report = sweep(store, gw)
    assert report == {"ran": True, "stale_auth_void_approved": 1}
    assert gw.sends == [{"verb": "void", "trans_id": AUTH_TRANS, "order_id": "a1:void-stale"}]
    void = store.get("a1:void-stale")
    assert void["parent"] == "a1" and "stale authorization" in void["reason"]
    assert store.get("a1")["status"] == "VOIDED" and store.open_auths(0) == []
    assert sweep(store, FakeGateway()) == {"ran": True}  # nothing left to do


@pytest.mark.parametrize("state", ["young", "captured", "declined"])
def test_authorizations_that_are_not_stale_and_open_are_left_alone(store, clock, state):
    if state == "declined":
        store.claim("a1", "auth", owner="w", lease_seconds=30)
        store.transition("a1", "DECLINED", owner="w")
    else:
        approved(store, "a1", "auth", AUTH_TRANS, amount="5.00")
    if state == "captured":
        approved(store, "c1", "capture", CAPTURE_TRANS, target=AUTH_TRANS)
    clock.advance(WEEK - 1 if state == "young" else WEEK + 1)
    before = store.get("a1")
    assert sweep(store, FakeGateway()) == {"ran": True}
    assert store.get("a1") == before


def test_a_capture_left_unreflected_is_repaired_before_its_auth_could_look_stale(store, clock):
    approved(store, "a1", "auth", AUTH_TRANS, amount="5.00")
    approved(store, "c1", "capture", CAPTURE_TRANS, target=AUTH_TRANS, reflect=False)  # crashed in between
    clock.advance(WEEK + 1)
    assert [r["payment_id"] for r in store.open_auths(WEEK)] == ["a1"]
    gw = FakeGateway()  # a void would be an unexpected call
    assert sweep(store, gw) == {"ran": True, "repair_reflected": 1}
    assert store.get("a1")["status"] == "CAPTURED" and gw.sends == []


def test_a_stale_void_closed_as_never_sent_is_tried_again_under_the_next_id(store, clock):
    approved(store, "a1", "auth", AUTH_TRANS)
    store.claim("a1:void-stale", "void", owner="sweep", lease_seconds=30)
    store.transition("a1:void-stale", "ERROR", owner="sweep", fields={"not_charged": "1"})
    clock.advance(WEEK + 1)
    gw = FakeGateway([voided()])
    assert sweep(store, gw)["stale_auth_void_approved"] == 1
    assert gw.sends[0]["order_id"] == "a1:void-stale-2"


def test_one_void_the_gateway_cannot_take_now_does_not_stop_the_others(store, clock):
    for pid, trans in (("a1", AUTH_TRANS), ("a2", "100000000112"), ("a3", "100000000113")):
        approved(store, pid, "auth", trans)
        clock.advance(1)
    clock.advance(WEEK)
    store.claim("a3:void-stale", "void", owner="other-host:1:x", lease_seconds=60)  # another sweep is on it
    gw = FakeGateway([NotSent("connection refused"), voided()])
    report = sweep(store, gw)
    assert report == {"ran": True, "stale_auth_void_deferred": 1, "stale_auth_void_approved": 1,
                      "stale_auth_void_busy": 1}
    assert store.get("a1:void-stale")["status"] == "RETRYING" and store.get("a1")["status"] == "APPROVED"
    assert store.get("a2")["status"] == "VOIDED" and store.get("a3")["status"] == "APPROVED"
    assert [s["order_id"] for s in gw.sends] == ["a1:void-stale", "a2:void-stale"]


# ================================================================================== reconciliation
def _parked(store, pid, status):
    store.claim(pid, "sale", fields={"order_id": pid, "amount": "3.00"}, owner="gone", lease_seconds=30, journal=True)
    store.transition(pid, status, owner="gone", sent=status == "UNKNOWN", fields={"message": "parked"})


def test_only_operations_left_longer_than_reconcile_after_are_reconciled(store, clock):
    _parked(store, "old", "UNKNOWN")
    clock.advance(601)
    _parked(store, "new", "UNKNOWN")
    store.claim("held", "sale", owner="live-host:1:x", lease_seconds=3600)  # in flight, lease alive
    gw = FakeGateway(stq=[reply(order_id="old")])
    assert sweep(store, gw) == {"ran": True, "reconcile_adopted": 1}
    assert gw.queries == [{"trans_id": None, "order_id": "old"}]
    assert [store.get(p)["status"] for p in ("old", "new", "held")] == ["APPROVED", "UNKNOWN", "PENDING"]


def test_a_reconciliation_waits_for_its_next_check(store, clock):
    often = Settings(**{**SETTINGS.__dict__, "reconcile_after": 10.0})
    _parked(store, "p1", "UNKNOWN")
    clock.advance(11)
    gw = FakeGateway(stq=[NotSent("stq down")])
    assert sweep(store, gw, often) == {"ran": True, "reconcile_still_unknown": 1}  # next look in 60 s
    clock.advance(11)
    assert sweep(store, FakeGateway(), often) == {"ran": True, "reconcile_skipped": 1}  # stale, not due: no stq
    clock.advance(50)  # due, and past the commit horizon of its attempt
    assert sweep(store, FakeGateway(stq=[None]), often) == {"ran": True, "reconcile_not_charged": 1}
    assert store.get("p1")["not_charged"] == "1" and len(gw.queries) == 1


def test_an_operation_unknown_for_too_long_is_given_to_a_human(store, clock):
    _parked(store, "p1", "UNKNOWN")
    clock.advance(SETTINGS.reconcile_give_up + 1)
    gw = FakeGateway(stq=[NotSent("stq down")])
    assert sweep(store, gw) == {"ran": True, "reconcile_gave_up": 1}
    record = store.get("p1")
    assert record["status"] == "ERROR" and record["needs_human"] == "1" and gw.sends == []


# ================================================================================== sale -> void chains
def test_a_chained_void_that_never_ran_is_finished(store, clock):
    approved(store, "s1", "sale", SALE_TRANS, amount="3.00", then_void="1")
    clock.advance(601)
    gw = FakeGateway([voided()])
    assert sweep(store, gw) == {"ran": True, "chain_void_approved": 1}
    assert gw.sends == [{"verb": "void", "trans_id": SALE_TRANS, "order_id": "s1:void"}]
    assert store.get("s1")["status"] == "VOIDED" and store.voids_due(0) == []


def test_a_chained_void_is_not_due_before_reconcile_after(store, clock):
    approved(store, "s1", "sale", SALE_TRANS, then_void="1")
    clock.advance(599)
    assert sweep(store, FakeGateway()) == {"ran": True}


def test_a_chained_void_that_went_through_unrecorded_on_the_sale_is_repaired_without_a_call(store):
    approved(store, "s1", "sale", SALE_TRANS, then_void="1")
    approved(store, "s1:void", "void", VOID_TRANS, target=SALE_TRANS, parent="s1", reflect=False)  # crashed here
    gw = FakeGateway()
    flow = UnitServices(SETTINGS, store, gw).flow
    assert finish_chain_void(flow, store, store.get("s1")) == "repaired"  # (the sweep's repair pass is first)
    assert store.get("s1")["status"] == "VOIDED" and gw.sends == [] and gw.queries == []


def test_a_chained_void_that_failed_is_tried_again_under_a_fresh_id(store, clock):
    approved(store, "s1", "sale", SALE_TRANS, then_void="1")
    store.claim("s1:void", "void", fields={"target": SALE_TRANS}, owner="w", lease_seconds=30)
    store.transition("s1:void", "ERROR", owner="w", fields={"message": "gateway error"})
    clock.advance(601)
    gw = FakeGateway([voided()])
    assert sweep(store, gw)["chain_void_approved"] == 1
    assert gw.sends[0]["order_id"] == "s1:void-sweep" and store.get("s1")["status"] == "VOIDED"


# ================================================================================== outbox, progress
def test_a_message_published_too_often_is_given_up_and_a_young_one_left(store, clock):
    store.outbox.put("lost", {"name": "payments.sale"})
    for _ in range(MAX_REPUBLISH):  # the earlier sweeps' re-publications
        [(_, entry)] = store.outbox.stale(-1)
        store.outbox.republished("lost", entry)
    clock.advance(outbox_age(SETTINGS) + 1)
    store.outbox.put("young", {"name": "payments.sale"})
    assert sweep(store, FakeGateway()) == {"ran": True, "outbox_given_up": 1}
    assert [t for t, _ in store.outbox.stale(-1)] == ["young"]


def test_a_due_entry_still_in_the_broker_is_not_published_again_and_its_clock_restarts(store, clock):
    queue = f"{store.prefix}queue"  # a queue of this test's own on the shared Redis
    store.outbox.put("queued", {"name": "payments.sale", "routing_key": queue})
    store.outbox.stale(-1)  # stamped
    # the broker still holds its message (a backlog): not lost
    store.redis.lpush(queue, json.dumps({"body": "", "headers": {"id": "queued"}}))
    clock.advance(outbox_age(SETTINGS) + 1)
    assert sweep(store, FakeGateway()) == {"ran": True, "outbox_still_queued": 1}  # no republish, no give-up
    assert store.outbox.stale(outbox_due(SETTINGS)) == []  # its clock restarted
    [(_, entry)] = store.outbox.stale(-1)
    assert entry["republished"] == 0


@pytest.mark.parametrize("visibility,interval,reconcile_after,due", [
    (300, 300, 600, 360),    # the defaults: 2.2 x 300 = 660 from publication, one interval before the stamp
    (300, 60, 600, 600),     # frequent sweeps: the stamp is close to the publication
    (300, 3600, 600, 300),   # rare sweeps: never before the visibility timeout
    (300, 300, 3600, 3300),  # RECONCILE_AFTER longer than 2.2 x the visibility timeout
])
def test_an_outbox_entry_is_due_once_it_may_be_outbox_age_old(visibility, interval, reconcile_after, due):
    settings = Settings(card_key=TEST_CARD_KEY, visibility_timeout=visibility, sweep_interval=interval,
                        reconcile_after=reconcile_after, commit_horizon_setting=60.0)
    assert outbox_due(settings) == pytest.approx(due)
    assert outbox_due(settings) + interval >= outbox_age(settings)  # real age at the due sweep: at least this


def test_an_outbox_entry_is_published_again_by_the_first_sweep_past_its_due_age_counted_from_its_stamp(store, clock):
    store.outbox.put("lost", {"name": "payments.sale"})
    assert store.outbox.stale(outbox_due(SETTINGS)) == []  # first sighting: stamped
    clock.advance(SETTINGS.sweep_interval)
    assert store.outbox.stale(outbox_due(SETTINGS)) == []  # 300 s since the stamp
    clock.advance(SETTINGS.sweep_interval)
    assert [t for t, _ in store.outbox.stale(outbox_due(SETTINGS))] == ["lost"]  # 600 s: at least 600 s published


def test_progress_ticks_once_per_item(store, clock):
    approved(store, "a1", "auth", AUTH_TRANS)
    _parked(store, "p1", "UNKNOWN")
    clock.advance(WEEK + 1)
    ticks = []
    sweep(store, FakeGateway([voided()], stq=[reply(order_id="p1")]), progress=lambda: ticks.append(1))
    assert len(ticks) == 2
