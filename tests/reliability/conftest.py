"""Reliability fixtures: database 12 of the test Redis (flushed once per session), a directory for every
log the scenarios write, and a redis-server of our own with AOF for the restart scenario.

The last test module (test_zz_card_data.py) scans all of it for card data in clear.
"""
from __future__ import annotations

import pytest
import redis

from tests.reliability.scenarios import RELIABILITY_REDIS_URL, OwnRedis


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/reliability/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.reliability)


@pytest.fixture(scope="session")
def rel_redis_url():
    client = redis.Redis.from_url(RELIABILITY_REDIS_URL)
    client.flushdb()
    client.close()
    return RELIABILITY_REDIS_URL


@pytest.fixture(scope="session")
def rel_redis(rel_redis_url):
    client = redis.Redis.from_url(rel_redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def rel_logdir(tmp_path_factory):
    return tmp_path_factory.mktemp("reliability-logs")


@pytest.fixture(scope="session")
def own_redis(tmp_path_factory):
    """redis-server with --appendonly yes --appendfsync always in a directory of ours; kept for the scan."""
    server = OwnRedis(tmp_path_factory.mktemp("own-redis")).start()
    yield server
    server.stop("shutdown")
