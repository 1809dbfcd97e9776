"""Retention's side of the results store (``store.retention``), run against the Redis store (``forget.lua``) and the
in-memory fake alike (``tier``: see conftest.py): which records may leave Redis, that removing one takes its
history and every index with it, and that nothing changed since it was copied, or still to be acted on, is removed.
The audit stream's trimming by age too."""
from __future__ import annotations

import pytest

from worker.store.outcomes import task_outcome
from worker.store.retention import archivable

INDEXES = ("time", "non_final", "open_auths", "voids_due", "reflect_due")


def claim(store, pid, op="sale", owner="w1", fingerprints=(), mode="run", **fields):
    return store.claim(pid, op, fields={"amount": "3.00", "order_id": pid, **fields}, owner=owner, lease_seconds=30,
                       fingerprints=fingerprints, mode=mode)


def finish(store, pid, status="APPROVED", trans_id="", reflect=False, **fields):
    return store.transition(pid, status, fields={"trans_id": trans_id, "message": status.title(), **fields},
                            expect="PENDING", owner="w1", note="gateway said so", reflect=reflect)


def nowhere(store, tier, pid, trans_id=""):
    """The record, its history and every index entry are gone."""
    assert store.get(pid) is None and store.history(pid) == []
    assert all(pid not in tier.index(name) for name in INDEXES)
    if trans_id:
        assert store.find_by_trans_id(trans_id) is None


def cutoff_after(tier) -> float:
    """A cutoff after everything written so far, and before anything written from now on."""
    tier.wait(0.005)
    cutoff = tier.server_now()
    tier.wait(0.005)
    return cutoff


def test_a_final_record_older_than_the_cutoff_is_due_with_its_history_and_forgotten_whole(store, tier):
    claim(store, "s1")
    finish(store, "s1", trans_id="100000000001")
    cutoff = cutoff_after(tier)
    due, scanned = store.retention.due(cutoff)
    assert scanned == 1 and [r["payment_id"] for r in due] == ["s1"]
    rec = due[0]
    assert rec == store.get("s1")  # the record as get() shows it, history included
    assert [h["status"] for h in rec["history"]] == ["PENDING", "APPROVED"]
    assert store.retention.forget(due, cutoff) == ["s1"]
    nowhere(store, tier, "s1", "100000000001")
    assert store.list() == [] and store.retention.due(cutoff) == ([], 0)
    assert store.retention.forget(due, cutoff) == []  # a second time: nothing there


@pytest.mark.parametrize("case", ["pending", "unknown", "open_auth", "needs_human", "void_due", "not_reflected",
                                  "newer"])
def test_what_must_stay_in_redis_is_never_due_nor_forgotten(store, tier, case):
    if case == "pending":
        claim(store, "x")
    elif case == "unknown":
        claim(store, "x")
        store.transition("x", "UNKNOWN", owner="w1", note="timeout", sent=True)
    elif case == "open_auth":
        claim(store, "x", op="auth")
        finish(store, "x", trans_id="100000000002")
    elif case == "needs_human":
        claim(store, "x")
        finish(store, "x", status="ERROR", needs_human="1")
    elif case == "void_due":
        claim(store, "x", then_void="1")
        finish(store, "x", trans_id="100000000003")
    elif case == "not_reflected":
        claim(store, "x", op="refund", target="100000000009")
        finish(store, "x", trans_id="100000000004")  # not reflected on its original yet
    cutoff = cutoff_after(tier)
    if case == "newer":
        claim(store, "x")
        finish(store, "x", status="DECLINED")
        cutoff_after(tier)
    before = store.get("x")
    due, scanned = store.retention.due(cutoff)
    assert due == [] and scanned == (0 if case == "newer" else 1)
    # handed over anyway (a caller's mistake), the script still refuses
    assert store.retention.forget([before], cutoff) == []
    assert store.get("x") == before


def test_a_record_changed_after_the_copy_stays_and_is_due_again_as_it_is_now(store, tier):
    claim(store, "s1")
    finish(store, "s1", trans_id="100000000001")
    cutoff = cutoff_after(tier)
    copied, _ = store.retention.due(cutoff)
    tier.wait(0.002)
    store.transition("s1", "VOIDED", expect="APPROVED", note="voided by v1")  # between the copy and the delete
    assert store.retention.forget(copied, tier.server_now()) == []
    assert store.get("s1")["status"] == "VOIDED"
    due, _ = store.retention.due(tier.server_now() + 0.001)
    assert [(r["payment_id"], r["status"]) for r in due] == [("s1", "VOIDED")]
    assert store.retention.forget(due, tier.server_now() + 0.001) == ["s1"]


def test_a_trans_id_that_maps_to_another_record_keeps_its_mapping(store, tier):
    claim(store, "first")
    finish(store, "first", trans_id="100000000005", then_void="1")  # stays: its chained void is due
    claim(store, "second")
    finish(store, "second", trans_id="100000000005", status="DECLINED")  # first writer wins: the index names "first"
    cutoff = cutoff_after(tier)
    due, _ = store.retention.due(cutoff)
    assert [r["payment_id"] for r in due] == ["second"]
    assert store.retention.forget(due, cutoff) == ["second"]
    assert store.find_by_trans_id("100000000005")["payment_id"] == "first"


