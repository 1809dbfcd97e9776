"""Webhooks under worker kills (slow: PAYMENTS_SLOW_TESTS=1; about 30 s): 30 sales through real ``celery worker -B``
processes SIGKILLed one after the other while they charge and deliver, to a real receiver that is down (503) until
the last kill, then fails 3 deliveries in 10 (HTTP 500, a hang past the timeout, HTTP 502) and verifies every
delivery with the ``standardwebhooks`` package. Every final outcome is told at least once, every attempt at one event
carries its id, and no card data is in what was sent or what Redis keeps.

Also: an endpoint that hangs on every delivery holds no payment.

Its own Redis database (14, flushed), as tests/e2e/test_webhooks.py."""
from __future__ import annotations

import dataclasses
import os
import signal
import time

import pytest
import redis

from tests.support.card_scan import scan_redis, scan_text
from tests.support.env import CUSTOMER, TEST_CARD, redis_url_with_db
from tests.support.sandbox import running_sandbox
from tests.support.webhook_receiver import running_receiver, start_worker_with_beat, wait_until
from tests.support.workers import worker_env
from worker.ops.processes import stop
from worker.webhooks.signing import new_secret

pytestmark = pytest.mark.slow
REDIS_URL = redis_url_with_db(14)
SALES = 30


def ids_of(got: list) -> set[str]:
    return {r.headers["webhook-id"] for r in got}


def test_sales_through_killed_workers_are_all_told_with_one_id_per_event(tmp_path):
    from worker.broker.app import create_app, current
    from worker.config import Settings

    db = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    db.flushdb()
    secret = new_secret()
    plan: dict[int, int | str] = {0: 500, 3: "hang", 6: 502}
    up = {"now": False}  # down (503) until the last kill: the events wait in the schedule across the kills
    try:
        with running_sandbox() as sandbox, \
                running_receiver(secret, lambda n, body: plan.get(n % 10, 200) if up["now"] else 503,
                                 hang_seconds=2.0) as rx:
            env = worker_env(sandbox, REDIS_URL=REDIS_URL, PAYMENTS_WEBHOOK_URL=rx.url, PAYMENTS_WEBHOOK_SECRET=secret,
                             WEBHOOK_RETRY_SCHEDULE="1s, 1s, 1s, 1s, 2s, 2s, 2s, 2s, 2s, 2s", WEBHOOK_TIMEOUT="1")
            settings = dataclasses.replace(Settings.from_env(), redis_url=REDIS_URL, card_key=env["PAYMENTS_CARD_KEY"])
            app = create_app(settings, main="webhooks-killed-producer")
            proc = start_worker_with_beat(env, REDIS_URL, tmp_path, "k0")
            try:
                with current(app):
                    results = [app.tasks["payments.sale"].delay(amount=f"{2 * i + 1}.00", card=TEST_CARD,
                                                                 customer=CUSTOMER) for i in range(SALES)]
                for k in range(1, 4):  # kill the worker while it charges and delivers, three times
                    time.sleep(1.5)
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
                    proc = start_worker_with_beat(env, REDIS_URL, tmp_path, f"k{k}")
                up["now"] = True
                outcomes = [r.get(timeout=180) for r in results]
                finals = {o["payment_id"]: o["status"] for o in outcomes}
                assert set(finals.values()) == {"APPROVED"}

                def told() -> set[str]:
                    return {r.event["data"]["payment_id"] for r in rx.delivered()
                            if r.event["type"] == "payment.approved"}

                wait_until(lambda: told() >= set(finals), timeout=120, what="every sale told")
            finally:
                stop(proc)
                app.close()
            got = list(rx.got)
        print(f"webhooks under kills: {SALES} sales, 3 workers SIGKILLed, {len(got)} POSTs received, "
              f"{len(rx.delivered())} accepted, {len(ids_of(got))} distinct events")
        assert all(r.verified for r in got)
        ids: dict[tuple[str, str], set[str]] = {}
        for r in got:
            ids.setdefault((r.event["data"]["payment_id"], r.event["type"]), set()).add(r.headers["webhook-id"])
        assert all(len(v) == 1 for v in ids.values()), ids  # the same id on every attempt, kills or not
        assert len(got) > SALES  # failures were retried
        hits = [h for r in got for h in scan_text(r.body.decode(), cvv2=TEST_CARD["cvv2"], where="webhook body")]
        assert hits + scan_redis(db, cvv2=TEST_CARD["cvv2"]) == []
    finally:
        db.flushdb()
        db.close()


def test_an_endpoint_that_hangs_on_every_delivery_does_not_hold_the_payments(tmp_path):
    """Every POST hangs past WEBHOOK_TIMEOUT (3 s) while sales run one after the other for 10 s through one worker
    (4 threads): the drain holds one thread at a time (its lock), so no sale waits behind a hanging delivery."""
    from worker.broker.app import create_app, current
    from worker.config import Settings

    db = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    db.flushdb()
    secret = new_secret()
    try:
        with running_sandbox() as sandbox, running_receiver(secret, lambda n, body: "hang", hang_seconds=4.0) as rx:
            env = worker_env(sandbox, REDIS_URL=REDIS_URL, PAYMENTS_WEBHOOK_URL=rx.url, PAYMENTS_WEBHOOK_SECRET=secret,
                             WEBHOOK_TIMEOUT="3", WEBHOOK_CONCURRENCY="2")
            settings = dataclasses.replace(Settings.from_env(), redis_url=REDIS_URL, card_key=env["PAYMENTS_CARD_KEY"])
            app = create_app(settings, main="webhooks-hang-producer")
            proc = start_worker_with_beat(env, REDIS_URL, tmp_path, "hang")
            latencies: list[float] = []
            try:
                with current(app):
                    end = time.monotonic() + 10
                    while time.monotonic() < end:
                        started = time.monotonic()
                        outcome = app.tasks["payments.sale"].delay(amount="3.00", card=TEST_CARD,
                                                                   customer=CUSTOMER).get(timeout=60)
                        latencies.append(time.monotonic() - started)
                        assert outcome["status"] == "APPROVED"
                hung = sum(1 for r in rx.got if r.status == "hang")
            finally:
                stop(proc)
                app.close()
        print(f"webhooks hanging: {len(latencies)} sales, slowest {max(latencies):.2f} s, median "
              f"{sorted(latencies)[len(latencies) // 2]:.2f} s, while {hung} deliveries hung (3 s timeout each)")
        assert hung >= 4 and max(latencies) < 3.0  # no sale waited behind a hanging POST
    finally:
        db.flushdb()
        db.close()
