"""How long ``payments reconcile`` takes over a big day, and how much memory: N transactions at the sandbox (booked
through its console API) and the same N approved records in a Redis store under a private prefix, then one
``payments reconcile --date today --json`` under ``/usr/bin/time -v`` (wall time, peak RSS of that process).
``--settled`` settles them all first, so the day's settlement report (read too) holds every row as well.

    python -m bench.reconcile_scale --rows 100000 --redis-url redis://127.0.0.1:6379/13 [--settled]

Prints one JSON line: rows, differences (must be 0), wall seconds, peak RSS MB, rows/s. The report travels over
loopback HTTP from a sandbox subprocess; Redis is the one given (its keys under the prefix are deleted after).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import redis
import requests

from worker.store import ResultsStore

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT, SECRET = "100000000001", "SANDBOXSECRETKEY0000000000000000"


def start_sandbox() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "worker.sandbox", "--port", "0", "--duplicate-window", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("sandbox listening on "):
        proc.kill()
        raise SystemExit(f"sandbox did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1]


def populate(store: ResultsStore, url: str, n: int, prefix_id: str) -> None:
    """N sales booked at the sandbox and recorded APPROVED in the store under their ORDER_IDs (pipelined)."""
    chunk = 5000
    for start in range(0, n, chunk):
        pids = [f"{prefix_id}-{i}" for i in range(start, min(n, start + chunk))]
        r = requests.post(url + "/sandbox/book", json={"transactions": [
            {"amount": "3.00", "order_id": pid} for pid in pids]}, timeout=120)
        r.raise_for_status()
        ids = r.json()["ids"]
        store.functions.load()  # the library, before pipelining its calls
        pipe = store.redis.pipeline(transaction=False)
        for pid in pids:
            store._claim.queue(pipe, store.keys.for_record(pid), [
                "bench", "30.0", pid, "sale", "", "", "run", "0", "", "0", "amount", "3.00", "order_id", pid])
        pipe.execute()
        pipe = store.redis.pipeline(transaction=False)
        for pid, trans in zip(pids, ids, strict=True):
            store._transition.queue(pipe, store.keys.for_record(pid), [
                "APPROVED", "1", "bench", "approved", "1", "", "", "", "", "", "1", "PENDING", "trans_id", trans,
                "message", "Approved Sale", "trans_type", "SALE"])
        pipe.execute()


def measure(env: dict, day: str) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "worker.cli",
           "reconcile", "--date", day, "--json"]
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"reconcile failed ({done.returncode}): {done.stderr[-2000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    elapsed = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    seconds = wall
    if elapsed:
        h, m, s = elapsed.groups()
        seconds = int(h or 0) * 3600 + int(m) * 60 + float(s)
    report = json.loads(done.stdout)
    return {"wall_s": round(seconds, 2), "peak_rss_mb": round(int(rss.group(1)) / 1024, 1) if rss else None,
            "differences": report["differences"], "report_rows": report["days"][0]["report_rows"],
            "records": report["days"][0]["records"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--settled", action="store_true",
                   help="settle every transaction first: the settlement report then holds the whole day too")
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"))
    args = p.parse_args(argv)
    client = redis.Redis.from_url(args.redis_url, decode_responses=True)
    prefix = f"bench:recon:{uuid.uuid4().hex[:8]}:"
    store = ResultsStore(client, prefix=prefix)
    proc, url = start_sandbox()
    try:
        t0 = time.monotonic()
        populate(store, url, args.rows, "op-" + uuid.uuid4().hex[:8])
        if args.settled:
            requests.post(url + "/sandbox/settle", json={}, timeout=300).raise_for_status()
        setup = time.monotonic() - t0
        env = dict(os.environ, REDIS_URL=args.redis_url, PAYMENTS_KEY_PREFIX=prefix,
                   BLUEPAY_URL=url + "/interfaces/", BLUEPAY_ACCOUNT_ID=ACCOUNT, BLUEPAY_SECRET_KEY=SECRET,
                   BLUEPAY_MODE="TEST")
        result = measure(env, datetime.now(UTC).date().isoformat())
        result.update(rows=args.rows, setup_s=round(setup, 1), settled=args.settled,
                      rows_per_s=round(args.rows / result["wall_s"]) if result["wall_s"] else None)
        print(json.dumps(result, sort_keys=True))
        return 0 if result["differences"] == 0 else 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        keys = list(client.scan_iter(match=prefix + "*", count=5000))
        for i in range(0, len(keys), 5000):
            client.delete(*keys[i:i + 5000])


if __name__ == "__main__":
    sys.exit(main())
