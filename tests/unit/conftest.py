"""Unit fixtures: the results store, the real one on a real Redis (tests/support/redis_store.py), on a clock that
stands still until the test moves it (no sleeping)."""
from __future__ import annotations

import pytest

from tests.support.redis_store import close_stores, redis_store


@pytest.fixture(autouse=True)
def _stores_built_by_tests():
    yield
    close_stores()


@pytest.fixture
def _redis_store():
    with redis_store() as (store, clock):
        yield store, clock


@pytest.fixture
def clock(_redis_store):
    return _redis_store[1]


@pytest.fixture
def store(_redis_store):
    return _redis_store[0]
