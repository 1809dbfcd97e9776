"""The sweep (worker/sweep.py) against the e2e Redis and the sandbox over HTTP.

Each test has its own key prefix, so a sweep sees only the records the test made; the sandbox's ledger
(shared by the session) is the proof of what the gateway was asked to do. Time-dependent steps use a
store clock the test can move forward (wall time plus an offset) instead of sleeping for minutes.
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

import pytest

from tests.support.card_scan import scan_files
from tests.support.clocks import OffsetClock
from tests.support.env import CUSTOMER, E2E_REDIS_URL, TEST_CARD, TEST_CARD_KEY, redis_url_with_db
from tests.support.ports import closed_port
from tests.support.workers import running_worker, worker_env
from worker.config import Settings
from worker.gateway import BluePayClient
from worker.services import Services
from worker.store import ResultsStore
from worker.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RECONCILE_AFTER = 0.5


@pytest.fixture
def prefix(e2e_redis):
    p = f"test:sweep:{uuid.uuid4().hex[:12]}:"
    yield p
    keys = list(e2e_redis.scan_iter(match=p + "*", count=1000))
    if keys:
        e2e_redis.delete(*keys)


@pytest.fixture
def clock():
    return OffsetClock()


@pytest.fixture
def make_services(sandbox, clean_faults, prefix, clock):
    """Services(Settings(...)) on the test's prefix, the sandbox, tiny ages and short gateway budgets."""
    built = []

    def make(**overrides):
        settings = dict(
            redis_url=E2E_REDIS_URL, key_prefix=prefix, bluepay_url=sandbox.interfaces_url,
            bluepay_account_id=sandbox.account_id, bluepay_secret_key=sandbox.secret_key, card_key=TEST_CARD_KEY,
            connect_timeout=1.0, read_timeout=2.0, retry_attempts=2, retry_seconds=1.0, visibility_timeout=60.0,
            stale_auth_age=1.0, reconcile_after=RECONCILE_AFTER, reconcile_give_up=3600.0, sweep_interval=1.0,
        )
        settings.update(overrides)
        svc = Services(Settings(**settings).check())
        svc.__dict__["store"] = ResultsStore(svc.redis, prefix=prefix, clock=clock)  # before svc.flow is built
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


def approved_voids(sandbox, trans_id):
    return [e for e in sandbox.ledger() if e["trans_type"] == "VOID" and e["origin"] == trans_id and e["status"] == "1"]


def charges(sandbox, order_id):
    return [e for e in sandbox.ledger(order_id=order_id) if e["trans_type"] in ("SALE", "AUTH")]


def park_unknown(store, pid, operation="sale", *, amount="11.00", lease_seconds=60.0, unknown=True, **fields):
    """A record whose worker died mid-call: claimed, then (if ``unknown``) left UNKNOWN at its time limit."""
    store.claim(pid, operation, fields={"amount": amount, "order_id": pid, **fields}, owner="dead-worker",
                lease_seconds=lease_seconds)
    if unknown:
        store.transition(pid, "UNKNOWN", expect="PENDING", owner="dead-worker",
                         fields={"message": "soft time limit reached mid-call"}, note="time limit")


# ---------------------------------------------------------------------------------------------- 1. stale auths
def test_stale_auths_are_voided_with_the_reason_and_captured_or_young_ones_are_left_alone(svc, sandbox, clock):
    stale = charge(svc, "auth", "5.00")
    captured = charge(svc, "auth", "7.00")
    capture = svc.flow.follow_up("capture", new_id("capture"), trans_id=captured["trans_id"], amount="7.00")
    assert capture["status"] == "APPROVED"
    clock.advance(1.5)  # past STALE_AUTH_AGE (1 s) by the store's clock
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
def test_unknown_and_dead_in_flight_operations_are_reconciled_through_stq(svc, sandbox, clock):
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
    clock.advance(RECONCILE_AFTER + 0.5)

    report = run_sweep(svc)

    assert report == {"ran": True, "reconcile_adopted": 2, "reconcile_not_charged": 1}
    store = svc.store
    adopted = store.get(charged)
    assert adopted["status"] == "APPROVED" and adopted["trans_id"] == landed.trans_id
    assert adopted["reconciled"] == "stq" and adopted["message"] == "Approved Sale"
    assert len(charges(sandbox, charged)) == 1  # adopted, never sent again
    dead_record = store.get(dead)
    assert dead_record["status"] == "APPROVED" and dead_record["trans_id"] == dead_landed.trans_id
    assert len(charges(sandbox, dead)) == 1
    closed = store.get(absent)
    assert closed["status"] == "ERROR" and closed["not_charged"] == "1"
    assert "nothing was charged" in closed["message"]
    assert charges(sandbox, absent) == []
    assert store.get(alive)["status"] == "PENDING"


