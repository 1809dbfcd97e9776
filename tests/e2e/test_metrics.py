"""Metrics against the real thing: a prefork worker (two children) with WORKER_METRICS_PORT, the sandbox injecting
faults, the exporter (``payments metrics``) and ``payments status`` as processes, Redis database 15 of their own.

* The workers' counters, summed over the children by the multiprocess mode, equal the store's records by merchant
  account and status (a third of the sales are a second account's, ``shop2``: their own series).
* The exporter's gauges equal what the store and the broker hold (counted here by scanning every record).
* ``payments status`` says what needs a human and exits accordingly.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.env import CUSTOMER, TEST_CARD, redis_url_with_db
from tests.support.ports import free_port
from tests.support.sandbox import running_sandbox
from tests.support.workers import running_worker, worker_env

METRICS_REDIS_URL = os.environ.get("TEST_METRICS_REDIS_URL") or redis_url_with_db(15)
PAYMENTS = 30
FAULTS = {"seed": 16, "endpoints": ["bp10emu"],
          "probabilities": {"refuse": 0.15, "http_502": 0.1, "drop_after_commit": 0.1, "http_500_after_commit": 0.05}}
FINAL_WAIT = 120
SHOP2_ID, SHOP2_SECRET = "100000000002", "SHOP2SECRETKEY00000000000000000"


def samples(text: str, name: str) -> dict[tuple, float]:
    """{label values (sorted by label name): value} of one metric's samples in a scrape."""
    out: dict[tuple, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(v for _, v in sorted(s.labels.items()))] = s.value
    return out


def store_statuses(client: redis.Redis, merchant: str | None = None) -> Counter:
    """Records by status (of one account other than default), counted the slow way: every record of this database."""
    records = (client.hmget(key, "status", "merchant") for key in client.scan_iter(match="payments:op:*", count=1000))
    return Counter(status for status, named in records if merchant is None or named == merchant)


