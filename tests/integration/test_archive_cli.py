"""``payments archive``, ``payments show`` and ``payments list`` as a person runs them (subprocesses), against a real
Redis (database 9, env TEST_REDIS_URL, a private key prefix) and an SQLite archive in a temporary directory.

Records a day or more old cannot be made with Redis ``TIME``: the test ages them with raw writes (their times and
their ``idx:time`` score), which is all retention reads."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support.env import INTEGRATION_REDIS_URL
from worker.store import ResultsStore

REDIS_URL = INTEGRATION_REDIS_URL
ROOT = Path(__file__).resolve().parents[2]
DAY = 86400.0


def payments(*args, prefix, archive_url, timeout=60):
    env = dict(os.environ, REDIS_URL=REDIS_URL, PAYMENTS_KEY_PREFIX=prefix, PAYMENTS_ARCHIVE_URL=archive_url)
    return subprocess.run([sys.executable, "-m", "worker.cli", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def aged(client, store, pid, days, status="DECLINED", **fields):
    """A record finished ``days`` ago (its times and its place in idx:time moved back)."""
    store.claim(pid, "sale", fields={"amount": "3.00", **fields}, owner="w", lease_seconds=30)
    store.transition(pid, status, owner="w", expect="PENDING", fields={"message": status.title()})
    then = time.time() - days * DAY
    client.hset(store.record_key(pid), mapping={"created_ts": f"{then:.3f}", "updated_ts": f"{then + 1:.3f}"})
    client.zadd(store.keys.time, {pid: then})


def day(days_ago: float) -> str:
    return datetime.fromtimestamp(time.time() - days_ago * DAY, UTC).strftime("%Y-%m-%d")


def test_migrate_creates_the_schema_and_says_its_revision(prefix, tmp_path):
    url = f"sqlite:///{tmp_path}/data/archive.sqlite3"
    run = payments("archive", "--migrate", prefix=prefix, archive_url=url)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"archive {url}: schema at revision 0002"
    assert (tmp_path / "data" / "archive.sqlite3").exists()


def test_archive_before_a_date_moves_old_records_and_show_and_list_find_them(client, prefix, tmp_path):
    url = f"sqlite:///{tmp_path}/archive.sqlite3"
    store = ResultsStore(client, prefix=prefix)
    aged(client, store, "old-1", 10)
    aged(client, store, "old-2", 9, status="ERROR", needs_human="1")  # a human must look at it: stays
    aged(client, store, "recent", 2)
    before = store.get("old-1")
    run = payments("archive", "--before", day(5), prefix=prefix, archive_url=url)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["archived"] == 1 and report["kept"] == 1 and report["before"] == f"{day(5)}T00:00:00Z"
    assert store.get("old-1") is None and store.get("old-2") and store.get("recent")

    shown = payments("show", "old-1", "--json", prefix=prefix, archive_url=url)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == before
    text = payments("show", "old-1", prefix=prefix, archive_url=url)
    assert text.stdout.startswith("payment old-1 (sale, 3.00) [archived]\nTransaction Status: DECLINED")
    listed = payments("list", "--json", prefix=prefix, archive_url=url)
    assert [r["payment_id"] for r in json.loads(listed.stdout)] == ["recent", "old-2", "old-1"]
    missing = payments("show", "never-was", prefix=prefix, archive_url=url)
    assert missing.returncode == 2 and missing.stderr.strip() == "payments: error: no payment with id 'never-was'"


def test_list_by_merchant_account_reads_redis_then_the_archive(client, prefix, tmp_path):
    url = f"sqlite:///{tmp_path}/archive.sqlite3"
    store = ResultsStore(client, prefix=prefix)
    aged(client, store, "shop2-old", 10, merchant="shop2")
    aged(client, store, "default-old", 9)  # default's records name no merchant
    aged(client, store, "shop2-new", 2, merchant="shop2")
    aged(client, store, "default-new", 1)
    assert payments("archive", "--before", day(5), prefix=prefix, archive_url=url).returncode == 0
    assert store.get("shop2-old") is None  # only in the archive now

    def listed(*args):
        done = payments("list", "--json", *args, prefix=prefix, archive_url=url)
        assert done.returncode == 0, done.stderr
        return [r["payment_id"] for r in json.loads(done.stdout)]

    assert listed("--merchant", "shop2") == ["shop2-new", "shop2-old"]
    assert listed("--merchant", "default") == ["default-new", "default-old"]
    assert listed("--merchant", "shop2", "--limit", "1") == ["shop2-new"]
    assert listed("--merchant", "shop3") == []
    bad = payments("list", "--merchant", "Shop 2", prefix=prefix, archive_url=url)
    assert bad.returncode == 2 and "is not a merchant account's name" in bad.stderr, bad.stderr


@pytest.mark.parametrize("before,message", [
    (None, "--before must be at least 1 day(s) ago"),
    ("yesterday", "--before: 'yesterday' is not a date (YYYY-MM-DD) or an ISO-8601 time"),
])
def test_a_cutoff_too_recent_or_not_a_date_is_refused_in_one_line(prefix, tmp_path, before, message):
    before = before or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    run = payments("archive", "--before", before, prefix=prefix, archive_url=f"sqlite:///{tmp_path}/a.sqlite3")
    assert run.returncode == 2 and run.stderr.strip().startswith(f"payments: error: {message}"), run.stderr
    assert not (tmp_path / "a.sqlite3").exists()


def test_an_archive_that_cannot_be_reached_stops_with_one_line_and_deletes_nothing(client, prefix):
    store = ResultsStore(client, prefix=prefix)
    aged(client, store, "old-1", 10)
    run = payments("archive", "--before", day(5), prefix=prefix,
                   archive_url="postgresql+psycopg://postgres:secret@127.0.0.1:1/none")
    assert run.returncode == 2, run.stderr
    line = run.stderr.strip()
    assert line.startswith("payments: error: archive postgresql+psycopg://postgres:***@127.0.0.1:1/none: cannot "
                           "write 1 records") and line.endswith("(the records stay in Redis)") and "\n" not in line
    assert (store.get("old-1") or {}).get("status") == "DECLINED"


def test_a_running_sweep_holds_the_lock(client, prefix, tmp_path):
    store = ResultsStore(client, prefix=prefix)
    token = store.locks.acquire("sweep", 60)
    assert token
    try:
        run = payments("archive", "--before", day(5), prefix=prefix, archive_url=f"sqlite:///{tmp_path}/a.sqlite3")
    finally:
        store.locks.release("sweep", token)
    assert run.returncode == 2 and "a sweep is running" in run.stderr


def test_payments_sweep_moves_what_is_past_the_retention_and_goes_on_when_the_archive_is_down(client, prefix,
                                                                                              tmp_path):
    store = ResultsStore(client, prefix=prefix)
    aged(client, store, "old-1", 40)
    aged(client, store, "old-2", 31)
    aged(client, store, "young", 29)
    down = payments("sweep", prefix=prefix, archive_url="postgresql+psycopg://postgres@127.0.0.1:1/none")
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout.strip().splitlines()[-1])["archive_unavailable"] == 1
    assert "retention: archive postgresql+psycopg://postgres@127.0.0.1:1/none: cannot write 2 records" in down.stderr
    assert store.get("old-1") and store.get("old-2")

    url = f"sqlite:///{tmp_path}/archive.sqlite3"
    run = payments("sweep", prefix=prefix, archive_url=url)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["ran"] is True and report["retention_archived"] == 2 and "archive_unavailable" not in report
    assert store.get("old-1") is None and store.get("old-2") is None and store.get("young")


def test_restore_keys_binds_keys_archived_before_the_key_index_existed(client, prefix, tmp_path):
    """A record archived the old way (its key index entry never written): after ``payments archive --restore-keys``
    the key answers again, with the archived outcome; a second run restores nothing more."""
    from worker.archive import Archive
    from worker.archive.retention import archive_older_than

    url = f"sqlite:///{tmp_path}/archive.sqlite3"
    store = ResultsStore(client, prefix=prefix)
    store.claim("old-key", "sale", fields={"amount": "3.00"}, owner="w", lease_seconds=30, fingerprints=["f" * 64])
    store.transition("old-key", "APPROVED", owner="w", expect="PENDING", fields={"trans_id": "100000000001"})
    archive = Archive(url)
    assert archive_older_than(store, archive, store.now() + 1, key_retention=0)["archived"] == 1
    archive.close()
    assert store.get("old-key") is None and store.retention.kept("old-key") is None

    run = payments("archive", "--migrate", "--restore-keys", prefix=prefix, archive_url=url)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1]) == {"archived_looked_at": 1, "keys_restored": 1}
    again = store.claim("old-key", "sale", owner="w2", lease_seconds=30, fingerprints=["f" * 64])
    assert again.kind == "final" and again.record["trans_id"] == "100000000001"
    assert store.claim("old-key", "sale", owner="w2", lease_seconds=30, fingerprints=["e" * 64]).kind == "mismatch"
    run = payments("archive", "--restore-keys", prefix=prefix, archive_url=url)
    assert json.loads(run.stdout) == {"archived_looked_at": 1, "keys_restored": 0}