def test_unreachable_gateway_keeps_unknown_with_a_growing_wait_then_gives_up_for_a_human(make_services, clock):
    svc = make_services(bluepay_url=f"http://127.0.0.1:{closed_port()}/interfaces/", reconcile_give_up=600.0)
    pid = new_id("unknown")
    park_unknown(svc.store, pid)
    clock.advance(RECONCILE_AFTER + 0.5)

    assert run_sweep(svc) == {"ran": True, "reconcile_still_unknown": 1}
    first = svc.store.get(pid)
    assert first["status"] == "UNKNOWN" and first["reconcile_tries"] == "1"
    first_wait = float(first["next_check_ts"]) - clock()
    assert first_wait > 30

    clock.advance(2)  # past RECONCILE_AFTER, before next_check_ts: looked at, not re-queried
    assert run_sweep(svc) == {"ran": True, "reconcile_skipped": 1}
    assert svc.store.get(pid)["reconcile_tries"] == "1"

    clock.advance(first_wait + 1)
    assert run_sweep(svc) == {"ran": True, "reconcile_still_unknown": 1}
    second = svc.store.get(pid)
    assert second["status"] == "UNKNOWN" and second["reconcile_tries"] == "2"
    assert float(second["next_check_ts"]) - clock() > first_wait  # the wait grows
    assert float(second["next_check_ts"]) > float(first["next_check_ts"])

    clock.advance(600)  # past RECONCILE_GIVE_UP since the record was created
    assert run_sweep(svc) == {"ran": True, "reconcile_gave_up": 1}
    final = svc.store.get(pid)
    assert final["status"] == "ERROR" and final["needs_human"] == "1"
    assert "check the gateway by hand" in final["message"]
    assert run_sweep(svc) == {"ran": True}  # final: nothing more to do


def test_sandbox_outage_keeps_unknown_and_the_charge_is_adopted_once_the_gateway_is_back(svc, sandbox, clock):
    pid = new_id("unknown-outage")
    landed = gateway_for(sandbox).sale("15.00", TEST_CARD, CUSTOMER, order_id=pid)
    park_unknown(svc.store, pid, amount="15.00")
    clock.advance(RECONCILE_AFTER + 0.5)
    sandbox.outage(2)
    time.sleep(0.3)
    try:
        assert run_sweep(svc) == {"ran": True, "reconcile_still_unknown": 1}
        assert svc.store.get(pid)["status"] == "UNKNOWN"
    finally:
        sandbox.wait_ready(timeout=15)
    clock.advance(3600)
    assert run_sweep(svc) == {"ran": True, "reconcile_adopted": 1}
    record = svc.store.get(pid)
    assert record["status"] == "APPROVED" and record["trans_id"] == landed.trans_id
    assert len(charges(sandbox, pid)) == 1


