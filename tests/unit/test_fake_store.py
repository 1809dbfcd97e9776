"""What the in-memory store promises beyond the contract it shares with the Redis store (tests/contract/): its time
is the injected clock, and it fails loudly where the Redis store would quietly do something odd."""
from __future__ import annotations

import time

import pytest

from tests.support.clocks import FixedClock
from tests.support.fake_store import InMemoryStore


def test_time_is_the_injected_clock_only(store, clock, monkeypatch):
    monkeypatch.setattr(time, "time", lambda: 0.0)
    monkeypatch.setattr(time, "monotonic", lambda: 0.0)
    c = store.claim("p1", "sale", owner="w1", lease_seconds=30, journal=True)
    assert c.now == store.now() == clock() and float(c.record["lease_until"]) == clock() + 30
    assert c.record["created_at"] == "2025-06-15T15:06:40.000Z"  # FixedClock's 1_750_000_000


def test_advancing_the_clock_lapses_a_lease_and_ages_records(store, clock):
    store.claim("p1", "sale", owner="w1", lease_seconds=30)
    assert store.claim("p1", "sale", owner="w2", lease_seconds=30).kind == "busy"
    assert store.stale_non_final(0) == []
    clock.advance(30.001)
    assert [r["payment_id"] for r in store.stale_non_final(30)] == ["p1"]
    assert store.claim("p1", "sale", owner="w2", lease_seconds=30).kind == "resumed"


def test_locks_expire_on_the_clock(store, clock):
    assert store.locks.acquire("sweep", 60) and store.locks.acquire("sweep", 60) is None
    clock.advance(60)
    assert store.locks.acquire("sweep", 60)


def test_a_clock_is_required():
    with pytest.raises(TypeError):
        InMemoryStore()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        InMemoryStore(clock=1_750_000_000.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["redis", "prefix", "keys", "record_key", "history_key"])
def test_the_redis_layout_is_not_there(store, name):
    with pytest.raises(AttributeError):
        getattr(store, name)


def test_a_payment_id_or_owner_that_is_not_a_string_is_refused(store):
    store.claim("p1", "sale", owner="w1", lease_seconds=30)
    for call in (lambda: store.get(None), lambda: store.history(1), lambda: store.renew(None, "w1", 30),
                 lambda: store.journal(None, "w1", 30), lambda: store.journal("p1", None, 30),
                 lambda: store.reflect(b"p1"), lambda: store.find_by_trans_id(100000000001)):
        with pytest.raises(TypeError):
            call()


def test_what_it_returns_is_a_copy(store):
    rec = store.claim("p1", "sale", owner="w1", lease_seconds=30).record
    rec["status"] = "APPROVED"
    got = store.get("p1")
    got["history"].append({"status": "VOIDED"})
    assert store.get("p1")["status"] == "PENDING" and len(store.history("p1")) == 1


def test_the_fake_and_the_redis_store_are_what_the_flow_calls_a_store() -> None:
    # Checked by mypy (./dev lint): both have every method of worker.payments.flow.Store, with compatible signatures.
    import redis

    from worker.payments.flow import Store
    from worker.store import ResultsStore

    fake: Store = InMemoryStore(clock=FixedClock())
    real: Store = ResultsStore(redis.Redis())  # registering scripts does not connect
    assert callable(fake.claim) and callable(real.transition)
