"""The sweep's retention step (worker/archive/retention.py via ``run_sweep``) over the store on the tests' clock
(tests/support/redis_store.py) and a real SQLite archive in a temporary directory: simulated days pass with
``clock.advance``. The clock starts at Redis's own time here: the audit stream's entry ids, which retention ages
by, come from Redis's clock (XADD ``*``), not the test's.

What only Redis shows (memory, the Lua script, ``payments show``) is in tests/integration/test_retention.py.
"""
from __future__ import annotations

import logging
import time

import pytest

from tests.support.env import TEST_CARD_KEY
from tests.support.fake_gateway import FakeGateway, reply
from tests.support.redis_store import redis_store
from tests.support.unit_services import UnitServices
from worker.archive import Archive, ArchiveUnavailable
from worker.archive.retention import archive_older_than
from worker.config import Settings
from worker.payments.sweep import run_sweep

DAY = 86400.0
RETENTION = 30 * DAY


@pytest.fixture
def _redis_store():
    with redis_store(now=time.time()) as (store, clock):
        seconds, micros = store.redis.execute_command("TIME")  # Redis's own clock, as XADD's ids
        clock.now = int(seconds) + int(micros) / 1e6 + 0.01
        clock.advance(0)
        yield store, clock


@pytest.fixture
def archive_url(tmp_path):
    return f"sqlite:///{tmp_path}/archive.sqlite3"


def settings(archive_url, **kw):
    base = dict(card_key=TEST_CARD_KEY, retention=RETENTION, archive_url_setting=archive_url,
                stale_auth_age=400 * DAY, reconcile_after=600.0)
    return Settings(**{**base, **kw})


def sweep(store, archive_url, **kw):
    return run_sweep(UnitServices(settings(archive_url, **kw), store, FakeGateway()))


def done(store, pid, status="APPROVED", op="sale", trans_id="", **fields):
    store.claim(pid, op, fields={"amount": "3.00", "order_id": pid, **fields}, owner="w", lease_seconds=30)
    return store.transition(pid, status, owner="w", expect="PENDING", reflect=True,
                            fields={"trans_id": trans_id, "message": status.title()})


def test_nothing_younger_than_the_retention_leaves(store, clock, archive_url):
    done(store, "s1", trans_id="100000000001")
    clock.advance(RETENTION - 1)
    assert sweep(store, archive_url) == {"ran": True}
    assert store.get("s1") is not None


def test_a_final_record_older_than_the_retention_moves_to_the_archive_whole(store, clock, archive_url):
    done(store, "s1", trans_id="100000000001")
    done(store, "v1", op="void", trans_id="100000000002", target="100000000001", parent="s1")
    before = {pid: store.get(pid) for pid in ("s1", "v1")}
    assert before["s1"]["status"] == "VOIDED"
    clock.advance(RETENTION + 1)
    report = sweep(store, archive_url)
    assert report["retention_archived"] == 2 and report["retention_audit_archived"] == 5
    archive = Archive(archive_url)
    for pid, rec in before.items():
        assert store.get(pid) is None and archive.get(pid) == rec  # the same record, history and all
    assert store.find_by_trans_id("100000000001") is None and archive.find_by_trans_id("100000000001") == before["s1"]
    assert store.audit() == [] and [e["payment_id"] for e in archive.audit()] == ["s1", "s1", "v1", "v1", "s1"]
    assert all(store.index(name) == [] for name in ("time", "non_final", "open_auths", "voids_due", "reflect_due"))


def test_what_must_stay_stays_however_old(store, clock, archive_url):
    done(store, "open-auth", op="auth", trans_id="100000000003")
    done(store, "human", status="ERROR", needs_human="1")
    done(store, "chain", then_void="1", trans_id="100000000004")
    store.claim("unknown", "sale", fields={}, owner="w", lease_seconds=30)
    clock.advance(RETENTION * 3)
    report = sweep(store, archive_url, stale_auth_age=1000 * DAY, reconcile_after=1000 * DAY)
    assert report.get("retention_archived") is None and report["retention_kept"] == 4
    assert all(store.get(pid) for pid in ("open-auth", "human", "chain", "unknown"))
    assert Archive(archive_url).counts()["operations"] == 0


def test_a_sweep_archives_at_most_its_bound_and_the_next_goes_on(store, clock, archive_url):
    for i in range(7):
        done(store, f"p{i}", status="DECLINED")
    clock.advance(RETENTION + 1)
    assert sweep(store, archive_url, archive_per_sweep=3, archive_batch=2)["retention_archived"] == 3
    assert sweep(store, archive_url, archive_per_sweep=3, archive_batch=2)["retention_archived"] == 3
    assert sweep(store, archive_url, archive_per_sweep=3, archive_batch=2)["retention_archived"] == 1
    assert store.list() == [] and Archive(archive_url).counts()["operations"] == 7


def test_an_archive_that_cannot_be_written_deletes_nothing_and_stops_only_retention(store, clock, tmp_path, caplog):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    done(store, "s1", status="DECLINED")
    clock.advance(RETENTION + 1)
    with caplog.at_level(logging.ERROR, logger="payments.retention"):
        report = sweep(store, f"sqlite:///{blocker}/archive.sqlite3")
    assert report == {"ran": True, "archive_unavailable": 1}
    assert store.get("s1")["status"] == "DECLINED" and len(store.audit()) == 2
    assert "cannot write 1 records" in caplog.text and "the records stay in Redis" in caplog.text
    # payments go on meanwhile
    assert store.claim("s2", "sale", fields={}, owner="w", lease_seconds=30).kind == "claimed"


