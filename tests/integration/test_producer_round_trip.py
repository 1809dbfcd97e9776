"""The producer in one round trip (worker/broker/one_trip.py): a payment's message, its outbox entry and its
task-sent event reach Redis in one pipeline, in that order, on one connection, against a real Redis (database 9)."""
from __future__ import annotations

import json
import time

import pytest

from tests.integration.test_redis_commands import monitored
from tests.support.env import INTEGRATION_REDIS_URL
from worker.config import Settings

CARD = {"number": "4111111111111111", "expire": "1230", "cvv2": "123"}


@pytest.fixture
def producer_app(prefix):
    from worker.broker.app import create_app

    app = create_app(Settings(redis_url=INTEGRATION_REDIS_URL, key_prefix=prefix))
    app.backend.on_task_call = lambda producer, task_id: None  # fire and forget: no result subscription
    return app


def _reads(client) -> int:
    return int(client.info("stats")["total_reads_processed"])


def test_message_outbox_entry_and_sent_event_go_in_one_round_trip(producer_app, client, prefix):
    queue = f"{prefix}q"
    sale = producer_app.tasks["payments.sale"]
    try:
        sale.apply_async(kwargs={"amount": "3.00", "card": CARD}, queue=queue)  # warm: connects, declares
        # Read events Redis handled meanwhile: one per round trip. Other clients of the server can only add to
        # them, so the fewest seen over a few tries is ours (three round trips before: LPUSH, HSET, PUBLISH).
        fewest = None
        for _ in range(5):
            before = _reads(client)
            sale.apply_async(kwargs={"amount": "3.00", "card": CARD}, queue=queue)
            seen = _reads(client) - before - 1  # the second INFO's own read
            fewest = seen if fewest is None else min(fewest, seen)
            if fewest <= 1:
                break
            time.sleep(0.2)
        assert fewest == 1

        with monitored(client, f"{prefix}marker") as commands:
            result = sale.apply_async(kwargs={"amount": "3.00", "card": CARD}, queue=queue)
        ours = [c for c in commands if c["client_type"] != "lua"
                and (queue in c["command"] or f"{prefix}outbox" in c["command"] or "celeryev" in c["command"])]
        assert [c["command"].split(" ", 1)[0].upper() for c in ours] == ["LPUSH", "HSET", "PUBLISH"]
        assert len({c["client_port"] for c in ours}) == 1  # one connection, in the order they were written before

        # what was written is what the old path wrote: the message in its queue, the entry under its id
        entry = json.loads(client.hget(f"{prefix}outbox", result.id))
        assert entry["message"]["headers"]["id"] == result.id and entry["message"]["routing_key"] == queue
        queued = [json.loads(raw)["headers"]["id"] for raw in client.lrange(queue, 0, -1)]
        assert result.id in queued
        assert "4111111111111111" not in json.dumps(entry) + "".join(map(str, client.lrange(queue, 0, -1)))
    finally:
        client.delete(queue)


def test_a_store_on_another_database_keeps_its_own_write(client, prefix):
    from worker.broker.app import create_app

    other_db = INTEGRATION_REDIS_URL.rsplit("/", 1)[0] + "/10"
    app = create_app(Settings(redis_url=INTEGRATION_REDIS_URL, key_prefix=prefix))
    app.conf.broker_url = other_db  # the broker elsewhere: the entry cannot ride in the broker's pipeline
    app.backend.on_task_call = lambda producer, task_id: None
    queue = f"{prefix}q"
    result = app.tasks["payments.sale"].apply_async(kwargs={"amount": "3.00", "card": CARD}, queue=queue)
    try:
        assert client.hexists(f"{prefix}outbox", result.id)  # written by the store's own client
        assert not client.exists(queue)
    finally:
        import redis

        with redis.Redis.from_url(other_db) as broker:
            assert broker.llen(queue) == 1
            broker.delete(queue)


def test_a_failed_pipeline_is_published_again_the_old_way(producer_app, client, prefix, caplog):
    """The pipeline fails in Redis (here: the outbox key holds a string, so its HSET answers WRONGTYPE): kombu says
    delivery is uncertain, and the message is published again the old way. It may then be in its queue twice under
    one task id (the claim answers the second delivery); the producer is not told of an error on one node."""
    queue = f"{prefix}q"
    sale = producer_app.tasks["payments.sale"]
    client.set(f"{prefix}outbox", "not a hash")
    try:
        with caplog.at_level("WARNING", logger="payments.outbox"):
            result = sale.apply_async(kwargs={"amount": "3.00", "card": CARD}, queue=queue)
        queued = [json.loads(raw)["headers"]["id"] for raw in client.lrange(queue, 0, -1)]
        assert queued == [result.id, result.id]  # the pipeline's LPUSH ran, then the old path's
        assert any("publishing again on its own" in r.getMessage() for r in caplog.records)
        assert any("not kept" in r.getMessage() for r in caplog.records)  # the old path's outbox write failed too
    finally:
        client.delete(queue, f"{prefix}outbox")
