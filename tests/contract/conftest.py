"""The results store the contract tests run against (``tier`` / ``store``): :class:`worker.store.ResultsStore` on
Redis database 9 (env TEST_REDIS_URL) under a unique key prefix, deleted afterwards; skipped when that Redis is not
there. Time is Redis ``TIME`` (the production library, no test clock): ``tier.wait`` sleeps.

(There was an in-memory fake of the store beside it, kept in step by these tests; the ledger rules are now written
once, in the store's Lua, and the flow and sweep tests run against the real store: tests/support/redis_store.py.)

A tier also reads what a test needs to see beyond the store's API (an index's members, an outbox entry, a lock's
expiry, everything stored) the way Redis shows it to raw commands, and writes a record field raw.
"""
from __future__ import annotations

import time
import uuid

import pytest

from tests.support.env import INTEGRATION_REDIS_URL
from tests.support.redis_db import redis_or_skip
from worker.store import ResultsStore

REDIS_URL = INTEGRATION_REDIS_URL


class RedisTier:
    name = "redis"

    def __init__(self, client):
        self.client = client
        self.prefix = f"test:store:{uuid.uuid4().hex}:"
        self.store = ResultsStore(client, prefix=self.prefix)

    def handle(self) -> ResultsStore:
        """Another worker's store: a separate instance on the same Redis keys."""
        return ResultsStore(self.client, prefix=self.prefix)

    def server_now(self) -> float:
        seconds, micros = self.client.time()
        return int(seconds) + int(micros) / 1_000_000

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    def index(self, name: str) -> list[str]:
        return self.client.zrange(f"{self.prefix}idx:{name}", 0, -1)

    def outbox_entry(self, task_id: str) -> tuple[str | None, float | None]:
        return self.client.hget(self.store.keys.outbox, task_id), self.client.zscore(self.store.keys.outbox_ts, task_id)

    def lock_ttl(self, name: str) -> float | None:
        ms = self.client.pttl(self.store.keys.lock(name))
        return None if ms < 0 else ms / 1000

    def write_raw(self, payment_id: str, **fields: str) -> None:
        self.client.hset(self.store.record_key(payment_id), mapping=fields)

    def wipe_health_indexes(self) -> None:
        keys = self.store.keys
        self.client.delete(keys.unknown, keys.retrying, keys.needs_human)
        self.client.delete(keys.status_counts)
        self.client.hset(keys.status_counts, "APPROVED", -1)

    def stored_text(self) -> str:
        return "".join(repr(self.client.dump(key)) for key in self.client.scan_iter(match=self.prefix + "*"))

    def close(self) -> None:
        keys = list(self.client.scan_iter(match=self.prefix + "*", count=1000))
        if keys:
            self.client.delete(*keys)


@pytest.fixture(scope="session")
def redis_client():
    with redis_or_skip(REDIS_URL) as client:
        yield client


@pytest.fixture
def tier(redis_client):
    made = RedisTier(redis_client)
    yield made
    made.close()


@pytest.fixture
def store(tier):
    return tier.store