def test_due_pages_oldest_first_and_says_how_many_it_looked_at(store, tier):
    for i in range(5):
        claim(store, f"p{i}")
        finish(store, f"p{i}", status="DECLINED" if i != 2 else "ERROR", needs_human="1" if i == 2 else "")
        tier.wait(0.002)
    cutoff = cutoff_after(tier)
    due, scanned = store.retention.due(cutoff, limit=3)
    assert scanned == 3 and [r["payment_id"] for r in due] == ["p0", "p1"]  # p2 needs a human
    due, scanned = store.retention.due(cutoff, offset=3, limit=3)
    assert scanned == 2 and [r["payment_id"] for r in due] == ["p3", "p4"]
    assert store.retention.due(cutoff, offset=5) == ([], 0)


def test_the_cutoff_is_never_later_than_the_stores_clock(store, tier):
    claim(store, "s1")
    finish(store, "s1", status="DECLINED")
    future = tier.server_now() + 3600
    tier.write_raw("s1", updated_ts=f"{future - 60:.3f}")  # a record "changed" in the future
    rec = store.get("s1")
    assert archivable(rec, future)
    assert store.retention.forget([rec], future) == []
    assert store.get("s1") is not None


def test_audit_entries_before_the_cutoff_are_listed_then_trimmed_through_the_last_copied(store, tier):
    claim(store, "a")
    finish(store, "a", status="DECLINED")
    cutoff = cutoff_after(tier)
    claim(store, "b")
    old = store.retention.audit_before(cutoff)
    assert [(e["payment_id"], e["to"]) for e in old] == [("a", "PENDING"), ("a", "DECLINED")]
    assert store.retention.audit_before(cutoff, count=1) == old[:1]
    assert store.retention.trim_audit(old[0]["id"]) == 1
    assert store.retention.audit_before(cutoff) == old[1:]
    assert store.retention.trim_audit(old[1]["id"]) == 1
    assert store.retention.audit_before(cutoff) == []
    assert [(e["payment_id"], e["to"]) for e in store.audit()] == [("b", "PENDING")]


FP, OTHER_FP = "f" * 64, "e" * 64


def archived_sale(store, tier, pid="k1", **forget_kw):
    """An approved sale bound to FP, then retention's removal; its outcome as the first delivery returned it."""
    claim(store, pid, fingerprints=[FP], masked_account="xxxxxxxxxxxx1111")
    done = finish(store, pid, trans_id="100000000001", auth_code="ABC123")
    cutoff = cutoff_after(tier)
    due, _ = store.retention.due(cutoff)
    assert store.retention.forget(due, cutoff, **forget_kw) == [pid]
    return task_outcome(done)


def test_a_forgotten_record_leaves_its_key_bound_to_its_request_with_its_outcome(store, tier):
    outcome = archived_sale(store, tier)
    kept = store.retention.kept("k1")
    assert kept["fingerprint"] == FP and kept["operation"] == "sale" and kept["status"] == "APPROVED"
    assert not {"lease_owner", "lease_until", "sends", "history", "created_ts"} & set(kept)  # only what answers
    assert "4111111111111111" not in tier.stored_text()
    # the same request: its outcome, and nothing runs again (no record made)
    again = claim(store, "k1", fingerprints=["x" * 64, FP])  # FP under an older card key still matches
    assert again.kind == "final" and task_outcome(again.record) == outcome
    assert store.get("k1") is None and store.list() == []
    # another request under the key: a mismatch, whatever differs
    for other in (claim(store, "k1", fingerprints=[OTHER_FP]), claim(store, "k1", op="auth", fingerprints=[FP])):
        assert other.kind == "mismatch" and other.record["operation"] == "sale"
    assert claim(store, "k1", op="void", mode="create_only").kind == "mismatch"
    assert claim(store, "k1", mode="create_only").kind == "exists"
    assert store.claim("k1", "sale", owner="sweep", lease_seconds=30, mode="reconcile").kind == "missing"
    assert store.get("k1") is None and store.retention.kept("k1") == kept


def test_a_key_index_entry_lives_key_retention_after_the_records_last_change_then_the_key_is_new(store, tier):
    archived_sale(store, tier, "gone", key_retention=0)  # already past its key retention: no entry
    assert store.retention.kept("gone") is None and claim(store, "gone", fingerprints=[OTHER_FP]).kind == "claimed"
    archived_sale(store, tier, "k2", key_retention=1.0)
    assert claim(store, "k2", fingerprints=[OTHER_FP]).kind == "mismatch"
    tier.wait(1.1)
    assert store.retention.kept("k2") is None
    assert claim(store, "k2", fingerprints=[OTHER_FP]).kind == "claimed"


def test_remember_gives_an_archived_record_its_key_entry_back_unless_redis_knows_the_key(store, tier):
    """The upgrade step (``payments archive --restore-keys``): records archived before the key index existed."""
    outcome = archived_sale(store, tier, "old", key_retention=0)  # archived the old way: no entry
    archived = dict(outcome, fingerprint=FP, updated_ts=f"{tier.server_now() - 5:.3f}")
    assert store.retention.kept("old") is None
    assert store.retention.remember([archived], key_retention=3600) == ["old"]
    again = claim(store, "old", fingerprints=[FP])
    assert again.kind == "final" and task_outcome(again.record) == outcome
    assert claim(store, "old", fingerprints=[OTHER_FP]).kind == "mismatch"
    # never over what Redis knows: an entry (a newer record's), a live record; nor past the key retention
    assert store.retention.remember([dict(archived, status="DECLINED")], key_retention=3600) == []
    assert store.retention.kept("old")["status"] == "APPROVED"
    claim(store, "live")
    assert store.retention.remember([dict(archived, payment_id="live")], key_retention=3600) == []
    assert store.retention.kept("live") is None
    assert store.retention.remember([dict(archived, payment_id="expired")], key_retention=1) == []
    assert store.retention.remember([dict(archived, payment_id="bad", updated_ts="not-a-time")]) == []