@pytest.fixture(scope="module")
def metrics_db():
    client = redis.Redis.from_url(METRICS_REDIS_URL, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def sandbox():
    """This module's own sandbox, serving a second merchant account beside the first."""
    with running_sandbox(extra_args=["--accounts", json.dumps({SHOP2_ID: SHOP2_SECRET})]) as sb:
        yield sb


@pytest.fixture(scope="module")
def env(sandbox, metrics_db):
    accounts = {"shop2": {"account_id": SHOP2_ID, "secret_key": SHOP2_SECRET}}
    return worker_env(sandbox, REDIS_URL=METRICS_REDIS_URL, WORKER_METRICS_PORT=free_port(),
                      BLUEPAY_ACCOUNTS=json.dumps(accounts))


@pytest.fixture(scope="module")
def metrics_worker(env, tmp_path_factory):
    log = tmp_path_factory.mktemp("metrics-worker") / "worker.log"
    with running_worker(env, log, pool="prefork", concurrency=2) as proc:
        yield proc, log


@pytest.fixture(scope="module")
def exporter(env, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("exporter") / "exporter.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "metrics", "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(url, timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        else:
            raise AssertionError(f"the exporter did not come up: {log.read_text()[-2000:]}")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def producer(metrics_db):
    from tests.reliability.scenarios import producer_for

    with producer_for(METRICS_REDIS_URL) as app:
        yield app


def payments_status(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.cli", "status", *args], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture(scope="module")
def ran(sandbox, metrics_worker, producer, metrics_db, env):
    """N sales through the faulty sandbox, then sweeps (run by the worker) until every record is final."""
    sale = producer.tasks["payments.sale"]  # this producer's own (database 15), not worker.app's

    sandbox.reset()
    sandbox.set_faults(FAULTS)
    ids = []
    try:
        for i in range(PAYMENTS):
            amount = f"{3 + i % 4}.{i % 10}0"  # odd dollars approve, even decline (TEST mode)
            merchant = {"merchant": "shop2"} if i % 3 == 0 else {}  # a third are the second account's
            ids.append(sale.delay(amount=amount, card=dict(TEST_CARD), customer=CUSTOMER, **merchant).id)
        deadline = time.monotonic() + FINAL_WAIT
        while time.monotonic() < deadline:
            statuses = {pid: metrics_db.hget(f"payments:op:{pid}", "status") for pid in ids}
            if all(s not in (None, "PENDING", "RETRYING", "UNKNOWN") for s in statuses.values()):
                break
            if all(s is not None for s in statuses.values()):
                producer.send_task("payments.sweep")  # RECONCILE_AFTER is 2 s here
            time.sleep(2)
        else:
            raise AssertionError(f"not final after {FINAL_WAIT}s: {Counter(statuses.values())}")
    finally:
        injected = sandbox.stats()["faults_injected"]
        sandbox.set_faults({})
    assert sum(injected.values()) > 0, "the sandbox injected no fault: the test would prove little"
    producer.send_task("payments.sweep")  # one more, with nothing to do: its report is the last one
    time.sleep(3)
    return ids


def scrape(url: str) -> str:
    return requests.get(url, timeout=10).text


def test_the_workers_counters_equal_the_stores_records_by_merchant_and_status(ran, env, metrics_db):
    text = scrape(f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}/metrics")
    counted = {key: int(v) for key, v in samples(text, "payments_operations_total").items()}
    records = {pid: metrics_db.hgetall(f"payments:op:{pid}") for pid in ran}
    stored = Counter((r.get("merchant") or "default", "sale", r["status"]) for r in records.values())
    assert {m for m, _, _ in stored} == {"default", "shop2"}  # both accounts' outcomes, in series of their own
    assert counted == dict(stored)
    # amounts: the float counter adds up to the store's amounts by merchant and status
    amounts = samples(text, "payments_amount_total")
    for merchant, op, status in stored:
        total = sum(Decimal(r["amount"]) for r in records.values()
                    if r["status"] == status and (r.get("merchant") or "default") == merchant)
        assert amounts[(merchant, op, status)] == pytest.approx(float(total)), (merchant, status)
    # faults were met and said so: retries, attempts that did not get an answer; nothing is left in flight
    attempts = samples(text, "payments_gateway_request_seconds_count")  # (endpoint, merchant, result)
    results = {result for (_, _, result) in attempts}
    assert {merchant for (_, merchant, _) in attempts} == {"default", "shop2"}
    assert {"approved", "declined"} <= results and results & {"not_sent", "unknown"}
    assert sum(samples(text, "payments_in_flight").values()) == 0
    # both prefork children wrote (the main process serves their sum)
    worker_dir = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"payments-worker-metrics-{env['WORKER_METRICS_PORT']}")
    assert len({name.rsplit("_", 1)[1] for name in os.listdir(worker_dir) if name.startswith("counter_")}) == 2


def test_the_exporters_gauges_equal_what_the_store_and_the_broker_hold(ran, exporter, metrics_db):
    text = scrape(exporter)
    assert samples(text, "payments_exporter_redis_up") == {(): 1.0}
    by_status = {status: int(v) for (status,), v in samples(text, "payments_records").items() if v}
    assert by_status == dict(store_statuses(metrics_db))
    # the second account's own counts (the store's per-account hash) against its records counted the slow way
    shop2 = {status: int(v) for (merchant, status), v in samples(text, "payments_merchant_records").items()
             if v and merchant == "shop2"}
    assert shop2 and shop2 == dict(store_statuses(metrics_db, merchant="shop2"))
    assert samples(text, "payments_merchant_unknown_oldest_age_seconds") == {("shop2",): 0.0}
    assert samples(text, "payments_unknown_oldest_age_seconds") == {(): 0.0}
    assert samples(text, "payments_needs_human") == {(): 0.0}
    assert samples(text, "payments_outbox_size") == {(): float(metrics_db.hlen("payments:outbox"))}
    assert samples(text, "payments_queue_length") == {(q,): float(metrics_db.llen(q)) for q in ("celery", "webhooks")}
    assert samples(text, "payments_queue_unacked") == {(): float(metrics_db.hlen("unacked"))}
    last = json.loads(metrics_db.get("payments:sweep:last"))
    assert samples(text, "payments_sweep_last_run_timestamp_seconds") == {(): pytest.approx(last["finished"])}
    assert time.time() - last["finished"] < 60


def test_payments_status_is_ok_then_names_an_unknown_too_old_and_exits_1(ran, env, metrics_db):
    done = payments_status(env, "--json")
    found = json.loads(done.stdout)
    assert done.returncode == 0 and found["ok"], found["attention"]
    assert len(found["workers"]) == 1 and found["gateway"]["reachable"]
    assert found["by_status"] == dict(store_statuses(metrics_db))
    # an UNKNOWN created long ago (RECONCILE_AFTER is 2 s here): money in doubt
    metrics_db.zadd("payments:idx:unknown", {"made-up": time.time() - 3600})
    try:
        done = payments_status(env)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "NEEDS ATTENTION" in done.stdout and "UNKNOWN, the oldest for 36" in done.stdout
    finally:
        metrics_db.zrem("payments:idx:unknown", "made-up")
