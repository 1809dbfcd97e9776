"""Redis commands a payment costs, as Redis itself runs them (MONITOR: a script's own commands included), against a
real Redis (database 9, or TEST_REDIS_URL): the store's hot path, the result backend's writes and kombu's record of
unacknowledged messages (docs/performance.md). The end-to-end total is the bench's ``cmd`` column.

MONITOR sees every client of a shared server: only our calls are counted (the EVALSHA naming our key prefix and the
commands its script ran, which Redis runs atomically and so lists together; or the commands naming our keys).
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import redis
from celery import states
from kombu import Connection
from kombu.transport import redis as kombu_redis

from tests.support.env import INTEGRATION_REDIS_URL
from worker.broker.lean_transport import LeanQoS, install, pooled_conn_or_acquire
from worker.config import Settings
from worker.store import ResultsStore

SALE_FIELDS = {"amount": "3.00", "order_id": "o-1", "masked_account": "xxxxxxxxxxxx1111"}


@contextmanager
def monitored(client: redis.Redis, marker_key: str) -> Iterator[list[dict]]:
    """Every command the server runs inside the block, in order (read after the block, up to a marker GET)."""
    seen: list[dict] = []
    with client.monitor() as monitor:
        yield seen
        client.get(marker_key)  # the last command of the window: everything before it was run before it
        while True:
            command = monitor.next_command()
            if marker_key in command["command"]:
                break
            seen.append(command)


def script_commands(seen: list[dict], prefix: str) -> list[list[str]]:
    """Per FCALL (or EVALSHA) naming ``prefix``: its name followed by the commands its function ran."""
    runs: list[list[str]] = []
    current: list[str] | None = None
    for command in seen:
        name = command["command"].split(" ", 1)[0].upper()
        if command["client_type"] == "lua":
            if current is not None:
                current.append(name)
            continue
        current = None
        if name in ("EVALSHA", "FCALL") and prefix in command["command"]:
            current = [name]
            runs.append(current)
    return runs


def commands_of(client: redis.Redis, prefix: str, call: Callable[[], object]) -> list[list[str]]:
    with monitored(client, f"{prefix}marker") as seen:
        call()
    return script_commands(seen, prefix)


def plain_commands_of(client: redis.Redis, prefix: str, call: Callable[[], object]) -> list[str]:
    """The commands naming ``prefix`` that no script ran."""
    with monitored(client, f"{prefix}marker") as seen:
        call()
    return [c["command"].split(" ", 1)[0].upper() for c in seen
            if c["client_type"] != "lua" and prefix in c["command"]]


@pytest.fixture
def store(client, prefix):
    return ResultsStore(client, prefix=prefix)


def test_a_sale_in_the_store_is_one_outbox_hset_a_claim_of_nine_commands_and_a_transition_of_nine(store, client,
                                                                                                    prefix):
    # warm: the scripts are loaded (a cold server answers NOSCRIPT once per script)
    store.outbox.put("warm", {"name": "payments.sale"})
    store.claim("warm", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=30, message_id="warm", journal=True)
    store.transition("warm", "APPROVED", expect=("PENDING",), owner="w1", sent=True, fields={"trans_id": "1" * 12})

    put = plain_commands_of(client, prefix,
                            lambda: store.outbox.put("m1", {"name": "payments.sale", "body": [[], {}, {}]}))
    claimed = commands_of(client, prefix, lambda: store.claim(
        "m1", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=30, message_id="m1", journal=True,
        fingerprints=["a" * 64], fence_for=300.0))
    done = commands_of(client, prefix, lambda: store.transition(
        "m1", "APPROVED", expect=("PENDING",), owner="w1", sent=True, note="Approved Sale",
        fields={"trans_id": "100000000042", "message": "Approved Sale"}))

    assert put == ["HSET"]  # no clock: the sweep stamps entries it sees
    # the claim: outbox entry gone, no key index entry (a key whose record left Redis), record written with its
    # history entry and its first attempt's fence, indexed by time and as non-final, audit
    assert len(claimed) == 1 and len(claimed[0]) <= 9, claimed
    assert claimed[0].count("EXISTS") == 1
    assert {"TIME", "HDEL", "HSET", "ZADD", "XADD"} <= set(claimed[0]) and "ZREM" not in claimed[0]
    assert "RPUSH" not in claimed[0] and claimed[0].count("HSET") == 1  # the history is a field of the record
    assert "HGETALL" not in claimed[0] and "HMGET" not in claimed[0]  # answers with what it wrote
    # the outcome: read once, written once with its history entry, out of non_final, by trans id, counted, audit
    assert len(done) == 1 and len(done[0]) <= 9, done
    assert done[0].count("HGETALL") == 1 and "HMGET" not in done[0]
    assert {"HSET", "ZREM", "HSETNX", "HINCRBY", "XADD"} <= set(done[0]) and "RPUSH" not in done[0]
    # and what they wrote is what a reader finds
    rec = store.get("m1")
    assert rec["status"] == "APPROVED" and rec["trans_id"] == "100000000042" and "lease_owner" not in rec
    assert float(rec["fence_until"]) > float(rec["created_ts"]) + 299  # the claim fenced attempt 1
    assert [h["status"] for h in rec["history"]] == ["PENDING", "APPROVED"]
    assert store.find_by_trans_id("100000000042")["payment_id"] == "m1"
    assert store.outbox.stale(-1) == [] and store.stale_non_final(-1) == []
    assert store.health.snapshot()["by_status"].get("APPROVED", 0) >= 1


def test_records_by_status_count_non_final_ones_from_their_indexes(store):
    store.claim("p1", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=30, journal=True)
    store.claim("p2", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=30, journal=True)
    store.claim("p3", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=30)
    store.transition("p2", "UNKNOWN", owner="w1", sent=True)
    store.transition("p3", "RETRYING", owner="w1", sent=False)
    assert store.health.snapshot()["by_status"] == {"PENDING": 1, "UNKNOWN": 1, "RETRYING": 1}
    store.transition("p1", "APPROVED", expect=("PENDING",), owner="w1", sent=True)
    assert store.health.snapshot()["by_status"] == {"APPROVED": 1, "UNKNOWN": 1, "RETRYING": 1}


# ---- Celery's result backend ------------------------------------------------------------------------------
@pytest.fixture
def app():
    from worker.broker.app import create_app

    return create_app(Settings(redis_url=INTEGRATION_REDIS_URL))


def test_the_result_backend_stores_a_success_with_a_set_and_a_publish_and_nothing_else(app, client, prefix):
    backend = app.backend
    task_id = f"{prefix}task"
    backend.store_result(f"{prefix}warm", {"status": "APPROVED"}, states.SUCCESS)  # connects
    with monitored(client, f"{prefix}marker") as seen:
        backend.store_result(task_id, {"payment_id": task_id, "status": "APPROVED"}, states.SUCCESS)
    ours = [c["command"].split(" ", 1)[0].upper() for c in seen
            if c["client_type"] != "lua" and (task_id in c["command"] or c["command"].upper() in ("MULTI", "EXEC"))]
    assert ours == ["SET", "PUBLISH"]
    meta = json.loads(client.get(f"celery-task-meta-{task_id}"))
    assert meta["status"] == "SUCCESS" and meta["result"]["status"] == "APPROVED"
    assert client.ttl(f"celery-task-meta-{task_id}") > 0  # RESULT_EXPIRES still applies
    client.delete(f"celery-task-meta-{task_id}", f"celery-task-meta-{prefix}warm")


def test_a_late_retry_still_never_replaces_a_success_and_get_returns_it(app, client, prefix):
    task_id = f"{prefix}task"
    try:
        app.backend.store_result(task_id, {"status": "APPROVED"}, states.SUCCESS)
        app.backend.store_result(task_id, None, states.RETRY)  # a duplicate delivery re-queued late
        assert app.backend.get_task_meta(task_id)["status"] == states.SUCCESS
        assert app.AsyncResult(task_id).get(timeout=5) == {"status": "APPROVED"}
    finally:
        client.delete(f"celery-task-meta-{task_id}")


def test_a_subscribed_producer_gets_the_result_by_pub_sub(app, client, prefix):
    task_id = f"{prefix}task"
    result = app.AsyncResult(task_id)
    app.backend.on_task_call(None, task_id)  # what delay() does: subscribe before the task runs
    try:
        threading.Timer(0.3, lambda: app.backend.store_result(task_id, {"status": "APPROVED"},
                                                              states.SUCCESS)).start()
        assert result.get(timeout=5) == {"status": "APPROVED"}
    finally:
        client.delete(f"celery-task-meta-{task_id}")


# ---- kombu's record of unacknowledged messages --------------------------------------------------------------
@pytest.fixture
def lean_qos(monkeypatch):
    monkeypatch.setattr(kombu_redis.Channel, "QoS", kombu_redis.QoS)
    monkeypatch.setattr(kombu_redis.Channel, "conn_or_acquire", kombu_redis.Channel.conn_or_acquire)
    install()  # what the worker step does; monkeypatch puts kombu's own class and method back afterwards
    assert kombu_redis.Channel.QoS is LeanQoS


def test_unacked_bookkeeping_has_no_transaction_and_an_old_unacked_message_is_still_restored(lean_qos, client,
                                                                                             prefix):
    queue = f"{prefix}q"
    options = {"visibility_timeout": 3600, "unacked_key": f"{prefix}unacked",  # ours only, on a shared server
               "unacked_index_key": f"{prefix}unacked_index", "unacked_mutex_key": f"{prefix}unacked_mutex"}
    with Connection(INTEGRATION_REDIS_URL, transport_options=options) as conn:
        channel = conn.default_channel
        assert isinstance(channel.qos, LeanQoS)
        simple = conn.SimpleQueue(queue)
        try:
            simple.put({"n": 1})
            with monitored(client, f"{prefix}marker") as seen:
                first = simple.get(timeout=5)
                tag = first.delivery_tag
                assert client.hexists(channel.unacked_key, tag)  # recorded as unacknowledged
                first.ack()
            assert not client.hexists(channel.unacked_key, tag)
            assert client.zscore(channel.unacked_index_key, tag) is None
            theirs = [c for c in seen if c["client_type"] != "lua" and tag in c["command"]
                      and not c["command"].upper().startswith("HEXISTS")]  # (the test's own look)
            assert [c["command"].split(" ", 1)[0].upper() for c in theirs] == ["ZADD", "HSET", "ZREM", "HDEL"]
            ports = {c["client_port"] for c in theirs}
            assert not any(c["command"].upper() in ("MULTI", "EXEC") and c["client_port"] in ports for c in seen)

            # a message whose worker died unacknowledged: older than the visibility timeout, kombu restores it
            simple.put({"n": 2})
            second = simple.get(timeout=5)
            client.zadd(channel.unacked_index_key, {second.delivery_tag: 1.0})
            channel.qos.restore_visible(num=100)
            again = simple.get(timeout=5)
            assert again.payload == {"n": 2}
            again.ack()
            assert not client.hexists(channel.unacked_key, second.delivery_tag)
        finally:
            simple.close()
            client.delete(queue, f"{queue}\x06\x163", f"{queue}\x06\x166", f"{queue}\x06\x169")



def test_a_channel_uses_one_client_until_kombu_replaces_its_pool(lean_qos, client, prefix):
    assert kombu_redis.Channel.conn_or_acquire is pooled_conn_or_acquire
    queue = f"{prefix}q1"
    options = {"unacked_key": f"{prefix}unacked", "unacked_index_key": f"{prefix}unacked_index",
               "unacked_mutex_key": f"{prefix}unacked_mutex"}
    with Connection(INTEGRATION_REDIS_URL, transport_options=options) as conn:
        channel = conn.default_channel
        simple = conn.SimpleQueue(queue)
        try:
            with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
                assert first is second and first.connection_pool is channel.pool
            given = redis.Redis.from_url(INTEGRATION_REDIS_URL)
            with channel.conn_or_acquire(given) as passed:
                assert passed is given  # a caller's client (a WATCH transaction's) as it is
            given.close()
            simple.put({"n": 1})
            got = simple.get(timeout=5)
            got.ack()  # publish, unacked record and ack all went through the one client
            assert got.payload == {"n": 1} and not client.hexists(channel.unacked_key, got.delivery_tag)
            channel._disconnect_pools()  # what kombu does after a fork or when the connection is lost
            with channel.conn_or_acquire() as third:
                assert third is not first and third.connection_pool is channel.pool
            simple.put({"n": 2})
            again = simple.get(timeout=5)
            again.ack()
            assert again.payload == {"n": 2}
        finally:
            simple.close()
            client.delete(queue, f"{queue}\x06\x163", f"{queue}\x06\x166", f"{queue}\x06\x169")
