"""Webhooks end to end: a producer's sale and void through a real ``celery worker -B`` (beat drains the webhook
schedule every second) and the sandbox over HTTP; a real receiver on loopback verifies every delivery with the
``standardwebhooks`` package. The sale's payment.approved arrives signed, the void then sends payment.voided with a
higher sequence number; a worker SIGKILLed while the receiver was down loses nothing (the next worker delivers the
same event id); no card data in what was sent or stored.

Its own Redis database (14, flushed): every worker on a database drains its webhooks, and the session's worker has
no endpoint configured."""
from __future__ import annotations

import dataclasses
import os
import signal

import pytest
import redis

from tests.support.card_scan import scan_redis, scan_text
from tests.support.env import CUSTOMER, TEST_CARD, redis_url_with_db
from tests.support.webhook_receiver import running_receiver, start_worker_with_beat, wait_until
from tests.support.workers import worker_env
from worker.ops.processes import stop
from worker.webhooks.signing import new_secret

REDIS_URL = redis_url_with_db(14)
TIMEOUT = 30


@pytest.fixture
def db():
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def test_a_sale_then_its_void_arrive_signed_in_order_and_a_killed_worker_loses_nothing(db, sandbox, tmp_path):
    from worker.broker.app import create_app, current
    from worker.config import Settings

    secret = new_secret()
    up = {"now": True}
    with running_receiver(secret, lambda n, body: 200 if up["now"] else 503) as rx:
        env = worker_env(sandbox, REDIS_URL=REDIS_URL, PAYMENTS_WEBHOOK_URL=rx.url, PAYMENTS_WEBHOOK_SECRET=secret,
                         WEBHOOK_RETRY_SCHEDULE="1s, 1s, 1s, 2s, 2s, 5s, 5s, 10s", WEBHOOK_TIMEOUT="2")
        settings = dataclasses.replace(Settings.from_env(), redis_url=REDIS_URL, card_key=env["PAYMENTS_CARD_KEY"])
        app = create_app(settings, main="webhooks-producer")
        proc = start_worker_with_beat(env, REDIS_URL, tmp_path, "wh1")
        try:
            with current(app):
                sold = app.tasks["payments.sale"].delay(amount="3.00", card=TEST_CARD, customer=CUSTOMER).get(
                    timeout=TIMEOUT)
                assert sold["status"] == "APPROVED"
                wait_until(lambda: any(r.event["type"] == "payment.approved" for r in rx.delivered()))
                voided = app.tasks["payments.void"].delay(sold["trans_id"]).get(timeout=TIMEOUT)
                assert voided["status"] == "APPROVED"
                wait_until(lambda: any(r.event["type"] == "payment.voided" for r in rx.delivered()))
                # the receiver goes down; a sale's event waits in the schedule; its worker is killed outright
                up["now"] = False
                seen = len(rx.got)
                second = app.tasks["payments.sale"].delay(amount="5.00", card=TEST_CARD, customer=CUSTOMER).get(
                    timeout=TIMEOUT)
                wait_until(lambda: len(rx.got) > seen)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            up["now"] = True
            proc = start_worker_with_beat(env, REDIS_URL, tmp_path, "wh2")
            wait_until(lambda: any(r.event["data"]["payment_id"] == second["payment_id"] for r in rx.delivered()))
        finally:
            stop(proc)
            app.close()
        got = list(rx.got)
    assert all(r.verified for r in got)
    of_sale = [r.event for r in rx.delivered() if r.event["data"]["payment_id"] == sold["payment_id"]]
    assert [(e["type"], e["data"]["sequence"]) for e in of_sale] == [("payment.approved", 1), ("payment.voided", 2)]
    assert of_sale[0]["data"]["trans_id"] == sold["trans_id"] and of_sale[0]["data"]["amount"] == "3.00"
    assert of_sale[0]["data"]["masked_account"] == "xxxxxxxxxxxx1111"
    told = {(r.event["data"]["payment_id"], r.event["type"]) for r in rx.delivered()}
    assert told >= {(sold["payment_id"], "payment.approved"), (sold["payment_id"], "payment.voided"),
                    (voided["payment_id"], "payment.approved"), (second["payment_id"], "payment.approved")}
    retried = {r.headers["webhook-id"] for r in got if r.event["data"]["payment_id"] == second["payment_id"]}
    assert len(retried) == 1  # every attempt, before and after the kill, carried the same event id
    hits = [h for r in got for h in scan_text(r.body.decode(), cvv2=TEST_CARD["cvv2"], where="webhook body")]
    hits += [h for r in got for h in scan_text(str(r.headers), cvv2=TEST_CARD["cvv2"], where="webhook headers")]
    hits += scan_redis(db, cvv2=TEST_CARD["cvv2"])
    assert hits == []
