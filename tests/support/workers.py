"""Real ``celery worker`` processes for end-to-end tests."""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

from worker.ops.processes import start_worker, stop, wait_for_worker


@contextlib.contextmanager
def running_worker(env: dict, logfile: Path, *, pool="threads", concurrency=4, loglevel="INFO", queues=None):
    """Start a worker with ``env`` and wait until it answers a ping; stop it on exit."""
    from celery import Celery

    from worker import app

    if env.get("REDIS_URL") and env["REDIS_URL"] != app.conf.broker_url:
        app = Celery(broker=env["REDIS_URL"], set_as_current=False)  # ping it where it listens
    name = f"test-{uuid.uuid4().hex[:8]}"
    proc = start_worker(env=env, pool=pool, concurrency=concurrency, loglevel=loglevel, logfile=logfile,
                        hostname=f"{name}@%h", queues=queues)
    try:
        wait_for_worker(app, hostname_prefix=f"{name}@", timeout=60)
        yield proc
    finally:
        stop(proc)


def worker_env(sandbox, **overrides) -> dict:
    from tests.support.env import WORKER_SETTINGS

    env = dict(os.environ)
    env.update(WORKER_SETTINGS)
    env.update({
        "BLUEPAY_URL": sandbox.interfaces_url,
        "BLUEPAY_ACCOUNT_ID": sandbox.account_id,
        "BLUEPAY_SECRET_KEY": sandbox.secret_key,
    })
    env.update({k: str(v) for k, v in overrides.items()})
    return env
