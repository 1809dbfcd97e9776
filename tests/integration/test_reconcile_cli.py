"""``payments reconcile`` and ``payments resolve`` as a person runs them (a subprocess), against real Redis and the
sandbox over HTTP; the payments themselves are made by the real flow, store and client in this process."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.env import INTEGRATION_REDIS_URL, TEST_CARD_KEY
from tests.support.redis_db import redis_or_skip
from tests.support.sandbox import running_sandbox
from worker.gateway import BluePayClient, RetryPolicy
from worker.payments.flow import PaymentFlow
from worker.store import ResultsStore
from worker.store.reconciliations import Reconciliations

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = INTEGRATION_REDIS_URL
CARD = {"number": "4111111111111111", "expire": "1230", "cvv2": "123"}
TODAY = dt.datetime.now(dt.UTC).date().isoformat()


@pytest.fixture(scope="module")
def client():
    with redis_or_skip(REDIS_URL) as r:
        yield r


@pytest.fixture
def world(client):
    prefix = f"test:recon:{uuid.uuid4().hex}:"
    with running_sandbox(duplicate_window=0) as sb:
        store = ResultsStore(client, prefix=prefix)
        gateway = BluePayClient(account_id=sb.account_id, secret_key=sb.secret_key, base_url=sb.interfaces_url,
                                retry_policy=RetryPolicy(max_attempts=2, max_seconds=5))
        env = dict(os.environ, REDIS_URL=REDIS_URL, PAYMENTS_KEY_PREFIX=prefix, BLUEPAY_URL=sb.interfaces_url,
                   BLUEPAY_ACCOUNT_ID=sb.account_id, BLUEPAY_SECRET_KEY=sb.secret_key, BLUEPAY_MODE="TEST")
        yield sb, store, PaymentFlow(store=store, gateway=gateway, card_keys=[TEST_CARD_KEY]), env
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)


def payments(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def reconcile_json(env) -> tuple[int, dict]:
    done = payments(env, "reconcile", "--date", TODAY, "--json")
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def kinds(report) -> list[tuple[str, str]]:
    return sorted((f["kind"], f["payment_id"]) for day in report["days"] for f in day["findings"])


def pid() -> str:
    return "op-" + uuid.uuid4().hex[:12]


def test_a_clean_day_then_each_difference_a_person_can_make(world) -> None:
    sb, store, flow, env = world
    sale, declined, voided = pid(), pid(), pid()
    assert flow.charge("sale", sale, amount="3.00", card=CARD)["status"] == "APPROVED"
    assert flow.charge("sale", declined, amount="4.00", card=CARD)["status"] == "DECLINED"
    first = flow.charge("sale", voided, amount="5.00", card=CARD)
    assert flow.void_after(first)["status"] == "APPROVED"

    done = payments(env, "reconcile", "--date", TODAY)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 report rows, 4 records, 0 differences" in done.stdout and "0 differences left" in done.stdout

    booked = sb.book("7.00", order_id=sale)                # a second charge under our ORDER_ID, in the console
    console = sb.book("9.00", order_id="walk-in-" + uuid.uuid4().hex[:6])
    other = flow.charge("sale", pid(), amount="11.00", card=CARD)
    sb.console_void(other["trans_id"])                     # voided in the console
    code, report = reconcile_json(env)
    assert code == 1 and report["differences"] == 3
    assert kinds(report) == sorted([("gateway_only", sale), ("gateway_only", ""),
                                    ("voided_at_gateway", other["payment_id"])])
    found = {f["trans_id"]: f for f in report["days"][0]["findings"]}
    assert booked["id"] in found and console["id"] in found
    kept = Reconciliations(store).kept(TODAY)
    assert kept is not None and kept["differences"] == 3

    table = payments(env, "reconcile", "--from", TODAY, "--to", TODAY)
    assert table.returncode == 1 and "gateway_only" in table.stdout and "voided_at_gateway:" in table.stdout
    assert "3 differences left over 1 day" in table.stdout


def test_an_unknown_operation_is_adopted_and_a_needs_human_one_resolved(world) -> None:
    sb, store, _flow, env = world
    unknown, human = pid(), pid()
    store.claim(unknown, "sale", owner="w1", lease_seconds=30, fields={"amount": "3.00", "order_id": unknown})
    store.transition(unknown, "UNKNOWN", expect={"PENDING"}, owner="w1", sent=True)
    charged = sb.book("3.00", order_id=unknown)             # what the lost reply said
    store.claim(human, "sale", owner="w1", lease_seconds=30, fields={"amount": "5.00", "order_id": human})
    store.transition(human, "ERROR", expect={"PENDING"}, owner="w1", sent=True,
                     fields={"needs_human": "1", "message": "outcome still unknown: check by hand"})
    human_charge = sb.book("5.00", order_id=human)

    code, report = reconcile_json(env)
    assert code == 1 and kinds(report) == sorted([("adopted", unknown), ("status_mismatch", human)])
    adopted = store.get(unknown)
    assert adopted["status"] == "APPROVED" and adopted["trans_id"] == charged["id"]
    assert f"report of {TODAY}" in adopted["history"][-1]["note"]

    refused = payments(env, "resolve", human, "--status", "ERROR", "--reason", "nothing charged")
    assert refused.returncode == 2 and "contradict the gateway's report of" in refused.stderr
    assert "it was charged" in refused.stderr and store.get(human)["status"] == "ERROR"
    wrong = payments(env, "resolve", human, "--status", "APPROVED", "--trans-id", "100000000000", "--reason", "x")
    assert wrong.returncode == 2 and "refused" in wrong.stderr
    ok = payments(env, "resolve", human, "--status", "APPROVED", "--trans-id", human_charge["id"],
                  "--reason", "found in the console")
    assert ok.returncode == 0, ok.stderr
    record = store.get(human)
    assert record["status"] == "APPROVED" and record["needs_human"] == "" and record["resolved_by"]
    assert "found in the console" in record["history"][-1]["note"]
    again = payments(env, "resolve", human, "--status", "ERROR", "--reason", "again")
    assert again.returncode == 2 and "does not need a human" in again.stderr
    not_human = payments(env, "resolve", unknown, "--status", "ERROR", "--reason", "x")
    assert not_human.returncode == 2

    code, report = reconcile_json(env)
    assert code == 0 and report["differences"] == 0


def test_no_verdict_when_the_report_cannot_be_had(world) -> None:
    sb, store, flow, env = world
    flow.charge("sale", pid(), amount="3.00", card=CARD)
    sb.set_faults({"endpoints": ["bpdailyreport2"], "probabilities": {"http_503": 1.0}})
    done = payments(env, "reconcile", "--date", TODAY)
    last = done.stderr.strip().splitlines()[-1]  # (the retries' warnings come before it)
    assert done.returncode == 2 and last.startswith("payments: error: ") and "no verdict" in last
    assert Reconciliations(store).kept(TODAY) is None
    bad = payments(env, "reconcile", "--date", "28/11/2026")
    assert bad.returncode == 2 and "not a date" in bad.stderr


def test_a_voided_record_whose_transaction_settled_is_found(world) -> None:
    sb, store, _flow, env = world
    old, today = pid(), pid()
    three_days_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(days=3)).timestamp()
    booked = sb.book("3.00", order_id=old, created_at=three_days_ago)   # issued days before...
    for p, trans in ((old, booked["id"]), (today, None)):
        store.claim(p, "sale", owner="w1", lease_seconds=30, fields={"amount": "3.00", "order_id": p})
        if trans is None:
            trans = sb.book("3.00", order_id=p)["id"]
        store.transition(p, "APPROVED", expect={"PENDING"}, owner="w1", sent=True, fields={"trans_id": trans})
        store.transition(p, "VOIDED", expect={"APPROVED"}, note="voided (as we believe)")
    store.redis.zadd(store.keys.time, {old: three_days_ago})           # our record is as old as its charge
    store.redis.hset(store.record_key(old), "created_ts", f"{three_days_ago:.3f}")
    sb.settle([booked["id"], store.get(today)["trans_id"]])              # ...both settled tonight all the same
    code, report = reconcile_json(env)
    assert code == 1 and kinds(report) == sorted([("settled_but_voided", old), ("settled_but_voided", today)])