def test_a_crash_between_copy_and_delete_copies_again_and_then_deletes(store, clock, archive_url):
    done(store, "s1", status="DECLINED")
    done(store, "s2", status="DECLINED")
    clock.advance(RETENTION + 1)
    archive = Archive(archive_url)

    class Crash(Exception):
        pass

    real_forget = store.retention.forget

    def crash(records, cutoff, **_):
        raise Crash("the sweep's process died here")

    store.retention.forget = crash
    with pytest.raises(Crash):
        archive_older_than(store, archive, clock() - RETENTION)
    assert store.get("s1") and store.get("s2") and archive.counts()["operations"] == 2
    store.retention.forget = real_forget
    counts = archive_older_than(store, archive, clock() - RETENTION)
    assert counts["archived"] == 2 and store.list() == []
    assert archive.counts() == {"operations": 2, "operation_history": 4, "audit_entries": 4}


def test_a_record_changed_while_being_copied_stays_and_moves_later_as_it_became(store, clock, archive_url):
    done(store, "s1", trans_id="100000000001")
    clock.advance(RETENTION + 1)
    archive = Archive(archive_url)
    real_put = archive.put

    def put_while_a_refund_lands(records):
        real_put(records)
        store.transition("s1", "REFUNDED", expect="APPROVED", note="refunded by r1")

    archive.put = put_while_a_refund_lands  # type: ignore[method-assign]
    counts = archive_older_than(store, archive, clock() - RETENTION)
    assert counts["changed_since_copy"] == 1 and store.get("s1")["status"] == "REFUNDED"
    assert (archive.get("s1") or {}).get("status") == "APPROVED"  # the copy as it was; Redis is read first
    archive.put = real_put  # type: ignore[method-assign]
    clock.advance(RETENTION + 1)
    assert archive_older_than(store, archive, clock() - RETENTION)["archived"] == 1
    assert store.get("s1") is None and (archive.get("s1") or {}).get("status") == "REFUNDED"


def test_steady_state_over_simulated_days_holds_only_the_retention_window(store, clock, archive_url):
    """Ten simulated days at a 3-day retention: from day 4 on Redis holds the same number of records, history
    entries, index entries and audit entries each day; every operation is in Redis or the archive."""
    svc = UnitServices(settings(archive_url, retention=3 * DAY), store, FakeGateway())
    sizes, n = [], 0
    for _day in range(10):
        for _ in range(20):
            clock.advance(DAY / 40)  # each slot's operations in its middle, away from the sweeps' cutoffs
            done(store, f"s{n}", trans_id=f"1{n:011d}")
            done(store, f"v{n}", op="void", trans_id=f"2{n:011d}", target=f"1{n:011d}", parent=f"s{n}")
            done(store, f"d{n}", status="DECLINED")
            n += 1
            clock.advance(DAY / 40)
        run_sweep(svc)
        sizes.append((len(store.list(limit=10**6)), sum(len(store.history(r["payment_id"]))
                                                        for r in store.list(limit=10**6)),
                      sum(len(store.index(i)) for i in ("time", "non_final", "open_auths", "voids_due")),
                      len(store.audit(count=10**6))))
    assert len(set(sizes[4:])) == 1, sizes
    assert sizes[4][0] == 3 * 60  # three days of 60 operations
    archive = Archive(archive_url)
    for i in range(n):
        for pid in (f"s{i}", f"v{i}", f"d{i}"):
            assert (store.get(pid) or archive.get(pid)) is not None, pid


def test_an_unreachable_archive_is_one_clear_error():
    archive = Archive("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(ArchiveUnavailable, match=r"archive postgresql\+psycopg://nobody@127.0.0.1:1/none: cannot "):
        archive.put([{"payment_id": "p", "history": []}])


def test_a_key_sent_again_after_its_record_left_redis_is_answered_not_charged(store, clock, archive_url):
    """Over the fake store and a scripted gateway: the sale's record is archived and removed; the same request under
    its key gets the stored outcome without a gateway call (the script has one reply only: a second send fails the
    test); a different request is an IdempotencyMismatch. The archive is not asked."""
    gateway = FakeGateway(script=[reply(trans_id="100000000077")])
    svc = UnitServices(settings(archive_url, retention=DAY), store, gateway)
    card = {"number": "4111111111111111", "expire": "1230", "cvv2": "123"}
    first = svc.flow.charge("sale", "key-1", amount="3.00", card=dict(card))
    assert first["status"] == "APPROVED" and len(gateway.sends) == 1
    clock.advance(3 * DAY)
    assert sweep(store, archive_url, retention=DAY)["retention_archived"] == 1 and store.get("key-1") is None
    svc.archive = Archive("postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert svc.flow.charge("sale", "key-1", amount="3.00", card=dict(card)) == first
    other = svc.flow.charge("sale", "key-1", amount="5.00", card=dict(card))
    assert other["status"] == "ERROR" and other["error_class"] == "IdempotencyMismatch"
    assert len(gateway.sends) == 1 and store.get("key-1") is None
    # The key index entry expires (Redis's own expiry: PEXPIREAT) key_retention after the record's last change.
    expires_ms = store.redis.execute_command("PEXPIRETIME", store.keys.kept("key-1"))
    last_change = float(archive_get(archive_url, "key-1")["updated_ts"])
    assert expires_ms == int((last_change + settings(archive_url).key_retention) * 1000)
    clock.advance(90 * DAY)
    store.redis.delete(store.keys.kept("key-1"))  # what that expiry does, then
    assert store.retention.kept("key-1") is None


def archive_get(archive_url, payment_id):
    return Archive(archive_url).get(payment_id)
