"""The results store the flow, sweep and task tests run against: the real one (worker/store) on a real Redis
(REDIS_URL's database 9, as the integration tier, under a key prefix of its own, emptied afterwards), on the tests'
clock (tests/support/redis_clock.py). There is no in-memory copy of the ledger rules to keep in step.
"""
from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.support.env import INTEGRATION_REDIS_URL
from tests.support.redis_clock import START, ClockedRedis, RedisClock
from worker.store import ResultsStore


@contextlib.contextmanager
def clocked_client(url: str = INTEGRATION_REDIS_URL) -> Iterator[ClockedRedis]:
    client: ClockedRedis = ClockedRedis.from_url(url, decode_responses=True)  # type: ignore[assignment]  # (cls)
    try:
        client.ping()
    except redis.ConnectionError:  # pragma: no cover
        pytest.skip(f"no Redis at {url}")
    try:
        yield client
    finally:
        client.close()


class StoreUnderTest(ResultsStore):
    """The real store, with the looks a test takes at what it holds (the way raw commands show it)."""

    clock: RedisClock

    def index(self, name: str) -> list[str]:
        """The members of one index (``time``, ``non_final``, ``open_auths``, ...), lowest score first."""
        return [str(m) for m in self.redis.zrange(f"{self.prefix}idx:{name}", 0, -1)]

    def write_raw(self, payment_id: str, **fields: str) -> None:
        """A raw HSET of the record: no rules, no history, no indexes."""
        self.redis.hset(self.record_key(payment_id), mapping={k: str(v) for k, v in fields.items()})

    def dump(self) -> str:
        """Everything stored under the prefix, as text (the card-data scan's view of every key)."""
        return "".join(f"{key}={self.redis.dump(key)!r}\n" for key in sorted(self.redis.scan_iter(
            match=self.prefix + "*", count=1000)))


@contextlib.contextmanager
def redis_store(now: float = START, **options) -> Iterator[tuple[StoreUnderTest, RedisClock]]:
    """A store under a fresh prefix and its clock, standing at ``now``; everything it wrote is deleted after."""
    with clocked_client() as client:
        prefix = f"test:unit:{uuid.uuid4().hex}:"
        clock = RedisClock(client, now)
        try:
            store = StoreUnderTest(client, prefix=prefix, **options)
            store.clock = clock
            yield store, clock
        finally:
            _wipe(client, prefix, clock)


_open: list[contextlib.ExitStack] = []


def new_store(cls: type[StoreUnderTest] = StoreUnderTest, **options) -> StoreUnderTest:
    """A store (``cls``: the real one, or a subclass that injects a fault) on its own prefix and the tests' clock
    (``store.clock``), for a test that builds its own; :func:`close_stores` (an autouse fixture) deletes it."""
    stack = contextlib.ExitStack()
    client = stack.enter_context(clocked_client())
    prefix = f"test:unit:{uuid.uuid4().hex}:"
    clock = RedisClock(client, START)
    stack.callback(_wipe, client, prefix, clock)
    _open.append(stack)
    store = cls(client, prefix=prefix, **options)
    store.clock = clock
    return store


def close_stores() -> None:
    while _open:
        _open.pop().close()


def _wipe(client: redis.Redis, prefix: str, clock: RedisClock) -> None:
    clock.release()
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