def test_gateway_outage_during_the_sweep_defers_the_void_and_the_sweep_carries_on(make_services, sandbox, clock):
    """A void that cannot reach the gateway must not abort the sweep: the other records still get their look."""
    up = make_services()
    stale = charge(up, "auth", "17.00")
    down = make_services(bluepay_url=f"http://127.0.0.1:{closed_port()}/interfaces/")
    pid = new_id("unknown")
    park_unknown(down.store, pid)
    clock.advance(1.5)  # past STALE_AUTH_AGE (1 s) by the store's clock

    report = run_sweep(down)

    assert report == {"ran": True, "stale_auth_void_deferred": 1, "reconcile_still_unknown": 1}
    assert down.store.get(stale["payment_id"])["status"] == "APPROVED"
    # with the gateway back, the next sweep voids it, once
    clock.advance(5)
    report = run_sweep(up)
    assert report.get("stale_auth_void_approved") == 1, report
    assert up.store.get(stale["payment_id"])["status"] == "VOIDED"
    assert len(approved_voids(sandbox, stale["trans_id"])) == 1


# ---------------------------------------------------------------------------------------------- 3. chains
def test_a_chain_whose_void_never_ran_is_voided_by_the_sweep(svc, sandbox, clock):
    sold = charge(svc, "sale", "19.00", then_void=True)
    assert svc.store.get(sold["payment_id"])["then_void"] == "1"
    clock.advance(RECONCILE_AFTER + 0.5)

    assert run_sweep(svc) == {"ran": True, "chain_void_approved": 1}

    void_id = f"{sold['payment_id']}:void"
    record = svc.store.get(sold["payment_id"])
    assert record["status"] == "VOIDED" and record["voided_by"] == void_id
    assert svc.store.get(void_id)["status"] == "APPROVED"
    assert len(approved_voids(sandbox, sold["trans_id"])) == 1
    assert run_sweep(svc) == {"ran": True}


def test_a_chain_void_that_ran_but_was_not_recorded_on_the_sale_is_repaired_without_a_second_void(
        svc, sandbox, clock):
    sold = charge(svc, "sale", "21.00", then_void=True)
    void_id = f"{sold['payment_id']}:void"
    assert svc.flow.follow_up("void", void_id, trans_id=sold["trans_id"])["status"] == "APPROVED"
    # the crash between the void and the sale's update: the sale still says APPROVED
    assert svc.store.transition(sold["payment_id"], "APPROVED", expect=("VOIDED",), note="test: undo")
    clock.advance(RECONCILE_AFTER + 0.5)

    assert run_sweep(svc) == {"ran": True, "chain_void_repaired": 1}
    assert svc.store.get(sold["payment_id"])["status"] == "VOIDED"
    assert len(approved_voids(sandbox, sold["trans_id"])) == 1


def test_a_chain_void_skipped_while_the_sale_was_unknown_is_done_once_the_sale_is_adopted(svc, sandbox, clock):
    pid = new_id("sale")
    landed = gateway_for(sandbox).sale("23.00", TEST_CARD, CUSTOMER, order_id=pid)
    park_unknown(svc.store, pid, amount="23.00", then_void="1")
    skipped = svc.flow.void_after({"payment_id": pid, "status": "UNKNOWN"})  # the chain link ran meanwhile
    assert skipped["status"] == "SKIPPED"
    clock.advance(RECONCILE_AFTER + 0.5)

    assert run_sweep(svc) == {"ran": True, "reconcile_adopted": 1}
    clock.advance(RECONCILE_AFTER + 0.5)
    assert run_sweep(svc) == {"ran": True, "chain_void_approved": 1}

    record = svc.store.get(pid)
    assert record["status"] == "VOIDED" and record["voided_by"] == f"{pid}:void-sweep"
    assert len(approved_voids(sandbox, landed.trans_id)) == 1


# ---------------------------------------------------------------------------------------------- 4. concurrency
def _sweep_in_threads(services_list):
    barrier = threading.Barrier(len(services_list))
    results, errors = [None] * len(services_list), []

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


