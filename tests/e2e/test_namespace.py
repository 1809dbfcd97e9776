"""A merchant's application with its own ``tasks.py`` and ``celeryconfig.py`` (Django's and Celery's default layout),
first on the path: ``celery -A worker worker`` started there still runs our tasks with our settings, and a producer
there publishes with ``from worker.tasks import sale``. The merchant's modules raise if anything imports them."""
from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from tests.support.workers import worker_env
from worker.ops.processes import stop

MERCHANT_MODULE = 'raise RuntimeError("the merchant\'s own {name}.py was imported by the payments worker")\n'

PRODUCER = """
import uuid
from worker.tasks import sale
card = {"number": "4111111111111111", "expire": "1230", "cvv2": "123"}
outcome = sale.apply_async(kwargs={"amount": "3.00", "card": card, "idempotency_key": "ns-" + uuid.uuid4().hex},
                           queue=QUEUE).get(timeout=60)
assert outcome["status"] == "APPROVED", outcome
print(outcome["status"])
"""


@pytest.fixture
def merchant_dir(tmp_path):
    for name in ("tasks", "celeryconfig"):
        (tmp_path / f"{name}.py").write_text(MERCHANT_MODULE.format(name=name))
    return tmp_path


def test_a_merchants_own_tasks_and_celeryconfig_do_not_shadow_ours(sandbox, e2e_redis, merchant_dir):
    queue = f"merchant-{uuid.uuid4().hex[:8]}"
    env = worker_env(sandbox)
    log = merchant_dir / "worker.log"
    cmd = [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool", "solo", "--queues", queue,
           "--without-gossip", "--without-mingle", "--loglevel", "INFO", "--logfile", str(log)]
    proc = subprocess.Popen(cmd, cwd=merchant_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        done = subprocess.run([sys.executable, "-c", f"QUEUE = {queue!r}\n" + PRODUCER], cwd=merchant_dir, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip() == "APPROVED", done.stderr[-3000:]
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    finally:
        stop(proc)
    assert "merchant's own" not in log.read_text()
