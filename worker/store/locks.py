"""Advisory locks: ``SET NX PX`` with a random token, released only by the token's holder (compare-and-delete)."""
from __future__ import annotations

import secrets

import redis

from worker.store.keys import StoreKeys
from worker.store.lua import Functions


class Locks:
    def __init__(self, redis_client: redis.Redis, keys: StoreKeys) -> None:
        self.redis = redis_client
        self.keys = keys
        self._release = Functions(redis_client).function("release_lock")

    def acquire(self, name: str, ttl_seconds: float) -> str | None:
        """A token when the lock was free (held for ``ttl_seconds``), else None."""
        token = secrets.token_hex(16)
        ok = self.redis.set(self.keys.lock(name), token, nx=True, px=max(1, int(float(ttl_seconds) * 1000)))
        return token if ok else None

    def release(self, name: str, token: str) -> bool:
        if not token:
            return False
        return bool(self._release(keys=[self.keys.lock(name)], args=[token]))