def test_two_sweeps_at_once_void_each_stale_auth_once_and_the_second_does_nothing(make_services, sandbox, clock):
    first, second = make_services(), make_services()
    auths = [charge(first, "auth", amount) for amount in ("25.00", "27.00", "29.00")]
    clock.advance(1.5)  # past STALE_AUTH_AGE (1 s) by the store's clock

    reports = _sweep_in_threads([first, second])

    voided = [r for r in reports if r.get("stale_auth_void_approved")]
    assert len(voided) == 1 and voided[0] == {"ran": True, "stale_auth_void_approved": 3}, reports
    other = reports[1 - reports.index(voided[0])]
    assert other in ({"ran": False, "reason": "another sweep is running"}, {"ran": True}), reports
    for a in auths:
        assert len(approved_voids(sandbox, a["trans_id"])) == 1
        assert first.store.get(a["payment_id"])["status"] == "VOIDED"


def test_sweeps_that_outlived_their_lock_still_never_void_twice(make_services, sandbox, clock):
    """Deterministic void ids: even two sweeps running at once without the lock send one VOID per auth."""
    sweeps = [make_services() for _ in range(3)]
    for s in sweeps:
        s.store.acquire_lock = lambda name, ttl_seconds: "no-lock"  # as if each one's lock had expired
    auths = [charge(sweeps[0], "auth", amount) for amount in ("31.00", "33.00", "35.00", "37.00")]
    clock.advance(1.5)  # past STALE_AUTH_AGE (1 s) by the store's clock

    reports = _sweep_in_threads(sweeps)

    assert all(r["ran"] for r in reports), reports
    for a in auths:
        assert len(approved_voids(sandbox, a["trans_id"])) == 1, a
        assert sweeps[0].store.get(a["payment_id"])["status"] == "VOIDED"


# ---------------------------------------------------------------------------------------------- 5. the report
def test_the_report_counts_each_action_and_payments_sweep_prints_it(make_services, sandbox, prefix, tmp_path):
    svc = make_services()
    stale = [charge(svc, "auth", amount) for amount in ("39.00", "41.00")]
    chain = charge(svc, "sale", "43.00", then_void=True)
    charged = new_id("unknown")
    gateway_for(sandbox).sale("45.00", TEST_CARD, CUSTOMER, order_id=charged)
    park_unknown(svc.store, charged, amount="45.00")
    absent = new_id("unknown")
    park_unknown(svc.store, absent)
    time.sleep(1.2)

    env = dict(os.environ, REDIS_URL=E2E_REDIS_URL, PAYMENTS_KEY_PREFIX=prefix, BLUEPAY_URL=sandbox.interfaces_url,
               BLUEPAY_ACCOUNT_ID=sandbox.account_id, BLUEPAY_SECRET_KEY=sandbox.secret_key, STALE_AUTH_AGE="1s",
               RECONCILE_AFTER="0.5s")
    exe = BIN / "payments"
    cmd = [str(exe)] if exe.exists() else [  # not installed here: the same entry point (worker.cli:main)
        sys.executable, "-c", "import sys; from worker.cli import main; sys.exit(main())"]
    done = subprocess.run([*cmd, "sweep"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"ran": True, "stale_auth_void_approved": 2, "reconcile_adopted": 1,
                      "reconcile_not_charged": 1, "chain_void_approved": 1}
    for a in stale:
        assert svc.store.get(a["payment_id"])["status"] == "VOIDED"
    assert svc.store.get(chain["payment_id"])["status"] == "VOIDED"
    again = subprocess.run([*cmd, "sweep"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert json.loads(again.stdout.strip().splitlines()[-1]) == {"ran": True}


# ---------------------------------------------------------------------------------------------- 6. beat
def test_beat_sends_the_sweep_on_schedule_and_a_worker_runs_it(make_services, sandbox, prefix, tmp_path):
    # A Redis database of its own: beat publishes to the default queue, which the session's e2e worker
    # (other settings, other prefix) would otherwise share with this test's worker.
    beat_redis_url = redis_url_with_db(14)
    svc = make_services(redis_url=beat_redis_url)
    svc.redis.flushdb()
    stale = charge(svc, "auth", "47.00")
    env = worker_env(sandbox, REDIS_URL=beat_redis_url, PAYMENTS_KEY_PREFIX=prefix, STALE_AUTH_AGE="1s",
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
