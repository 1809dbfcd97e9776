"""A real gevent worker: it prefetches enough not to stall, batches its task events (as a threads worker does), and
has a broker connection for every slot.

The worker listens on a queue of its own, so the session's threads worker never takes these payments.
"""
from __future__ import annotations

import threading
import time
import uuid

import pytest
from kombu import Consumer, Queue

from tasks import sale
from tests.support.card_scan import scan_text
from tests.support.env import CUSTOMER, TEST_CARD
from tests.support.workers import running_worker, worker_env
from worker import app
from worker.broker.app import BROKER_CONNECTION_HEADROOM, GREEN_PREFETCH_MULTIPLIER

QUEUE = f"green-test-{uuid.uuid4().hex[:6]}"
CONCURRENCY = 3


@pytest.fixture(scope="module")
def gevent_worker(e2e_redis, sandbox, tmp_path_factory):
    log = tmp_path_factory.mktemp("gevent") / "worker.log"
    with running_worker(worker_env(sandbox), log, pool="gevent", concurrency=CONCURRENCY, queues=QUEUE) as proc:
        yield proc


def _stats_of(pool_name: str) -> list[dict]:
    replies = app.control.inspect(timeout=2.0).stats() or {}
    return [s for s in replies.values() if s.get("pool", {}).get("implementation", "").endswith(pool_name)]


def test_a_gevent_worker_prefetches_twice_its_concurrency(gevent_worker):
    stats = _stats_of("gevent:TaskPool")
    assert stats, "the gevent worker did not answer inspect stats"
    assert stats[0]["prefetch_count"] == CONCURRENCY * GREEN_PREFETCH_MULTIPLIER


def test_a_threads_worker_keeps_one_message_per_slot(celery_worker):
    stats = _stats_of("thread:TaskPool")
    assert stats, "the threads worker did not answer inspect stats"
    assert stats[0]["prefetch_count"] == 4  # conftest: concurrency 4, prefetch multiplier 1


def test_a_threads_worker_has_a_broker_connection_for_every_thread(celery_worker):
    # Threads also ack from their own thread (compose runs 16, past kombu's default pool of 10); a 50-thread
    # worker did not run out in this file's load test, but every pool gets the same sizing.
    stats = _stats_of("thread:TaskPool")
    assert stats, "the threads worker did not answer inspect stats"
    assert stats[0]["broker"]["transport_options"]["max_connections"] == 4 + BROKER_CONNECTION_HEADROOM


@pytest.mark.parametrize("worker,queue", [("gevent_worker", QUEUE), ("celery_worker", "celery")],
                         ids=["gevent", "threads"])
def test_task_events_arrive_batched_with_masked_arguments(request, worker, queue):
    request.getfixturevalue(worker)
    exchange = app.events.Dispatcher(enabled=False).exchange
    bodies: list = []
    ready = threading.Event()
    stop = threading.Event()

    def listen():
        with app.connection_for_read() as conn:
            queue = Queue(f"green-test-events-{uuid.uuid4().hex[:6]}", exchange=exchange, routing_key="#",
                          auto_delete=True, durable=False)
            with Consumer(conn, queues=[queue], callbacks=[lambda body, msg: bodies.append(body)],
                          accept=["json"]):
                ready.set()
                while not stop.is_set():
                    try:
                        conn.drain_events(timeout=0.5)
                    except TimeoutError:
                        pass

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert ready.wait(10)
    time.sleep(1.0)  # the fanout subscription is live
    try:
        result = sale.apply_async(kwargs={"amount": "5.00", "card": TEST_CARD, "customer": CUSTOMER}, queue=queue)
        assert result.get(timeout=30)["status"] == "APPROVED"
        deadline = time.monotonic() + 10

        def batched_types():
            return {e.get("type") for b in bodies if isinstance(b, list) for e in b
                    if isinstance(e, dict) and e.get("uuid") == result.id}

        while time.monotonic() < deadline and not {"task-received", "task-succeeded"} <= batched_types():
            time.sleep(0.2)
    finally:
        stop.set()
        listener.join(5)
    assert {"task-received", "task-started", "task-succeeded"} <= batched_types()
    received = next(e for b in bodies if isinstance(b, list) for e in b if e.get("type") == "task-received"
                    and e.get("uuid") == result.id)
    assert "xxxxxxxxxxxx1111" in received["kwargs"]
    assert scan_text(repr(bodies), cvv2=TEST_CARD["cvv2"], where="task events") == []


BUSY_CONCURRENCY = 50


@pytest.fixture
def busy_gevent_worker(e2e_redis, sandbox, clean_faults, tmp_path):
    """A gevent worker with more slots than kombu's default 10 broker connections."""
    queue = f"green-busy-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "busy-worker.log"
    with running_worker(worker_env(sandbox), log, pool="gevent", concurrency=BUSY_CONCURRENCY, queues=queue):
        yield queue, log


def test_a_busy_gevent_worker_has_a_broker_connection_for_every_slot(busy_gevent_worker):
    stats = [s for s in _stats_of("gevent:TaskPool") if s.get("pool", {}).get("max-concurrency") == BUSY_CONCURRENCY]
    assert stats, "the busy gevent worker did not answer inspect stats"
    assert stats[0]["broker"]["transport_options"]["max_connections"] >= BUSY_CONCURRENCY


def test_every_slot_acking_at_once_loses_no_ack_and_no_payment(busy_gevent_worker, sandbox):
    # 50 greenlets whose gateway calls all take 300 ms finish together and ack together: with kombu's
    # default pool of 10 connections, acks failed with MaxConnectionsError and a popped message could vanish.
    queue, log = busy_gevent_worker
    sandbox.set_faults({"latency_ms": 300, "jitter_ms": 0})
    results = [sale.apply_async(kwargs={"amount": "1.00", "card": TEST_CARD, "customer": CUSTOMER}, queue=queue)
               for _ in range(8 * BUSY_CONCURRENCY)]
    outcomes = [r.get(timeout=60) for r in results]
    assert [o["status"] for o in outcomes] == ["APPROVED"] * len(results)
    time.sleep(0.5)  # the last acks
    text = log.read_text()
    assert "Couldn't ack" not in text
    assert "MaxConnectionsError" not in text
    assert scan_text(text, cvv2=TEST_CARD["cvv2"], where="busy gevent worker log") == []
