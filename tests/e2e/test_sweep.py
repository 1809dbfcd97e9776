"""The sweep (worker/payments/sweep.py) against the e2e Redis and the sandbox over HTTP.

Each test has its own key prefix, so a sweep sees only the records the test made; the sandbox's ledger
(shared by the session) is the proof of what the gateway was asked to do.

Time. The store reads Redis server time (``TIME`` inside its scripts), so a test cannot move the store's clock.
Instead, :func:`age` moves records back in time: it subtracts the same number of seconds from every stored
time of a record (``created_ts``, ``updated_ts``, ``sent_ts``, ``attempt_ts``, ``next_check_ts``, ``lease_until``)
and from its scores in the time-ordered indexes (``idx:time``, ``idx:non_final``, ``idx:open_auths``,
``idx:voids_due``, ``idx:reflect_due``), in one Lua script. Ageing every record of the test by N seconds is what
advancing a clock by N seconds did before, without waiting: the suite stays fast. What it leaves alone: the
ISO ``created_at``/``updated_at``/history texts (shown to people, never compared), and Redis key TTLs (locks).
Budgets are small so that the relations ``Settings.check`` enforces still hold: connect 1 s + read 2 s <
GATEWAY_COMMIT_HORIZON 5 s.

Exactly-once v2 changed what some steps expect (each place says so): a record parked UNKNOWN after an attempt
that may have been sent is closed ``not_charged`` only once the commit horizon has passed since that attempt
(``park_unknown`` notes the attempt in the journal, as a real worker's claim does); follow-ups whose reflection
on their original never happened are repaired by the sweep's repair pass (``repair_*`` counts in the report).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.card_scan import scan_files
from tests.support.env import CUSTOMER, E2E_REDIS_URL, TEST_CARD, TEST_CARD_KEY, redis_url_with_db
from tests.support.ports import closed_port
from tests.support.workers import running_worker, worker_env
from worker.config import Settings
from worker.gateway import BluePayClient
from worker.payments.flow import response_fields
from worker.payments.sweep import run_sweep
from worker.services import Services

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RECONCILE_AFTER = 0.5
COMMIT_HORIZON = 5.0
# The beat test needs a Redis database of its own (see there); it flushes it.
BEAT_REDIS_URL = os.environ.get("TEST_BEAT_REDIS_URL") or redis_url_with_db(14)

_TIME_FIELDS = ("created_ts", "updated_ts", "sent_ts", "attempt_ts", "next_check_ts", "lease_until")
_TIME_INDEXES = ("idx:time", "idx:non_final", "idx:open_auths", "idx:voids_due", "idx:reflect_due")
_AGE_SCRIPT = """
local seconds, prefix = tonumber(ARGV[1]), ARGV[2]
local fields = cjson.decode(ARGV[3])
local indexes = cjson.decode(ARGV[4])
for i = 5, #ARGV do
  local pid = ARGV[i]
  local rec = prefix .. 'op:' .. pid
  for _, f in ipairs(fields) do
    local v = tonumber(redis.call('HGET', rec, f) or '')
    if v and v > 0 then redis.call('HSET', rec, f, string.format('%.3f', v - seconds)) end
  end
  for _, idx in ipairs(indexes) do
    local score = redis.call('ZSCORE', prefix .. idx, pid)
    if score then redis.call('ZADD', prefix .. idx, tonumber(score) - seconds, pid) end
  end
