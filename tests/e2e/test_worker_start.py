"""How a worker starts: LIVE mode without a card key refuses; TEST mode warns about the development key."""
import os
import subprocess
import sys

from tests.support.env import E2E_REDIS_URL
from worker.processes import ROOT


def _start(env_overrides, seconds=20):
    env = dict(os.environ, REDIS_URL=E2E_REDIS_URL, **env_overrides)
    return subprocess.run([sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool", "solo",
                           "--loglevel", "WARNING", "--without-gossip", "--without-mingle"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds)


def test_live_mode_without_a_card_key_refuses_to_start():
    done = _start({"BLUEPAY_MODE": "LIVE", "PAYMENTS_CARD_KEY": ""})
    assert done.returncode != 0
    assert "refusing to start" in done.stderr and "PAYMENTS_CARD_KEY" in done.stderr
