"""The benchmark script must keep working: run it on a tiny N and check its last line of JSON.

Runs ``python -m bench.run`` as a subprocess with its own throw-away redis-server when one is on
PATH (else a Redis database of its own, 14), so it neither flushes nor reads the e2e database.
Every process the benchmark starts carries the run id in its command line (workers) or dies with
it (PR_SET_PDEATHSIG); whatever is left afterwards is stopped here by pid.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = ("ours_per_s", "baseline_per_s", "bound_per_s", "ours_cpu_ms", "baseline_cpu_ms", "p99_ms")


def _redis_args() -> list[str]:
    if shutil.which("redis-server"):
        return ["--private-redis"]
    from tests.support.env import redis_url_with_db

    return ["--redis-url", redis_url_with_db(14)]


@pytest.mark.timeout(120)
def test_bench_smoke(tmp_path):
    run_id = f"smoke{uuid.uuid4().hex[:6]}"
    cmd = [sys.executable, "-m", "bench.run", "--payments", "20", "--repeat", "1", "--latency-ms", "10",
           "--pool", "threads", "--concurrency", "4", "--warmup", "8", "--timeout", "30",
           "--out", str(tmp_path), "--run-id", run_id, *_redis_args()]
    env = dict(os.environ)
    for key in ("REDIS_URL", "PAYMENTS_CARD_KEY", "BLUEPAY_URL", "SANDBOX_FAULTS"):
        env.pop(key, None)  # the bench sets its own; nothing from the test process leaks in
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the bench stops its children in `finally`
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"bench did not finish in 90 s\n{out[-3000:]}\n{err[-3000:]}")
    finally:
        from bench.procs import kill_leftovers

        leftovers = kill_leftovers(run_id)

    assert not leftovers, f"bench left processes running: {leftovers}"
    # 0: all payments recorded; 1: it measured, but some payments failed (reported in the JSON).
    assert proc.returncode in (0, 1), f"rc={proc.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines, err[-3000:]
    last = json.loads(lines[-1])
    for key in REQUIRED:
        assert isinstance(last.get(key), (int, float)) and last[key] > 0, (key, last)
    assert last["configs"] and last["configs"][0]["pool"] == "threads"
    assert last["errors"] <= 2, last  # a few lost payments are a finding, a broken pipeline is not

    written = json.loads(Path(last["json_path"]).read_text())
    assert Path(last["json_path"]).parent == tmp_path
    assert written["configs"][0]["ours"]["runs"]["burst"], written
    assert list(tmp_path.glob("bench-*.png")), "no chart written"