end
return #ARGV - 4
"""


def age(store, seconds: float, *payment_ids: str) -> int:
    """Move records ``seconds`` back in time (all of the store's prefix when no id is given): see the docstring."""
    if not payment_ids:
        head = store.prefix + "op:"
        payment_ids = tuple(k[len(head):] for k in store.redis.scan_iter(match=head + "*", count=1000))
    if not payment_ids:
        return 0
    return store.redis.eval(_AGE_SCRIPT, 0, repr(float(seconds)), store.prefix, json.dumps(_TIME_FIELDS),
                            json.dumps(_TIME_INDEXES), *payment_ids)


@pytest.fixture
def prefix(e2e_redis):
    p = f"test:sweep:{uuid.uuid4().hex[:12]}:"
    yield p
    keys = list(e2e_redis.scan_iter(match=p + "*", count=1000))
    if keys:
        e2e_redis.delete(*keys)


@pytest.fixture
def make_services(sandbox, clean_faults, prefix):
    """Services(Settings(...)) on the test's prefix, the sandbox, tiny ages and short gateway budgets."""
    built = []

    def make(**overrides):
        settings = dict(
            redis_url=E2E_REDIS_URL, key_prefix=prefix, bluepay_url=sandbox.interfaces_url,
            bluepay_account_id=sandbox.account_id, bluepay_secret_key=sandbox.secret_key, card_key=TEST_CARD_KEY,
            connect_timeout=1.0, read_timeout=2.0, retry_attempts=2, retry_seconds=1.0, visibility_timeout=60.0,
            stale_auth_age=1.0, reconcile_after=RECONCILE_AFTER, reconcile_give_up=3600.0, sweep_interval=1.0,
            commit_horizon_setting=COMMIT_HORIZON, lease_seconds=10.0,
        )
        settings.update(overrides)
        svc = Services(Settings(**settings).check())
        built.append(svc)
        return svc

    yield make
    for svc in built:
        svc.redis.close()


@pytest.fixture
def svc(make_services):
    return make_services()


def gateway_for(sandbox) -> BluePayClient:
    return BluePayClient(account_id=sandbox.account_id, secret_key=sandbox.secret_key, base_url=sandbox.interfaces_url)


def new_id(kind):
    return f"{kind}-{uuid.uuid4().hex[:16]}"


def charge(svc, operation, amount, **kw):
    pid = new_id(operation)
    outcome = svc.flow.charge(operation, pid, amount=amount, card=dict(TEST_CARD), customer=CUSTOMER, **kw)
    assert outcome["status"] == "APPROVED", outcome
    return outcome


def approved(sandbox, trans_type, trans_id):
    return [e for e in sandbox.ledger() if e["trans_type"] == trans_type and e["origin"] == trans_id
            and e["status"] == "1"]


def approved_voids(sandbox, trans_id):
    return approved(sandbox, "VOID", trans_id)


def charges(sandbox, order_id):
    return [e for e in sandbox.ledger(order_id=order_id) if e["trans_type"] in ("SALE", "AUTH")]


def park_unknown(store, pid, operation="sale", *, amount="11.00", lease_seconds=60.0, unknown=True, **fields):
    """A record whose worker died mid-call: claimed with attempt 1 noted in the journal (as the flow's claim does
    right before it sends), then (if ``unknown``) left UNKNOWN at its time limit: that attempt may have been sent."""
    store.claim(pid, operation, fields={"amount": amount, "order_id": pid, **fields}, owner="dead-worker",
                lease_seconds=lease_seconds, journal=True)
    if unknown:
        store.transition(pid, "UNKNOWN", expect="PENDING", owner="dead-worker",
                         fields={"message": "soft time limit reached mid-call"}, note="time limit")


def record_unreflected(store, pid, operation, response, **fields):
    """A follow-up the gateway approved whose final transition was written without its reflection on the original
    (a v1 worker that died between the two writes, or one whose original was not final yet)."""
    assert response.approved, response
    store.claim(pid, operation, fields={"order_id": pid, **fields}, owner="dead-worker", lease_seconds=60.0,
                journal=True)
    record = store.transition(pid, "APPROVED", expect="PENDING", owner="dead-worker", sent=True, reflect=False,
                              fields=response_fields(response), note=response.message or "")
    assert record and record["status"] == "APPROVED" and record.get("reflected") != "1", record
    assert pid in store.reflect_due()
    return record


# ---------------------------------------------------------------------------------------------- 1. stale auths
def test_stale_auths_are_voided_with_the_reason_and_captured_or_young_ones_are_left_alone(svc, sandbox):
    stale = charge(svc, "auth", "5.00")
    captured = charge(svc, "auth", "7.00")
    capture = svc.flow.follow_up("capture", new_id("capture"), trans_id=captured["trans_id"], amount="7.00")
    assert capture["status"] == "APPROVED"
    age(svc.store, 1.5)  # past STALE_AUTH_AGE (1 s)
    young = charge(svc, "auth", "9.00")

    report = run_sweep(svc)

    assert report == {"ran": True, "stale_auth_void_approved": 1}
    store = svc.store
    void_id = f"{stale['payment_id']}:void-stale"
    auth_record = store.get(stale["payment_id"])
    assert auth_record["status"] == "VOIDED" and auth_record["voided_by"] == void_id
    assert any(void_id in h["note"] for h in auth_record["history"] if h["status"] == "VOIDED")
    void_record = store.get(void_id)
    assert void_record["status"] == "APPROVED" and void_record["operation"] == "void"
    assert void_record["parent"] == stale["payment_id"] and void_record["target"] == stale["trans_id"]
    reason = void_record.get("reason", "")
    assert "stale" in reason.lower() and "STALE_AUTH_AGE" in reason, void_record
    assert len(approved_voids(sandbox, stale["trans_id"])) == 1
    # left alone: the captured auth and the young one, at the gateway too
    assert store.get(captured["payment_id"])["status"] == "CAPTURED"
    assert store.get(young["payment_id"])["status"] == "APPROVED"
    assert approved_voids(sandbox, captured["trans_id"]) == approved_voids(sandbox, young["trans_id"]) == []

    # the next sweep finds nothing left to do
    assert run_sweep(svc) == {"ran": True}
    assert len(approved_voids(sandbox, stale["trans_id"])) == 1


# ---------------------------------------------------------------------------------------------- 2. unknown outcomes
def test_unknown_and_dead_in_flight_operations_are_reconciled_through_stq(svc, sandbox):
    gateway = gateway_for(sandbox)
    charged = new_id("unknown-charged")
    landed = gateway.sale("11.00", TEST_CARD, CUSTOMER, order_id=charged)
    assert landed.approved
    park_unknown(svc.store, charged)
    absent = new_id("unknown-absent")
    park_unknown(svc.store, absent)
    dead = new_id("inflight-dead")  # PENDING whose worker died: its lease ran out, nobody marked it UNKNOWN
    dead_landed = gateway.sale("13.00", TEST_CARD, CUSTOMER, order_id=dead)
    park_unknown(svc.store, dead, amount="13.00", lease_seconds=0, unknown=False)
    alive = new_id("inflight-alive")  # PENDING with a live lease: its worker is still on it
    park_unknown(svc.store, alive, lease_seconds=300, unknown=False)
    age(svc.store, RECONCILE_AFTER + 0.5)

    report = run_sweep(svc)

    # v2: "absent" within the commit horizon of an attempt that may have been sent proves nothing (it may still
    # commit): the record stays UNKNOWN, to be looked at again once the horizon has passed.
    assert report == {"ran": True, "reconcile_adopted": 2, "reconcile_still_unknown": 1}
    store = svc.store
    adopted = store.get(charged)
    assert adopted["status"] == "APPROVED" and adopted["trans_id"] == landed.trans_id
    assert adopted["reconciled"] == "stq" and adopted["message"] == "Approved Sale"
    assert len(charges(sandbox, charged)) == 1  # adopted, never sent again
    dead_record = store.get(dead)
    assert dead_record["status"] == "APPROVED" and dead_record["trans_id"] == dead_landed.trans_id
    assert len(charges(sandbox, dead)) == 1
    waiting = store.get(absent)
    assert waiting["status"] == "UNKNOWN" and not waiting.get("not_charged")
    assert float(waiting["sent_ts"]) + COMMIT_HORIZON <= float(waiting["next_check_ts"])  # looked at after it
    assert store.get(alive)["status"] == "PENDING"

    age(svc.store, COMMIT_HORIZON + 2)  # past the horizon since the attempt, and past the next check
    assert run_sweep(svc) == {"ran": True, "reconcile_not_charged": 1}
    closed = store.get(absent)
    assert closed["status"] == "ERROR" and closed["not_charged"] == "1"
    assert "nothing was charged" in closed["message"]
    assert charges(sandbox, absent) == []
    assert store.get(alive)["status"] == "PENDING"


def test_unreachable_gateway_keeps_unknown_with_a_growing_wait_then_gives_up_for_a_human(make_services):
    svc = make_services(bluepay_url=f"http://127.0.0.1:{closed_port()}/interfaces/", reconcile_give_up=600.0)
    pid = new_id("unknown")
    park_unknown(svc.store, pid)
    age(svc.store, RECONCILE_AFTER + 0.5)

    assert run_sweep(svc) == {"ran": True, "reconcile_still_unknown": 1}
    first = svc.store.get(pid)
    assert first["status"] == "UNKNOWN" and first["reconcile_tries"] == "1"
    first_wait = float(first["next_check_ts"]) - svc.store.now()
    assert first_wait > 30

    age(svc.store, 2)  # past RECONCILE_AFTER, before next_check_ts: looked at, not re-queried
    assert run_sweep(svc) == {"ran": True, "reconcile_skipped": 1}
    assert svc.store.get(pid)["reconcile_tries"] == "1"

    age(svc.store, first_wait + 1)
    assert run_sweep(svc) == {"ran": True, "reconcile_still_unknown": 1}
    second = svc.store.get(pid)
    assert second["status"] == "UNKNOWN" and second["reconcile_tries"] == "2"
    second_wait = float(second["next_check_ts"]) - svc.store.now()
    assert second_wait > first_wait  # the wait grows

    age(svc.store, 600)  # past RECONCILE_GIVE_UP since the record was created
    assert run_sweep(svc) == {"ran": True, "reconcile_gave_up": 1}
    final = svc.store.get(pid)
    assert final["status"] == "ERROR" and final["needs_human"] == "1"
    assert "check the gateway by hand" in final["message"]
    assert run_sweep(svc) == {"ran": True}  # final: nothing more to do


def test_sandbox_outage_keeps_unknown_and_the_charge_is_adopted_once_the_gateway_is_back(svc, sandbox):
    pid = new_id("unknown-outage")
    landed = gateway_for(sandbox).sale("15.00", TEST_CARD, CUSTOMER, order_id=pid)
    park_unknown(svc.store, pid, amount="15.00")
    age(svc.store, RECONCILE_AFTER + 0.5)
    sandbox.outage(2)
    time.sleep(0.3)
    try:
        assert run_sweep(svc) == {"ran": True, "reconcile_still_unknown": 1}
        assert svc.store.get(pid)["status"] == "UNKNOWN"
    finally:
        sandbox.wait_ready(timeout=15)
    age(svc.store, 3600)
    assert run_sweep(svc) == {"ran": True, "reconcile_adopted": 1}
    record = svc.store.get(pid)
    assert record["status"] == "APPROVED" and record["trans_id"] == landed.trans_id
    assert len(charges(sandbox, pid)) == 1


def test_gateway_outage_during_the_sweep_defers_the_void_and_the_sweep_carries_on(make_services, sandbox):
    """A void that cannot reach the gateway must not abort the sweep: the other records still get their look."""
    up = make_services()
    stale = charge(up, "auth", "17.00")
    down = make_services(bluepay_url=f"http://127.0.0.1:{closed_port()}/interfaces/")
    pid = new_id("unknown")
    park_unknown(down.store, pid)
    age(up.store, 1.5)  # past STALE_AUTH_AGE (1 s)

    report = run_sweep(down)

    assert report == {"ran": True, "stale_auth_void_deferred": 1, "reconcile_still_unknown": 1}
    assert down.store.get(stale["payment_id"])["status"] == "APPROVED"
    void = down.store.get(f"{stale['payment_id']}:void-stale")
    assert void["status"] == "RETRYING" and not void.get("sent_ts")  # refused connections: provably not sent
    # with the gateway back, the next sweep voids it, once
    age(up.store, 5)
    report = run_sweep(up)
    assert report.get("stale_auth_void_approved") == 1, report
    assert up.store.get(stale["payment_id"])["status"] == "VOIDED"
    assert len(approved_voids(sandbox, stale["trans_id"])) == 1


# ---------------------------------------------------------------------------------------------- 3. chains
def test_a_chain_whose_void_never_ran_is_voided_by_the_sweep(svc, sandbox):
    sold = charge(svc, "sale", "19.00", then_void=True)
    assert svc.store.get(sold["payment_id"])["then_void"] == "1"
    age(svc.store, RECONCILE_AFTER + 0.5)

    assert run_sweep(svc) == {"ran": True, "chain_void_approved": 1}

    void_id = f"{sold['payment_id']}:void"
    record = svc.store.get(sold["payment_id"])
    assert record["status"] == "VOIDED" and record["voided_by"] == void_id
    assert svc.store.get(void_id)["status"] == "APPROVED"
    assert len(approved_voids(sandbox, sold["trans_id"])) == 1
    assert run_sweep(svc) == {"ran": True}


def test_a_chain_void_that_ran_but_was_not_recorded_on_the_sale_is_repaired_without_a_second_void(svc, sandbox):
    sold = charge(svc, "sale", "21.00", then_void=True)
    void_id = f"{sold['payment_id']}:void"
    voided = gateway_for(sandbox).void(sold["trans_id"], order_id=void_id)
    # the crash between the void's outcome and the sale's update: the sale still says APPROVED
    record_unreflected(svc.store, void_id, "void", voided, parent=sold["payment_id"], target=sold["trans_id"])
    assert svc.store.get(sold["payment_id"])["status"] == "APPROVED"
    age(svc.store, RECONCILE_AFTER + 0.5)

    # v2: the repair pass (every APPROVED follow-up not reflected yet) does it before the chain pass looks
    # (was: chain_void_repaired)
    assert run_sweep(svc) == {"ran": True, "repair_reflected": 1}
    record = svc.store.get(sold["payment_id"])
    assert record["status"] == "VOIDED" and record["voided_by"] == void_id
    assert len(approved_voids(sandbox, sold["trans_id"])) == 1
    assert run_sweep(svc) == {"ran": True}


def test_a_chain_void_skipped_while_the_sale_was_unknown_is_done_once_the_sale_is_adopted(svc, sandbox):
    pid = new_id("sale")
    landed = gateway_for(sandbox).sale("23.00", TEST_CARD, CUSTOMER, order_id=pid)
    park_unknown(svc.store, pid, amount="23.00", then_void="1")
    skipped = svc.flow.void_after({"payment_id": pid, "status": "UNKNOWN"})  # the chain link ran meanwhile
    assert skipped["status"] == "SKIPPED"
    age(svc.store, RECONCILE_AFTER + 0.5)

    assert run_sweep(svc) == {"ran": True, "reconcile_adopted": 1}
    age(svc.store, RECONCILE_AFTER + 0.5)
    assert run_sweep(svc) == {"ran": True, "chain_void_approved": 1}

    record = svc.store.get(pid)
    assert record["status"] == "VOIDED" and record["voided_by"] == f"{pid}:void-sweep"
    assert len(approved_voids(sandbox, landed.trans_id)) == 1


# ---------------------------------------------------------------------------------------------- 4. repairs
def test_approved_follow_ups_never_reflected_on_their_originals_are_repaired_once(make_services, sandbox):
    """Issue 12 (6): a capture, a partial refund and a void of a capture whose final transition was written but
    whose original was never updated. The sweep reflects each on its original (the captured auth before the
    stale-auth pass could void it; refunds accumulate; a voided capture reopens its auth), with no gateway call."""
    svc = make_services(stale_auth_age=60.0)  # only what the test ages is stale
    gateway, store = gateway_for(sandbox), svc.store
    # an auth captured at the gateway; in the store it still looks open, and it is past STALE_AUTH_AGE
    auth_a = charge(svc, "auth", "51.00")
    cap_a = new_id("capture")
    record_unreflected(store, cap_a, "capture", gateway.capture(auth_a["trans_id"], "51.00", order_id=cap_a),
                       target=auth_a["trans_id"], amount="51.00")
    age(store, 61)
    # a sale partly refunded
    sale = charge(svc, "sale", "53.00")
    refund_1 = new_id("refund")
    record_unreflected(store, refund_1, "refund", gateway.refund(sale["trans_id"], "20.00", order_id=refund_1),
                       target=sale["trans_id"], amount="20.00")
    # an auth captured (reflected as usual), then that capture voided: the void never reached the store's capture
    auth_b = charge(svc, "auth", "55.00")
    cap_b = svc.flow.follow_up("capture", new_id("capture"), trans_id=auth_b["trans_id"], parent=auth_b["payment_id"])
    assert cap_b["status"] == "APPROVED" and store.get(auth_b["payment_id"])["status"] == "CAPTURED"
    void_b = new_id("void")
    record_unreflected(store, void_b, "void", gateway.void(cap_b["trans_id"], order_id=void_b),
                       target=cap_b["trans_id"], parent=cap_b["payment_id"])
    ledger_before = len(sandbox.ledger())

    report = run_sweep(svc)

    assert report == {"ran": True, "repair_reflected": 3}, report
    a = store.get(auth_a["payment_id"])
    assert a["status"] == "CAPTURED" and a["captured_by"] == cap_a
    assert approved_voids(sandbox, auth_a["trans_id"]) == []  # the stale-auth pass left the captured auth alone
    assert not store.get(f"{auth_a['payment_id']}:void-stale")
    s = store.get(sale["payment_id"])
    assert s["status"] == "PARTIALLY_REFUNDED" and s["refunded_amount"] == "20.00" and s["refunded_by"] == refund_1
    capture_b = store.get(cap_b["payment_id"])
    assert capture_b["status"] == "VOIDED" and capture_b["voided_by"] == void_b
    b = store.get(auth_b["payment_id"])
    assert b["status"] == "APPROVED" and not b.get("captured_by")  # reopened, as the gateway does
    assert any(cap_b["payment_id"] in h["note"] and h["status"] == "APPROVED" for h in b["history"])
    for fu in (cap_a, refund_1, void_b):
        assert store.get(fu)["reflected"] == "1"
    assert len(sandbox.ledger()) == ledger_before  # repairs are store-only

    # idempotent: nothing left to repair
    assert run_sweep(svc) == {"ran": True}
    assert store.get(sale["payment_id"])["refunded_amount"] == "20.00"
    # refunds accumulate: the rest of the sale, refunded as usual, makes it REFUNDED
    rest = svc.flow.follow_up("refund", new_id("refund"), trans_id=sale["trans_id"], amount="33.00")
    assert rest["status"] == "APPROVED", rest
    s = store.get(sale["payment_id"])
    assert s["status"] == "REFUNDED" and s["refunded_amount"] == "53.00" and s["refunded_by"] == rest["payment_id"]
    # the reopened auth can be captured again, at the gateway and in the store
    again = svc.flow.follow_up("capture", new_id("capture"), trans_id=auth_b["trans_id"], amount="55.00")
    assert again["status"] == "APPROVED", again
    assert store.get(auth_b["payment_id"])["captured_by"] == again["payment_id"]


# ---------------------------------------------------------------------------------------------- 5. concurrency
def _sweep_in_threads(services_list):
    barrier = threading.Barrier(len(services_list))
    results: list[dict[str, Any] | None] = [None] * len(services_list)
    errors: list[str] = []

    def run(i, s):
        try:
            barrier.wait(timeout=10)
            results[i] = run_sweep(s)
        except Exception as exc:  # reported below; a crash in a thread must fail the test
            errors.append(repr(exc))

    threads = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate(services_list)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    return results


def test_two_sweeps_at_once_void_each_stale_auth_once_and_the_second_does_nothing(make_services, sandbox):
    first, second = make_services(), make_services()
    auths = [charge(first, "auth", amount) for amount in ("25.00", "27.00", "29.00")]
    age(first.store, 1.5)  # past STALE_AUTH_AGE (1 s)

    reports = _sweep_in_threads([first, second])

    voided = [r for r in reports if r.get("stale_auth_void_approved")]
    assert len(voided) == 1 and voided[0] == {"ran": True, "stale_auth_void_approved": 3}, reports
    other = reports[1 - reports.index(voided[0])]
    assert other in ({"ran": False, "reason": "another sweep is running"}, {"ran": True}), reports
    for a in auths:
        assert len(approved_voids(sandbox, a["trans_id"])) == 1
        assert first.store.get(a["payment_id"])["status"] == "VOIDED"


def test_sweeps_that_outlived_their_lock_still_never_void_twice(make_services, sandbox):
    """Deterministic void ids: even two sweeps running at once without the lock send one VOID per auth."""
    sweeps = [make_services() for _ in range(3)]
    for s in sweeps:
        s.store.locks.acquire = lambda name, ttl_seconds: "no-lock"  # as if each one's lock had expired
    auths = [charge(sweeps[0], "auth", amount) for amount in ("31.00", "33.00", "35.00", "37.00")]
    age(sweeps[0].store, 1.5)  # past STALE_AUTH_AGE (1 s)

    reports = _sweep_in_threads(sweeps)

    assert all(r["ran"] for r in reports), reports
    for a in auths:
        assert len(approved_voids(sandbox, a["trans_id"])) == 1, a
        assert sweeps[0].store.get(a["payment_id"])["status"] == "VOIDED"


# ---------------------------------------------------------------------------------------------- 6. the report
def test_the_report_counts_each_action_and_payments_sweep_prints_it(make_services, sandbox, prefix, tmp_path):
    svc = make_services()
    stale = [charge(svc, "auth", amount) for amount in ("39.00", "41.00")]
    chain = charge(svc, "sale", "43.00", then_void=True)
    charged = new_id("unknown")
    gateway = gateway_for(sandbox)
    gateway.sale("45.00", TEST_CARD, CUSTOMER, order_id=charged)
    park_unknown(svc.store, charged, amount="45.00")
    absent = new_id("unknown")
    park_unknown(svc.store, absent)
    refunded = charge(svc, "sale", "49.00")
    refund_id = new_id("refund")
    record_unreflected(svc.store, refund_id, "refund", gateway.refund(refunded["trans_id"], "9.00", order_id=refund_id),
                       target=refunded["trans_id"], amount="9.00")
    age(svc.store, COMMIT_HORIZON + 1)  # past every age below, and past the commit horizon of the parked attempts

    env = dict(os.environ, REDIS_URL=E2E_REDIS_URL, PAYMENTS_KEY_PREFIX=prefix, BLUEPAY_URL=sandbox.interfaces_url,
               BLUEPAY_ACCOUNT_ID=sandbox.account_id, BLUEPAY_SECRET_KEY=sandbox.secret_key, STALE_AUTH_AGE="1s",
               RECONCILE_AFTER="0.5s", GATEWAY_CONNECT_TIMEOUT="1", GATEWAY_READ_TIMEOUT="2",
               GATEWAY_COMMIT_HORIZON=f"{COMMIT_HORIZON:g}s")
    exe = BIN / "payments"
    cmd = [str(exe)] if exe.exists() else [  # not installed here: the same entry point (worker.cli.main:main)
        sys.executable, "-m", "worker.cli"]
    done = subprocess.run([*cmd, "sweep"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # v2: the repair pass has its own count
    assert report == {"ran": True, "stale_auth_void_approved": 2, "reconcile_adopted": 1,
                      "reconcile_not_charged": 1, "repair_reflected": 1, "chain_void_approved": 1}
    for a in stale:
        assert svc.store.get(a["payment_id"])["status"] == "VOIDED"
    assert svc.store.get(chain["payment_id"])["status"] == "VOIDED"
    assert svc.store.get(refunded["payment_id"])["status"] == "PARTIALLY_REFUNDED"
    again = subprocess.run([*cmd, "sweep"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert json.loads(again.stdout.strip().splitlines()[-1]) == {"ran": True}


# ---------------------------------------------------------------------------------------------- 7. beat
def test_beat_sends_the_sweep_on_schedule_and_a_worker_runs_it(make_services, sandbox, prefix, tmp_path):
    # A Redis database of its own (TEST_BEAT_REDIS_URL, database 14 by default), flushed before and after: beat
    # publishes to the default queue, which the session's e2e worker (other settings, other prefix) would
    # otherwise share with this test's worker. Real ages here: the worker's sweep reads Redis server time.
    svc = make_services(redis_url=BEAT_REDIS_URL)
    svc.redis.flushdb()
    stale = charge(svc, "auth", "47.00")
    env = worker_env(sandbox, REDIS_URL=BEAT_REDIS_URL, PAYMENTS_KEY_PREFIX=prefix, STALE_AUTH_AGE="1s",
                     SWEEP_INTERVAL="1s")
    beat_log = tmp_path / "beat.log"
    celery = [str(BIN / "celery")] if (BIN / "celery").exists() else [sys.executable, "-m", "celery"]
    with running_worker(env, tmp_path / "worker.log", concurrency=2):
        beat = subprocess.Popen([*celery, "-A", "worker", "beat", "--loglevel", "INFO",
                                 "--schedule", str(tmp_path / "celerybeat-schedule"), "--logfile", str(beat_log)],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and svc.store.get(stale["payment_id"])["status"] != "VOIDED":
                assert beat.poll() is None, beat_log.read_text()
                time.sleep(0.2)
        finally:
            os.killpg(beat.pid, signal.SIGTERM)
            try:
                beat.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(beat.pid, signal.SIGKILL)
                beat.wait(5)
    log = beat_log.read_text()
    assert "beat: Starting" in log
    assert re.search(r"Scheduler: Sending due task payments-sweep \(payments\.sweep\)", log), log
    record = svc.store.get(stale["payment_id"])
    assert record["status"] == "VOIDED" and record["voided_by"] == f"{stale['payment_id']}:void-stale"
    assert len(approved_voids(sandbox, stale["trans_id"])) == 1
    assert "payments.sweep" in (tmp_path / "worker.log").read_text()
    assert scan_files([beat_log, tmp_path / "worker.log"], cvv2=TEST_CARD["cvv2"]) == []
    svc.redis.flushdb()
