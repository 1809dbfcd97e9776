"""What ``payments list`` costs when it filters, by merchant account or by status, against the plain newest page.

    python -m bench.list_merchant --records 200000 [--repeat 5]

A throw-away ``redis-server`` (bench/procs.py) is filled as bench/exporter_scrape.py fills it (records shaped as the
store writes them, with their share of statuses), then 1 % of the records are marked as merchant ``shop2`` and
0.1 % as ``shop3`` (a record of ``default`` names none, as the store writes it). Each listing asks for the newest 50
through the store's own ``list``: the time and the number of records read are the figures, twice: as the records
of a version before the accounts' own time indexes are (only ``idx:time``: an account is filtered from it), and after
``payments metrics --recount`` put them in their account's index (as the claim writes a new one; its time is
printed too). Prints a table and one line of JSON.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import procs  # noqa: E402
from bench.exporter_scrape import PREFIX, fill  # noqa: E402
from worker.store import ResultsStore  # noqa: E402

LISTINGS: list[tuple[str, dict[str, str]]] = [
    ("newest 50, no filter", {}),
    ("--merchant default (98.9 %)", {"merchant": "default"}),
    ("--status RETRYING (1 %)", {"status": "RETRYING"}),
    ("--merchant shop2 (1 %)", {"merchant": "shop2"}),
    ("--merchant shop3 (0.1 %)", {"merchant": "shop3"}),
]


def mark(client: redis.Redis, records: int, *, batch: int = 5000) -> None:
    for start in range(0, records, batch):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + batch, records)):
            name = "shop2" if i % 100 == 3 else "shop3" if i % 1000 == 7 else None
            if name:
                pipe.hset(f"{PREFIX}op:bench-{i:08d}", "merchant", name)
        pipe.execute()


class Counting(ResultsStore):
    read = 0

    def _fetch(self, ids: list[Any]) -> list[dict[str, Any]]:
        self.read += len(ids)
        return super()._fetch(ids)


def measure(client: redis.Redis, repeat: int) -> list[dict[str, Any]]:
    out = []
    for name, filters in LISTINGS:
        store = Counting(client, prefix=PREFIX)
        times = []
        for _ in range(repeat):
            store.read = 0
            started = time.perf_counter()
            found = store.list(limit=50, **filters)
            times.append((time.perf_counter() - started) * 1000)
        out.append({"listing": name, "found": len(found), "records_read": store.read,
                    "median_ms": round(statistics.median(times), 1)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.list_merchant", description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    proc, url, tmp = procs.start_private_redis()
    try:
        client = redis.Redis.from_url(url, decode_responses=False)
        fill(redis.Redis.from_url(url, decode_responses=True), args.records)
        mark(client, args.records)
        before = measure(client, args.repeat)
        started = time.perf_counter()
        ResultsStore(client, prefix=PREFIX).health.recount()
        recount_s = round(time.perf_counter() - started, 1)
        after = measure(client, args.repeat)
    finally:
        procs.stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'payments list':<30} {'found':>6} {'read before':>12} {'ms before':>10} {'read after':>11} "
          f"{'ms after':>9}")
    for b, a in zip(before, after, strict=True):
        print(f"{b['listing']:<30} {a['found']:>6} {b['records_read']:>12} {b['median_ms']:>10.1f} "
              f"{a['records_read']:>11} {a['median_ms']:>9.1f}")
    print(f"recount (indexes every account's records): {recount_s} s")
    print(json.dumps({"records": args.records, "repeat": args.repeat, "before": before, "after": after,
                      "recount_s": recount_s}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
