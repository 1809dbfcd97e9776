"""The metrics exporter's scrape time with many records in the store, against the same scrape of an empty one.

    python -m bench.exporter_scrape --records 1000000 [--scrapes 50]

A throw-away ``redis-server`` (bench/procs.py) is filled directly through pipelines with records shaped as the
store writes them (a record hash of ~25 fields, its history, ``idx:time``, records by status, a share of them
UNKNOWN, RETRYING, needs_human, open auths, outbox entries), so that every index the exporter reads holds its
real share. Then ``payments metrics`` serves it and this process scrapes it over HTTP ``--scrapes`` times, first
with an empty store, then the full one: the ratio full/empty is the figure (absolute milliseconds vary by host).
Prints a table and one line of JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import procs  # noqa: E402
from worker.ops.processes import free_port  # noqa: E402

PREFIX = "payments:"
#: status of record i, by i % 100: what a busy store looks like (mostly final, a few in doubt)
SHARES = [("APPROVED", 55), ("DECLINED", 25), ("VOIDED", 8), ("ERROR", 5), ("REFUNDED", 3), ("UNKNOWN", 2),
          ("RETRYING", 1), ("PENDING", 1)]


def status_of(i: int) -> str:
    slot = i % 100
    for status, share in SHARES:
        if slot < share:
            return status
        slot -= share
    return "APPROVED"


def fill(client: redis.Redis, records: int, *, batch: int = 5000) -> dict[str, int]:
    """Write ``records`` records and their indexes; the counts by status written."""
    now = time.time()
    counts: dict[str, int] = {}
    for start in range(0, records, batch):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + batch, records)):
            pid = f"bench-{i:08d}"
            status = status_of(i)
            op = "auth" if i % 17 == 0 else "sale"
            created = now - (records - i) * 0.5  # the oldest ~half a year ago at 1M
            counts[status] = counts.get(status, 0) + 1
            pipe.hset(f"{PREFIX}op:{pid}", mapping={
                "payment_id": pid, "operation": op, "status": status, "message": "Approved Sale",
                "trans_id": f"{100000000000 + i}", "avs": "_", "cvv2": "M", "masked_account": "xxxxxxxxxxxx1111",
                "card_type": "VISA", "auth_code": "4F2K1Q", "amount": f"{3 + i % 50}.00", "order_id": pid,
                "attempts": "1", "created_at": "2026-01-01T00:00:00.000Z", "updated_at": "2026-01-01T00:00:01.000Z",
                "created_ts": f"{created:.3f}", "updated_ts": f"{created + 1:.3f}", "fingerprint": "f" * 64,
                "sends": "1", "attempt_ts": f"{created:.3f}", "in_flight": "0", "sent_ts": f"{created:.3f}",
                "bank_name": "TEST BANK", "trans_type": "SALE"})
            pipe.rpush(f"{PREFIX}hist:{pid}", json.dumps({"at": "2026-01-01T00:00:00.000Z", "status": "PENDING",
                                                          "note": "attempt 1"}),
                       json.dumps({"at": "2026-01-01T00:00:01.000Z", "status": status, "note": "Approved Sale"}))
            pipe.zadd(f"{PREFIX}idx:time", {pid: created})
            if status in ("PENDING", "RETRYING", "UNKNOWN"):
                pipe.zadd(f"{PREFIX}idx:non_final", {pid: created + 1})
            if status in ("UNKNOWN", "RETRYING"):
                pipe.zadd(f"{PREFIX}idx:{status.lower()}", {pid: created})
            if status == "ERROR" and i % 10 == 0:
                pipe.zadd(f"{PREFIX}idx:needs_human", {pid: created + 1})
            if op == "auth" and status == "APPROVED":
                pipe.zadd(f"{PREFIX}idx:open_auths", {pid: created})
            if i % 1000 == 0:
                pipe.hset(f"{PREFIX}outbox", pid, json.dumps({"message": {}, "published": created, "republished": 0}))
                pipe.zadd(f"{PREFIX}idx:outbox", {pid: created})
        pipe.execute()
    client.hset(f"{PREFIX}idx:status_counts", mapping={k: str(v) for k, v in counts.items()})
    client.set(f"{PREFIX}sweep:last", json.dumps({"ran": True, "finished": now, "started": now - 1, "seconds": 1.0,
                                                   "reconcile_still_unknown": 3}))
    return counts


def scrape_times(url: str, scrapes: int) -> list[float]:
    times = []
    for _ in range(scrapes):
        started = time.perf_counter()
        r = requests.get(url, timeout=30)
        times.append((time.perf_counter() - started) * 1000)
        r.raise_for_status()
    return times


def serve(redis_url: str):
    port = free_port()
    env = dict(os.environ, REDIS_URL=redis_url, PAYMENTS_KEY_PREFIX=PREFIX)
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "metrics", "--port", str(port)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=5)
            return proc, url
        except requests.ConnectionError:
            time.sleep(0.2)
    procs.stop(proc)
    raise RuntimeError("payments metrics did not come up")


def measure(redis_url: str, scrapes: int) -> dict[str, Any]:
    proc, url = serve(redis_url)
    try:
        scrape_times(url, 3)  # warm: imports, connections
        times = scrape_times(url, scrapes)
        text = requests.get(url, timeout=30).text
    finally:
        procs.stop(proc)
    inside = [float(line.split()[1]) * 1000 for line in text.splitlines()
              if line.startswith("payments_exporter_scrape_seconds ")]
    records = {line.split('"')[1]: int(float(line.split()[1])) for line in text.splitlines()
               if line.startswith("payments_records{")}
    return {"median_ms": statistics.median(times), "p99_ms": sorted(times)[max(0, int(len(times) * 0.99) - 1)],
            "redis_read_ms": inside[0] if inside else float("nan"), "records": records}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.exporter_scrape", description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--scrapes", type=int, default=50)
    args = p.parse_args(argv)
    proc, url, tmp = procs.start_private_redis()
    try:
        client = redis.Redis.from_url(url, decode_responses=True)
        empty = measure(url, args.scrapes)
        started = time.monotonic()
        counts = fill(client, args.records)
        fill_s = time.monotonic() - started
        info = client.info("memory")
        full = measure(url, args.scrapes)
        shown = {k: v for k, v in full.pop("records").items() if v}
        empty.pop("records")
        if shown != counts:
            raise SystemExit(f"the exporter shows {shown}, the store holds {counts}")
        result = {"records": args.records, "scrapes": args.scrapes, "fill_seconds": round(fill_s, 1),
                  "redis_used_memory_mb": round(info["used_memory"] / 2**20),
                  "empty": {k: round(v, 2) for k, v in empty.items()},
                  "full": {k: round(v, 2) for k, v in full.items()},
                  "ratio_full_over_empty": round(full["median_ms"] / empty["median_ms"], 2),
                  "by_status": counts}
    finally:
        procs.stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'store':<12} {'median ms':>10} {'p99 ms':>8} {'Redis reads ms':>15}")
    for name in ("empty", "full"):
        r = result[name]
        print(f"{name:<12} {r['median_ms']:>10.2f} {r['p99_ms']:>8.2f} {r['redis_read_ms']:>15.2f}")
    print(f"{args.records} records ({result['redis_used_memory_mb']} MB in Redis, filled in {result['fill_seconds']}s):"
          f" scrape {result['ratio_full_over_empty']}x the empty store's")
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
