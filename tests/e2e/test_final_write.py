"""The final write of a payment, end to end (worker/store/final_write.py): a real threads worker writes the outcome,
Celery's result and the message's ack in one store function call; the producer's ``get()`` reads that result, and
nothing of the message is left unacknowledged. A chained sale (a void after it) keeps Celery's own path.
"""
from __future__ import annotations

import json
import uuid

import pytest

from tasks import sale, void
from tests.support.env import CUSTOMER, TEST_CARD

TIMEOUT = 30


@pytest.fixture(autouse=True)
def _worker(celery_worker, clean_faults):
    yield


def _outside_functions(seen: list[dict], needle: str) -> list[str]:
    """The commands naming ``needle`` that a client sent itself (not run inside a store function)."""
    return [c["command"].split(" ", 1)[0].upper() for c in seen
            if c["client_type"] != "lua" and needle in c["command"]]


def test_a_sale_s_outcome_result_and_ack_are_one_function_call(e2e_redis):
    key = f"fw-{uuid.uuid4().hex[:10]}"
    with e2e_redis.monitor() as monitor:
        result = sale.apply_async(kwargs={"amount": "3.00", "card": TEST_CARD, "customer": CUSTOMER,
                                          "idempotency_key": key})
        outcome = result.get(timeout=TIMEOUT)
        e2e_redis.get(f"{key}:marker")
        seen = []
        while True:
            command = monitor.next_command()
            if f"{key}:marker" in command["command"]:
                break
            seen.append(command)
    assert outcome["status"] == "APPROVED" and outcome["payment_id"] == key
    meta = json.loads(e2e_redis.get(f"celery-task-meta-{result.id}"))
    assert meta["status"] == "SUCCESS" and meta["task_id"] == result.id and meta["result"] == outcome
    assert e2e_redis.ttl(f"celery-task-meta-{result.id}") > 0  # RESULT_EXPIRES still applies
    # the result was written by the store's function, not by Celery's backend afterwards
    fcalls = [c for c in seen if c["client_type"] != "lua" and c["command"].upper().startswith("FCALL")
              and f"celery-task-meta-{result.id}" in c["command"]]
    assert len(fcalls) == 1, "the final write is one FCALL naming the result key"
    writes = [c["command"].split(" ", 1)[0].upper() for c in seen if c["client_type"] == "lua"
              and (f"celery-task-meta-{result.id}" in c["command"] or '"unacked' in c["command"])]
    assert {"SET", "PUBLISH"} <= set(writes)
    assert not [c for c in _outside_functions(seen, f"celery-task-meta-{result.id}") if c in ("SET", "SETEX")]
    # and acked: kombu's unacked record of the message is gone, with no HDEL of its own
    assert not [tag for tag, body in e2e_redis.hgetall("unacked").items() if result.id in body]
    assert "HDEL" not in [c["command"].split(" ", 1)[0].upper() for c in seen
                          if c["client_type"] != "lua" and "unacked" in c["command"]]
    # the same key again: the stored outcome, through Celery's own result path this time
    again = sale.apply_async(kwargs={"amount": "3.00", "card": TEST_CARD, "customer": CUSTOMER,
                                     "idempotency_key": key}).get(timeout=TIMEOUT)
    assert again == outcome


def test_a_chained_sale_keeps_celery_s_result_with_its_children(sandbox):
    chain = sale.s(amount="7.00", card=TEST_CARD, customer=CUSTOMER) | void.s()
    last = chain.apply_async()
    voided = last.get(timeout=TIMEOUT)
    first = last.parent
    assert first is not None
    sold = first.get(timeout=TIMEOUT)
    assert sold["status"] == "APPROVED" and voided["status"] == "APPROVED"
    assert [child.id for child in first.children or []] == [last.id]  # Celery stored it, children included
