"""The results store's one clock, held still by the tests: Redis time, as the store's functions read it, is what the
test says (``clock.advance``), so a week-old authorization or a lapsed lease takes no waiting.

:class:`ClockedRedis` is a redis-py client whose store gets the library built with the test clock
(``worker.store.lua.TEST_CLOCK_KEY``: the functions read the time from that key while it is set) and whose ``TIME``
answers the same; :class:`RedisClock` sets it. Redis's own expiries (a lock's PX, a key index entry's PEXPIREAT) still
follow the real clock.
"""
from __future__ import annotations

from typing import Any

import redis

from worker.store.lua import TEST_CLOCK_KEY

#: Where the tests' clock starts (the in-memory fake's clock did too): 2025-06-15 15:06:40 UTC
START = 1_750_000_000.0


class ClockedPipeline(redis.client.Pipeline):
    """A pipeline whose ``TIME`` answers the tests' clock too (the health snapshot reads it in its pipeline)."""

    def time(self, **kwargs: Any) -> Any:
        self.__dict__.setdefault("_clock_at", []).append(len(self.command_stack))
        return self.execute_command("GET", TEST_CLOCK_KEY)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        at = self.__dict__.pop("_clock_at", [])
        replies = super().execute(raise_on_error)
        for i in at:
            us = int(replies[i])
            replies[i] = (us // 1_000_000, us % 1_000_000)
        return replies


class ClockedRedis(redis.Redis):
    payments_test_clock = True

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> ClockedPipeline:
        return ClockedPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)

    def time(self, **kwargs: Any) -> Any:  # the store's server_time(): the test's time while it is set
        fixed = self.get(TEST_CLOCK_KEY)
        if fixed is None:
            return super().time(**kwargs)
        us = int(fixed)
        return us // 1_000_000, us % 1_000_000


class RedisClock:
    """A clock that stands still until the test moves it, in Redis (what the store's functions read)."""

    def __init__(self, client: redis.Redis, now: float = START) -> None:
        self.client = client
        self.now = now
        self._write()

    def _write(self) -> None:
        self.client.set(TEST_CLOCK_KEY, str(round(self.now * 1_000_000)))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._write()

    def release(self) -> None:
        self.client.delete(TEST_CLOCK_KEY)
