"""How a worker starts: LIVE mode without a card key refuses; TEST mode warns about the development key; a gateway
that answers HTTP 404 or SECURITY ERROR to the sealed stq probe refuses, one that is away only warns."""
import json
import os
import subprocess
import sys

from tests.support.env import E2E_REDIS_URL
from tests.support.ports import closed_port
from tests.support.workers import running_worker, worker_env
from worker.ops.processes import ROOT


def _start(env_overrides, seconds=20):
    env = {**os.environ, "REDIS_URL": E2E_REDIS_URL, **env_overrides}
    return subprocess.run([sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool", "solo",
                           "--loglevel", "WARNING", "--without-gossip", "--without-mingle"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds)


def test_live_mode_without_a_card_key_refuses_to_start():
    done = _start({"BLUEPAY_MODE": "LIVE", "PAYMENTS_CARD_KEY": "", "BLUEPAY_ACCOUNT_ID": "100228390579",
                   "BLUEPAY_SECRET_KEY": "MERCHANTSOWNSECRET00000000000001"})
    assert done.returncode != 0
    assert "refusing to start" in done.stderr and "PAYMENTS_CARD_KEY" in done.stderr


# ---- the sealed stq probe at start (worker/ops/preflight.py) ---------------------------------------------------------
def test_a_wrong_secret_refuses_to_start_naming_bluepay_secret_key(sandbox):
    done = _start({**worker_env(sandbox), "BLUEPAY_SECRET_KEY": "WRONGSECRET0000000000000000000000"})
    assert done.returncode != 0
    assert "refusing to start" in done.stderr and "SECURITY ERROR" in done.stderr
    assert "BLUEPAY_SECRET_KEY" in done.stderr and "WRONGSECRET" not in done.stderr


def test_a_path_typo_in_bluepay_url_refuses_to_start_naming_bluepay_url(sandbox):
    done = _start({**worker_env(sandbox), "BLUEPAY_URL": sandbox.url + "/interface/"})
    assert done.returncode != 0
    assert "refusing to start" in done.stderr and "HTTP 404" in done.stderr and "BLUEPAY_URL" in done.stderr


def test_an_unreachable_gateway_at_start_is_an_outage_the_worker_starts_and_warns(tmp_path):
    log = tmp_path / "worker.log"
    env = dict(os.environ, REDIS_URL=E2E_REDIS_URL, BLUEPAY_URL=f"http://127.0.0.1:{closed_port()}/interfaces/")
    with running_worker(env, log, pool="solo", concurrency=1) as proc:  # it answers a ping: it started
        assert proc.poll() is None
    text = log.read_text()
    assert "gateway not reachable at start" in text and "starting anyway" in text


def test_payments_status_names_the_misconfigured_setting_and_exits_1(sandbox):
    def status(**env):
        done = subprocess.run([sys.executable, "-m", "worker.cli", "status", "--json", "--ping-timeout", "0.2"],
                              cwd=ROOT, env={**worker_env(sandbox), **env}, capture_output=True, text=True,
                              timeout=60)
        return done.returncode, json.loads(done.stdout)

    code, found = status()
    assert found["gateway"]["misconfigured"] is None and found["gateway"]["reachable"]
    assert not any("misconfigured" in item for item in found["attention"])
    code, found = status(BLUEPAY_SECRET_KEY="WRONGSECRET0000000000000000000000")
    assert code == 1 and "BLUEPAY_SECRET_KEY" in found["gateway"]["misconfigured"]
    assert found["attention"][0].startswith("gateway misconfigured:") and "BLUEPAY_SECRET_KEY" in found["attention"][0]


def test_a_secret_found_wrong_during_payments_is_logged_at_error_once_naming_it(tmp_path):
    """The gateway away at start (the worker starts), then back with another secret (a key rotated at BluePay):
    every payment stays UNKNOWN, and the worker log names BLUEPAY_SECRET_KEY at ERROR once, not per payment."""
    import redis

    from tests.reliability.scenarios import producer_for
    from tests.support.env import TEST_CARD, redis_url_with_db
    from tests.support.sandbox import running_sandbox

    redis_url, port = redis_url_with_db(13), closed_port()
    db = redis.Redis.from_url(redis_url)
    db.flushdb()
    log = tmp_path / "worker.log"
    env = {**os.environ, "REDIS_URL": redis_url, "BLUEPAY_URL": f"http://127.0.0.1:{port}/interfaces/"}
    try:
        with running_worker(env, log, pool="threads", concurrency=2), \
                running_sandbox(secret_key="ROTATEDSECRET0000000000000000000", extra_args=("--port", port)), \
                producer_for(redis_url) as producer:
            sale = producer.tasks["payments.sale"]
            results = [sale.delay(amount="3.00", card=dict(TEST_CARD)) for _ in range(3)]
            outcomes = [r.get(timeout=60) for r in results]
        assert [o["status"] for o in outcomes] == ["UNKNOWN"] * 3, outcomes  # never taken for a refusal
        errors = [line for line in log.read_text().splitlines() if "gateway misconfigured" in line]
        assert len(errors) == 1 and "ERROR" in errors[0] and "BLUEPAY_SECRET_KEY" in errors[0], errors
    finally:
        db.flushdb()
        db.close()
