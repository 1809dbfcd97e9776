"""Retention against a real Redis (database 9, env TEST_REDIS_URL) and a real archive (SQLite, and PostgreSQL when
one answers): several simulated days of operations with retention on; Redis holds the same keys and bytes every
day once the first retention period has passed, and every archived record reads back through ``payments show``.

Simulated days: each day's operations are written through the real store (Lua, Redis ``TIME``) in a burst; the
sweep gets an injected clock (``run_sweep(now=...)``): after day ``d`` it stands one retention period after the
end of day ``d - 3``'s burst, so the records of days ``<= d - 3`` are past the 3-day retention and the later ones
are not, exactly as 24-hour days would have it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.archive_db import KINDS, archive_url
from tests.support.env import INTEGRATION_REDIS_URL
from worker.cli.records import find_record, list_records
from worker.config import Settings
from worker.payments.sweep import run_sweep
from worker.services import Services
from worker.store import ResultsStore

REDIS_URL = INTEGRATION_REDIS_URL
ROOT = Path(__file__).resolve().parents[2]
DAY = 86400.0
RETENTION_DAYS = 3
DAYS = 8
SALES, CHAINS, DECLINES = 40, 30, 20  # per day: 40 + 2 x 30 + 20 = 120 operations


@pytest.fixture(params=KINDS)
def url(request, tmp_path):
    with archive_url(request.param, tmp_path) as made:
        yield made


def services(prefix: str, url: str, client) -> Services:
    svc = Services(Settings(redis_url=REDIS_URL, key_prefix=prefix, archive_url_setting=url,
                            retention=RETENTION_DAYS * DAY, stale_auth_age=400 * DAY, reconcile_after=1000 * DAY))
    svc.store = ResultsStore(client, prefix=prefix)
    return svc


def done(store, pid, status="APPROVED", op="sale", trans_id="", **fields):
    store.claim(pid, op, fields={"amount": "3.00", "invoice_id": f"ORD-{pid}", **fields}, owner="w", lease_seconds=30)
    return store.transition(pid, status, owner="w", expect="PENDING", reflect=True,
                            fields={"trans_id": trans_id, "message": status.title()})


def one_day(store, day: int) -> list[str]:
    pids = []
    for i in range(SALES):
        pids.append(f"d{day}-sale-{i}")
        done(store, pids[-1], trans_id=f"1{day:03d}{i:08d}")
    for i in range(CHAINS):
        sale, void = f"d{day}-chain-{i}", f"d{day}-chain-{i}:void"
        done(store, sale, trans_id=f"2{day:03d}{i:08d}")
        done(store, void, op="void", trans_id=f"3{day:03d}{i:08d}", target=f"2{day:03d}{i:08d}", parent=sale)
        pids += [sale, void]
    for i in range(DECLINES):
        pids.append(f"d{day}-declined-{i}")
        done(store, pids[-1], status="DECLINED")
    return pids


def redis_size(client, prefix: str, *, key_index: bool = False) -> tuple[int, int]:
    """(keys, bytes): every key under the prefix and the sum of their MEMORY USAGE (every element counted); without
    the key index entries records leave (they live PAYMENTS_KEY_RETENTION in Redis time, which the simulated days do
    not move), or only those (``key_index``)."""
    keys = [k for k in client.scan_iter(match=prefix + "*", count=1000)
            if k.startswith(prefix + "key:") == key_index]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return len(keys), sum(pipe.execute())


def test_steady_state_over_simulated_days_and_every_archived_record_reads_back(client, prefix, url):
    svc = services(prefix, url, client)
    store = svc.store
    # what must stay in Redis whatever its age: an open auth and a record a human must look at
    done(store, "open-auth", op="auth", trans_id="900000000001")
    done(store, "for-a-human", status="ERROR", needs_human="1")
    written: dict[str, dict] = {}
    ends, sizes = [], []
    for day in range(DAYS):
        pids = one_day(store, day)
        written.update({pid: store.get(pid) or {} for pid in pids})  # as the store shows it, before any retention
        ends.append(store.now())
        clock = ends[day - RETENTION_DAYS] + RETENTION_DAYS * DAY if day >= RETENTION_DAYS else ends[day]
        report = run_sweep(svc, now=clock)
        archived_today = report.get("retention_archived", 0)
        assert archived_today == (120 if day >= RETENTION_DAYS else 0), report
        sizes.append(redis_size(client, prefix))
    # From the end of day 2 on Redis holds three days (the day's sweep has moved the fourth-last out).
    steady = sizes[RETENTION_DAYS - 1:]
    assert len({keys for keys, _ in steady}) == 1, sizes  # the same keys every day
    assert max(b for _, b in steady) <= min(b for _, b in steady) * 1.05, sizes  # and the same bytes, within 5 %
    records = sum(1 for _ in client.scan_iter(match=prefix + "op:*", count=1000))
    assert records == RETENTION_DAYS * 120 + 2
    assert store.get("open-auth") and store.get("for-a-human")

    gone = [pid for pid in written if store.get(pid) is None]
    assert len(gone) == (DAYS - RETENTION_DAYS) * 120
    # each record gone left its key index entry (its key still bound to its request): one small hash, with an expiry
    entries, entry_bytes = redis_size(client, prefix, key_index=True)
    assert entries == len(gone)
    assert all((store.retention.kept(pid) or {}).get("status") == written[pid]["status"] for pid in gone)
    assert all(client.pttl(f"{prefix}key:{pid}") > 0 for pid in gone[:10])
    for pid in gone:
        record, where = find_record(svc, pid)
        assert where == "archive" and record == written[pid], pid
    shown = list_records(svc, limit=10_000)
    assert len(shown) == len(written) + 2 and {r["payment_id"] for r in shown} >= set(written)

    # payments show, the command, for a voided sale and its void long gone from Redis
    env = dict(os.environ, REDIS_URL=REDIS_URL, PAYMENTS_KEY_PREFIX=prefix, PAYMENTS_ARCHIVE_URL=url)
    for pid in ("d0-chain-7", "d0-chain-7:void"):
        run = subprocess.run([sys.executable, "-m", "worker.cli",
                              "show", pid, "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout) == written[pid]
    assert written["d0-chain-7"]["status"] == "VOIDED"
    print(f"\nretention steady state ({url.split(':')[0]}): days -> (keys, bytes) {sizes}; "
          f"{steady[-1][1] / records:.0f} bytes per record held; {entry_bytes / entries:.0f} bytes per key index entry")
