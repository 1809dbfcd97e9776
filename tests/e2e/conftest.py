"""End-to-end fixtures: a flushed Redis database, the sandbox over HTTP and a real celery worker."""
from __future__ import annotations

import pytest
import redis

from tests.support.env import E2E_REDIS_URL
from tests.support.ports import free_port
from tests.support.sandbox import running_sandbox
from tests.support.workers import running_worker, worker_env


@pytest.fixture(scope="session")
def e2e_redis():
    client = redis.Redis.from_url(E2E_REDIS_URL, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def sandbox():
    with running_sandbox() as sb:
        yield sb


@pytest.fixture(scope="session")
def worker_log(tmp_path_factory):
    return tmp_path_factory.mktemp("worker") / "worker.log"


@pytest.fixture(scope="session")
def worker_metrics_port():
    """The session worker serves its metrics here (the card-data scan reads them)."""
    return free_port()


@pytest.fixture(scope="session")
def celery_worker(e2e_redis, sandbox, worker_log, worker_metrics_port):
    env = worker_env(sandbox, WORKER_METRICS_PORT=worker_metrics_port)
    with running_worker(env, worker_log, pool="threads", concurrency=4) as proc:
        yield proc


def reset_breakers(client: redis.Redis) -> None:
    """Forget every circuit breaker's state (on by default, shared through Redis): the failures one test injected must
    not open it, or hold it open, for the next."""
    keys = list(client.scan_iter(match="*guard:*:breaker"))
    if keys:
        client.delete(*keys)


@pytest.fixture
def clean_faults(sandbox, e2e_redis):
    sandbox.set_faults({})
    reset_breakers(e2e_redis)
    yield sandbox
    sandbox.wait_ready(timeout=15)  # a test may have left an outage running
    sandbox.set_faults({})
    reset_breakers(e2e_redis)
