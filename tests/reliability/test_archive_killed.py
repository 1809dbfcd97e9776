"""Retention under a crash: ``payments archive`` killed (SIGKILL) in the middle of 20,000 records, at whatever point
of a batch it is (copying, committed, removing), then run again. Nothing is lost (every record is in Redis or in the
archive at every moment we look), nothing is archived twice, and every archived record is the one Redis held.

Records a day or more old cannot be made with Redis ``TIME``: they are aged with raw writes (times, idx:time)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from worker.archive import Archive
from worker.store import ResultsStore

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
N = 20_000
DAY = 86400.0


def payments_archive(redis_url, prefix, url, before):
    env = dict(os.environ, REDIS_URL=redis_url, PAYMENTS_KEY_PREFIX=prefix, PAYMENTS_ARCHIVE_URL=url,
               PAYMENTS_ARCHIVE_BATCH="500")
    return subprocess.Popen([sys.executable, "-m", "worker.cli",
                             "archive", "--before", before], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_archiving_killed_mid_way_loses_nothing_and_the_next_run_finishes_it(rel_redis_url, tmp_path):
    client = redis.Redis.from_url(rel_redis_url, decode_responses=True)
    prefix = f"rel:archive:{uuid.uuid4().hex[:8]}:"
    store = ResultsStore(client, prefix=prefix)
    url = f"sqlite:///{tmp_path}/archive.sqlite3"
    try:
        then = time.time() - 10 * DAY
        pipe = client.pipeline(transaction=False)
        for i in range(N):
            pid = f"p{i}"
            store.claim(pid, "sale", fields={"amount": "3.00"}, owner="w", lease_seconds=30)
            store.transition(pid, "DECLINED" if i % 2 else "APPROVED", owner="w", expect="PENDING",
                             fields={"trans_id": f"{i:012d}" if i % 2 == 0 else "", "message": "x"})
            pipe.hset(store.record_key(pid), mapping={"created_ts": f"{then + i:.3f}", "updated_ts": f"{then + i:.3f}"})
            pipe.zadd(store.keys.time, {pid: then + i})
        pipe.execute()
        original = {f"p{i}": store.get(f"p{i}") for i in range(N)}
        before = datetime.fromtimestamp(time.time() - 5 * DAY, UTC).strftime("%Y-%m-%d")

        proc = payments_archive(rel_redis_url, prefix, url, before)
        assert proc.stderr is not None
        for line in proc.stderr:  # the first batches are through: kill it in the middle of what comes next
            if line.startswith("... ") and int(line.split()[1]) >= 2000:
                break
        time.sleep(0.05 + (uuid.uuid4().int % 100) / 1000)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        archive = Archive(url)
        in_redis = {pid for pid in original if client.exists(store.record_key(pid))}
        archived = {r["payment_id"] for r in archive.list(limit=2 * N)}
        assert len(archived) > 0 and 0 < len(in_redis) < N
        assert in_redis | archived == set(original)  # nothing lost at the moment of the kill
        print(f"\nkilled with {N - len(in_redis)} removed from Redis, {len(archived)} in the archive "
              f"({len(in_redis & archived)} copied but not yet removed)")

        client.delete(store.keys.lock("sweep"))  # the killed run's lock, as its expiry would
        proc = payments_archive(rel_redis_url, prefix, url, before)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert json.loads(out)["archived"] == len(in_redis)
        assert not any(client.exists(store.record_key(pid)) for pid in original)
        assert archive.counts() == {"operations": N, "operation_history": 2 * N, "audit_entries": 0}
        for rec in archive.list(limit=2 * N):
            expected = {k: v for k, v in (original[rec["payment_id"]] or {}).items() if k != "history"}
            assert rec == expected, rec["payment_id"]
        for pid in ("p0", f"p{N // 2}", f"p{N - 1}"):
            assert archive.get(pid) == original[pid]
        archive.close()
    finally:
        keys = list(client.scan_iter(match=prefix + "*", count=5000))
        if keys:
            client.delete(*keys)
        client.close()
