"""Integration fixtures: a Redis client (database 9, or TEST_REDIS_URL) and a private key prefix per test, whose
keys are deleted afterwards."""
from __future__ import annotations

import uuid

import pytest

from tests.support.env import INTEGRATION_REDIS_URL
from tests.support.redis_db import redis_or_skip


@pytest.fixture(scope="module")
def client():
    with redis_or_skip(INTEGRATION_REDIS_URL) as r:
        yield r


@pytest.fixture
def prefix(request, client):
    """``test:<module>:<random>:``, emptied when the test ends."""
    p = f"test:{request.module.__name__.rsplit('.', 1)[-1]}:{uuid.uuid4().hex}:"
    yield p
    keys = list(client.scan_iter(match=p + "*", count=1000))
    if keys:
        client.delete(*keys)
