"""What reconciliation keeps and reads in the store, and ``resolve`` (its Lua), against the Redis store."""
from __future__ import annotations

import pytest

from worker.store.reconciliations import Reconciliations, ResolveRefused

SALE = {"amount": "3.00", "order_id": "", "masked_account": "xxxxxxxxxxxx1111"}


@pytest.fixture
def recon(tier):
    return Reconciliations(tier.store)


def make(store, pid, status="APPROVED", op="sale", trans_id="", **fields):
    store.claim(pid, op, owner="w1", lease_seconds=30, fields=dict(SALE, order_id=pid))
    if status == "PENDING":
        return
    if status == "UNKNOWN":
        store.transition(pid, "UNKNOWN", expect={"PENDING"}, owner="w1", note="parked")
        return
    store.transition(pid, status, fields={"trans_id": trans_id, "message": status.title(), **fields},
                     expect={"PENDING"}, owner="w1", note="done", reflect=op in ("capture", "refund", "void"))


def test_batch_reads(store, recon, tier):
    before = tier.server_now()
    make(store, "a", trans_id="100000000001")
    make(store, "b", status="DECLINED", trans_id="100000000002")
    make(store, "c", status="UNKNOWN")
    after = tier.server_now()
    got = recon.records(["a", "zz", "c"])
    assert set(got) == {"a", "c"} and got["a"]["trans_id"] == "100000000001" and got["c"]["status"] == "UNKNOWN"
    assert "history" not in got["a"] and got["a"]["attempts"] == 1
    assert recon.records([]) == {}
    assert recon.payment_ids_for_trans(["100000000002", "999999999999"]) == {"100000000002": "b"}
    batches = list(recon.created_between(before - 1, after + 1, batch=2))
    assert [len(b) for b in batches] == [2, 1] and sorted(pid for b in batches for pid in b) == ["a", "b", "c"]
    assert list(recon.created_between(after + 1, after + 100)) == []
    created_a = float(recon.records(["a"])["a"]["created_ts"])
    assert "a" not in [pid for b in recon.created_between(before - 1, created_a) for pid in b]  # the end is exclusive


def test_keep_replaces_a_day(recon):
    assert recon.kept("2026-11-28") is None and recon.kept_rows("2026-11-28", "a") is None
    recon.keep("2026-11-28", {"differences": 2}, {"a": [{"trans_id": "100000000001", "status": "1"}], "b": []})
    assert recon.kept("2026-11-28") == {"differences": 2}
    assert recon.kept_rows("2026-11-28", "a") == [{"trans_id": "100000000001", "status": "1"}]
    assert recon.kept_rows("2026-11-28", "b") == [] and recon.kept_rows("2026-11-28", "c") is None
    recon.keep("2026-11-28", {"differences": 0}, {"c": []})
    assert recon.kept("2026-11-28") == {"differences": 0} and recon.kept_rows("2026-11-28", "a") is None
    recon.keep("2026-11-29", {"differences": 0}, {})
    assert recon.kept_days() == ["2026-11-28", "2026-11-29"]


def test_keep_refuses_card_numbers(recon):
    with pytest.raises(ValueError, match="card number"):
        recon.keep("2026-11-28", {"note": "4111111111111111"}, {})
    with pytest.raises(ValueError, match="card number"):
        recon.keep("2026-11-28", {}, {"a": [{"masked_account": "4111111111111111"}]})


def needs_human(store, pid, op="sale", **fields):
    make(store, pid, status="ERROR", op=op, needs_human="1", **fields)


def test_resolve_records_who_when_why(store, recon, tier):
    needs_human(store, "h1")
    before = tier.server_now()
    rec = recon.resolve("h1", "APPROVED", who="alice", reason="found in the console", trans_id="100000000007",
                        checked="the gateway's report of 2026-11-28")
    assert rec["status"] == "APPROVED" and rec["trans_id"] == "100000000007" and rec["needs_human"] == ""
    assert rec["resolved_by"] == "alice" and rec["resolution"] == "found in the console"
    assert rec["resolved_at"].endswith("Z") and float(rec["updated_ts"]) >= before - 0.002
    assert rec["message"] == "resolved by alice: found in the console"
    last = store.history("h1")[-1]
    assert last["status"] == "APPROVED" and "alice" in last["note"] and "report of 2026-11-28" in last["note"]
    audit = store.audit(count=100)[-1]
    assert (audit["payment_id"], audit["from"], audit["to"], audit["trans_id"]) == (
        "h1", "ERROR", "APPROVED", "100000000007")
    assert store.find_by_trans_id("100000000007")["payment_id"] == "h1"


def test_resolve_is_refused_unless_the_record_needs_a_human_and_is_final(store, recon):
    make(store, "ok", trans_id="100000000001")
    make(store, "u", status="UNKNOWN")
    needs_human(store, "h")
    store.transition("u", "UNKNOWN", fields={"needs_human": "1"}, expect={"UNKNOWN"}, owner="w1")
    for pid, reason in (("nope", "missing"), ("ok", "not_needs_human")):
        with pytest.raises(ResolveRefused) as refused:
            recon.resolve(pid, "ERROR", who="bob", reason="x")
        assert refused.value.reason == reason
    assert recon.records(["ok"])["ok"]["status"] == "APPROVED"
    recon.resolve("h", "ERROR", who="bob", reason="never charged")
    with pytest.raises(ResolveRefused) as again:
        recon.resolve("h", "APPROVED", who="bob", reason="changed my mind", trans_id="100000000009")
    assert again.value.reason == "not_needs_human"
    with pytest.raises(ValueError, match="status"):
        recon.resolve("h", "PENDING", who="bob", reason="x")
    with pytest.raises(ValueError, match="card number"):
        recon.resolve("h", "ERROR", who="bob", reason="card 4111111111111111")


def test_a_resolved_void_is_reflected_on_its_sale(store, recon):
    make(store, "s", trans_id="100000000001")
    needs_human(store, "s:void", op="void", target="100000000001", parent="s")
    rec = recon.resolve("s:void", "APPROVED", who="carol", reason="voided, seen in the console",
                        trans_id="100000000002")
    assert rec["status"] == "APPROVED"
    sale = store.get("s")
    assert sale["status"] == "VOIDED" and sale["voided_by"] == "s:void"


def test_a_day_is_paged_whole_even_when_many_records_share_a_creation_time(store, recon, tier):
    ids = [f"t{i}" for i in range(7)]
    for pid in ids:
        make(store, pid)
    score = float(recon.records(["t0"])["t0"]["created_ts"])
    tier.client.zadd(tier.store.keys.time, dict.fromkeys(ids[:5], score))  # records that share a creation time
    tier.client.zadd(tier.store.keys.time, dict.fromkeys(ids[5:], score + 1))
    pages = list(recon.created_between(score - 1, score + 2, batch=2))
    assert sorted(pid for page in pages for pid in page) == ids and all(len(p) <= 2 for p in pages)
