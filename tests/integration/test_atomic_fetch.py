"""kombu's fetch with the pop script (worker/broker/atomic_fetch.py), against a real Redis (database 9): while messages
wait, one EVALSHA takes a message and records it unacknowledged exactly as kombu's QoS.append would; an empty queue
goes back to BRPOP; restore, acks, priorities, a flushed script cache and no_ack consumers behave as with kombu alone.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from kombu import Connection
from kombu.transport import redis as kombu_redis

from tests.integration.test_redis_commands import monitored
from tests.support.env import INTEGRATION_REDIS_URL
from worker.broker import atomic_fetch, lean_transport


@pytest.fixture
def installed(monkeypatch):
    for name in ("QoS", "conn_or_acquire", "_brpop_start", "_brpop_read", "basic_consume"):
        monkeypatch.setattr(kombu_redis.Channel, name, getattr(kombu_redis.Channel, name))  # put back afterwards
    lean_transport.install()
    atomic_fetch.install()


@pytest.fixture
def conn(installed, prefix) -> Iterator[Connection]:
    options = {"visibility_timeout": 3600, "unacked_key": f"{prefix}unacked",  # ours only, on a shared server
               "unacked_index_key": f"{prefix}unacked_index", "unacked_mutex_key": f"{prefix}unacked_mutex"}
    with Connection(INTEGRATION_REDIS_URL, transport_options=options) as c:
        yield c


@pytest.fixture
def open_queue(conn, client, prefix):
    """``open_queue(no_ack=False)``: a kombu SimpleQueue on this test's own queue (``<prefix>q``), closed and deleted
    afterwards."""
    opened = []

    def open_(no_ack: bool = False):
        opened.append(conn.SimpleQueue(f"{prefix}q", no_ack=no_ack))
        return opened[-1]

    yield open_
    for simple in opened:
        simple.close()
    client.delete(*_queue_keys(f"{prefix}q"))


def _names(seen: list[dict], prefix: str, *, lua: bool = False) -> list[str]:
    """The commands naming this test's keys (MONITOR sees every client of a shared server), sent by clients or run
    by scripts (``lua``)."""
    return [c["command"].split(" ", 1)[0].strip('"').upper() for c in seen
            if (c["client_type"] == "lua") == lua and prefix in c["command"]]


def _queue_keys(queue: str) -> list[str]:
    return [queue, f"{queue}\x06\x163", f"{queue}\x06\x166", f"{queue}\x06\x169"]


def test_waiting_messages_are_fetched_and_recorded_in_one_call_each(conn, client, prefix, open_queue):
    channel = conn.default_channel
    queue, simple = f"{prefix}q", open_queue()
    for n in range(5):
        simple.put({"n": n})
    raw_waiting = [json.loads(m) for m in reversed(client.lrange(queue, 0, -1))]  # in the order they pop
    client.script_load(atomic_fetch.POP_SCRIPT)  # (a first fetch on a new server loads it: the test below)
    with monitored(client, f"{prefix}marker") as seen:
        got = [simple.get(timeout=5) for _ in range(5)]
    assert [m.payload["n"] for m in got] == [0, 1, 2, 3, 4]
    sent = _names(seen, prefix)
    # the first by BRPOP and kombu's own record; the other four by the script alone (nothing else sent)
    assert sent.count("BRPOP") == 1 and sent.count("EVALSHA") == 4
    assert sent.count("ZADD") == 1 and sent.count("HSET") == 1
    assert _names(seen, prefix, lua=True) == \
        ["RPOP", "LLEN", "ZADD", "HSET"] * 3 + ["RPOP", "LLEN", "LLEN", "LLEN", "LLEN", "ZADD", "HSET"]
    for message, raw in zip(got, raw_waiting, strict=True):
        tag = message.delivery_tag
        # what kombu's QoS.append writes: [message, exchange, routing key], scored by the worker's clock
        assert json.loads(client.hget(channel.unacked_key, tag)) == [
            raw, raw["properties"]["delivery_info"]["exchange"], raw["properties"]["delivery_info"]["routing_key"]]
        score = client.zscore(channel.unacked_index_key, tag)
        assert abs(score - time.time()) < 60 and (score == int(score) or message is got[0])  # (whole seconds)
        message.ack()
        assert not client.hexists(channel.unacked_key, tag)
        assert client.zscore(channel.unacked_index_key, tag) is None
    assert not channel.__dict__.get("_payments_recorded")  # every recorded tag reached QoS.append


def test_an_empty_queue_goes_back_to_blocking_brpop(conn, client, prefix, open_queue):
    simple = open_queue()
    simple.put({"n": 1})
    simple.put({"n": 2})
    assert simple.get(timeout=5).payload == {"n": 1}  # BRPOP
    assert simple.get(timeout=5).payload == {"n": 2}  # the script: it said nothing more waits
    with monitored(client, f"{prefix}marker") as seen, pytest.raises(simple.Empty):
        simple.get(timeout=1.5)
    sent = _names(seen, prefix)
    assert "EVALSHA" not in sent and sent.count("BRPOP") >= 1  # waits in Redis, no polling
    simple.put({"n": 3})
    assert simple.get(timeout=5).payload == {"n": 3}


def test_a_recorded_message_left_unacknowledged_is_restored_after_the_visibility_timeout(conn, client,
                                                                                         open_queue):
    channel = conn.default_channel
    simple = open_queue()
    for n in range(3):
        simple.put({"n": n})
    simple.get(timeout=5).ack()  # BRPOP
    second = simple.get(timeout=5)  # the script recorded it; its worker "dies" without acking
    assert second.payload == {"n": 1} and client.hexists(channel.unacked_key, second.delivery_tag)
    client.zadd(channel.unacked_index_key, {second.delivery_tag: 1.0})  # older than the visibility timeout
    channel.qos.restore_visible(num=100)
    assert not client.hexists(channel.unacked_key, second.delivery_tag)
    payloads = sorted(simple.get(timeout=5).payload["n"] for _ in range(2))
    assert payloads == [1, 2]  # restored, not lost, not doubled


def test_priorities_are_served_in_brpops_order(conn, client, prefix, open_queue):
    simple = open_queue()
    simple.put({"n": "first"})  # priority 0: kombu's list without a suffix, which BRPOP takes first
    for n in range(3):
        simple.put({"n": f"low-{n}"}, priority=9)
    simple.put({"n": "high"}, priority=0)
    got = [simple.get(timeout=5).payload["n"] for _ in range(5)]
    assert got == ["first", "high", "low-0", "low-1", "low-2"]


def test_a_flushed_script_cache_loses_nothing(conn, client, prefix, open_queue):
    simple = open_queue()
    for n in range(4):
        simple.put({"n": n})
    assert simple.get(timeout=5).payload == {"n": 0}
    client.script_flush()  # a restarted Redis or a new primary without the script
    got = [simple.get(timeout=5).payload["n"] for _ in range(3)]
    assert got == [1, 2, 3]
    assert client.script_exists(atomic_fetch.POP_SHA) == [True]  # loaded again


def test_a_consumer_without_acks_never_gets_a_recorded_message(conn, client, prefix, open_queue):
    channel = conn.default_channel
    simple = open_queue(no_ack=True)
    for n in range(3):
        simple.put({"n": n})
    with monitored(client, f"{prefix}marker") as seen:
        got = [simple.get(timeout=5).payload["n"] for _ in range(3)]
    assert got == [0, 1, 2]
    assert "EVALSHA" not in _names(seen, prefix)
    assert client.hlen(channel.unacked_key) == 0  # nothing a restore would publish again


@pytest.mark.parametrize("item", ['{"not": "kombu"}', "not json"])
def test_the_script_hands_over_what_it_cannot_read_unrecorded(client, prefix, item):
    script = client.register_script(atomic_fetch.POP_SCRIPT)
    queue, unacked, index = f"{prefix}q", f"{prefix}unacked", f"{prefix}unacked_index"
    client.lpush(queue, item)
    assert script(keys=[queue, unacked, index], args=["1.5"]) == [queue, item, 0, 0]
    assert client.hlen(unacked) == 0 and client.zcard(index) == 0
    assert script(keys=[queue, unacked, index], args=["1.5"]) is None  # empty: nothing popped


def test_the_script_answers_whether_more_waits(client, prefix):
    script = client.register_script(atomic_fetch.POP_SCRIPT)
    low, high = f"{prefix}q", f"{prefix}q\x06\x169"
    unacked, index = f"{prefix}unacked", f"{prefix}unacked_index"
    info = {"exchange": "ex", "routing_key": "rk/1"}
    message = {"body": "e30=", "headers": {}, "properties": {"delivery_tag": "t-1", "delivery_info": info}}
    client.lpush(high, json.dumps(message))
    client.lpush(high, json.dumps(dict(message, properties={"delivery_tag": "t-2", "delivery_info": info})))
    first = script(keys=[low, high, unacked, index], args=["12.25"])
    assert first[2:] == [1, 1] and first[0] == high
    assert json.loads(client.hget(unacked, "t-1")) == [message, "ex", "rk/1"]
    assert client.zscore(index, "t-1") == 12.25
    assert script(keys=[low, high, unacked, index], args=["13"])[2:] == [1, 0]

