"""Retention's figures: Redis bytes per operation held, and the sweep's archiving time and rows/s.

    .venv/bin/python -m bench.archive_bench --records 100000 [--redis-url redis://127.0.0.1:6379/9]
        [--archive sqlite] [--archive postgresql+psycopg://postgres@127.0.0.1:5432/test]

For each archive: writes N operations through the real results store (Lua, one sale in two approved, the rest
sale->void chains and declines, as a day of traffic), measures what Redis holds for them (``MEMORY USAGE`` of every
key under a private prefix, and ``INFO memory`` before and after), then times ``archive_older_than`` (what the sweep
runs, in its batches) moving them all to the archive, and what Redis holds afterwards. ``sqlite`` is a fresh file in
a temporary directory; a PostgreSQL URL gets a private schema, dropped afterwards. Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid

import redis
from sqlalchemy import create_engine, text

from worker.archive import Archive
from worker.archive.retention import archive_older_than
from worker.store import ResultsStore


def write_operations(store: ResultsStore, n: int) -> int:
    """N operations: of every four sales two stay approved, one is voided (a void operation of its own), one is
    declined."""
    written, i = 0, 0
    while written < n:
        kind = i % 4
        pid = f"bench-{i}"
        trans = f"{i:012d}"
        store.claim(pid, "sale", fields={"amount": "3.00", "invoice_id": f"ORD-{i}"}, owner="w", lease_seconds=30)
        status = "DECLINED" if kind == 3 else "APPROVED"
        store.transition(pid, status, owner="w", expect="PENDING", reflect=True,
                         fields={"trans_id": trans if status == "APPROVED" else "", "message": status.title(),
                                 "masked_account": "xxxxxxxxxxxx1111", "card_type": "VISA", "auth_code": "AUTH42"})
        written += 1
        if kind == 2 and written < n:
            void = f"{pid}:void"
            store.claim(void, "void", fields={"target": trans, "parent": pid}, owner="w", lease_seconds=30)
            store.transition(void, "APPROVED", owner="w", expect="PENDING", reflect=True,
                             fields={"trans_id": f"9{i:011d}", "message": "Approved Void"})
            written += 1
        i += 1
    return written


def redis_bytes(client: redis.Redis, prefix: str) -> tuple[int, int]:
    keys = list(client.scan_iter(match=prefix + "*", count=5000))
    total = 0
    for start in range(0, len(keys), 5000):
        pipe = client.pipeline(transaction=False)
        for key in keys[start:start + 5000]:
            pipe.memory_usage(key, samples=0)
        total += sum(v or 0 for v in pipe.execute())
    return len(keys), total


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def one_run(client: redis.Redis, archive_spec: str, n: int, batch: int) -> dict:
    prefix = f"bench:archive:{uuid.uuid4().hex[:8]}:"
    store = ResultsStore(client, prefix=prefix)
    schema = None
    if archive_spec == "sqlite":
        url = f"sqlite:///{tempfile.mkdtemp(prefix='archive-bench-')}/archive.sqlite3"
    else:
        schema = f"bench_archive_{uuid.uuid4().hex[:8]}"
        with create_engine(archive_spec).begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = f"{archive_spec}{'&' if '?' in archive_spec else '?'}options=-csearch_path%3D{schema}"
    archive = Archive(url)
    archive.migrate()
    try:
        before = used_memory(client)
        t0 = time.perf_counter()
        written = write_operations(store, n)
        write_s = time.perf_counter() - t0
        keys, held = redis_bytes(client, prefix)
        grown = used_memory(client) - before
        t0 = time.perf_counter()
        counts = archive_older_than(store, archive, store.now(), batch=batch)
        archive_s = time.perf_counter() - t0
        keys_after, held_after = redis_bytes(client, prefix)
        rows = archive.counts()
        total_rows = sum(rows.values())
        return {
            "archive": archive_spec.split(":")[0], "operations": written, "write_s": round(write_s, 1),
            "redis_keys": keys, "redis_bytes_per_op": round(held / written),
            "used_memory_per_op": round(grown / written),
            "archive_s": round(archive_s, 1), "records_per_s": round(counts["archived"] / archive_s),
            "rows": rows, "rows_per_s": round(total_rows / archive_s), "archived": counts["archived"],
            "audit_archived": counts.get("audit_archived", 0), "redis_keys_after": keys_after,
            "redis_bytes_after": held_after,
            "used_memory_after_per_op": round((used_memory(client) - before) / written),
        }
    finally:
        archive.close()
        leftover = list(client.scan_iter(match=prefix + "*", count=5000))
        if leftover:
            client.delete(*leftover)
        if schema:
            with create_engine(archive_spec).begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500, help="records per batch (PAYMENTS_ARCHIVE_BATCH)")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/9"))
    parser.add_argument("--archive", action="append", help="'sqlite' or a PostgreSQL URL (repeatable; default both)")
    args = parser.parse_args(argv)
    specs = args.archive or ["sqlite", "postgresql+psycopg://postgres@127.0.0.1:5432/test"]
    client = redis.Redis.from_url(args.redis_url)
    results = []
    for spec in specs:
        result = one_run(client, spec, args.records, args.batch)
        results.append(result)
        print(f"{result['archive']:<22} {result['operations']:>7} ops written in {result['write_s']:>6.1f} s; Redis "
              f"{result['redis_bytes_per_op']} B/op held (used_memory +{result['used_memory_per_op']} B/op); "
              f"archived in {result['archive_s']:.1f} s: {result['records_per_s']} records/s, "
              f"{result['rows_per_s']} rows/s {result['rows']}; left in Redis: {result['redis_keys_after']} keys, "
              f"{result['redis_bytes_after']} B", file=sys.stderr)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
