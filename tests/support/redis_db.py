"""A Redis client for a test module, or a skip when that Redis is not there."""
from __future__ import annotations

import contextlib

import pytest
import redis


@contextlib.contextmanager
def redis_or_skip(url: str):
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        client.ping()
    except redis.ConnectionError:  # pragma: no cover
        pytest.skip(f"no Redis at {url}")
    try:
        yield client
    finally:
        client.close()
