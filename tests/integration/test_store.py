"""Results store against a real Redis (database 9 by default, env TEST_REDIS_URL)."""

import os
import threading
import uuid

import pytest
import redis

from tests.support.clocks import FixedClock
from tests.support.redis_db import redis_or_skip
from worker.store import CONTRACT_FIELDS, Claim, ResultsStore, public_outcome

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/9")

SALE_FIELDS = {"amount": "3.00", "order_id": "o-1", "masked_account": "xxxxxxxxxxxx1111"}


@pytest.fixture(scope="module")
def client():
    with redis_or_skip(REDIS_URL) as r:
        yield r


@pytest.fixture
def prefix(client):
    p = f"test:store:{uuid.uuid4().hex}:"
    yield p
    keys = list(client.scan_iter(match=p + "*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def clock():
    return FixedClock()


@pytest.fixture
def store(client, prefix, clock):
    return ResultsStore(client, prefix=prefix, clock=clock)


def approve(store, pid, trans_id, **fields):
    return store.transition(pid, "APPROVED", fields={"trans_id": trans_id, "message": "Approved", **fields},
                            expect={"PENDING"}, note="gateway approved")


# ---- claim ---------------------------------------------------------------------------------

def test_claim_new_record(store, clock):
    c = store.claim("p1", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=30)
    assert isinstance(c, Claim) and c.kind == "claimed" and c.previous_status is None
    rec = c.record
    assert rec["status"] == "PENDING" and rec["attempts"] == 1
    assert rec["payment_id"] == "p1" and rec["operation"] == "sale" and rec["amount"] == "3.00"
    assert rec["lease_owner"] == "w1" and float(rec["lease_until"]) == clock.now + 30
    assert rec["created_at"].endswith("Z") and len(rec["created_at"]) == len("2025-06-15T15:06:40.000Z")
    for f in CONTRACT_FIELDS:
        assert f in rec
    assert all(isinstance(v, str) for k, v in rec.items() if k != "attempts")
    got = store.get("p1")
    assert got["history"] == [{"at": rec["created_at"], "status": "PENDING", "note": "claimed by w1"}]


def test_claim_final_returns_record_unchanged(store):
    store.claim("p1", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=30)
    approve(store, "p1", "100000000001")
    before = store.get("p1")
    c = store.claim("p1", "sale", fields=SALE_FIELDS, owner="w2", lease_seconds=30)
    assert c.kind == "final" and c.previous_status == "APPROVED"
    assert c.record["status"] == "APPROVED" and c.record["attempts"] == 1
    assert store.get("p1") == before


def test_claim_busy_then_resumed_after_lease_expiry(store, clock):
    store.claim("p1", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=30)
    c = store.claim("p1", "sale", fields=SALE_FIELDS, owner="w2", lease_seconds=30)
    assert c.kind == "busy" and c.previous_status == "PENDING"
    assert store.get("p1")["lease_owner"] == "w1" and store.get("p1")["attempts"] == 1
    clock.advance(31)
    c = store.claim("p1", "sale", fields=SALE_FIELDS, owner="w2", lease_seconds=30)
    assert c.kind == "resumed" and c.previous_status == "PENDING"
    assert c.record["attempts"] == 2 and c.record["lease_owner"] == "w2"
    assert float(c.record["lease_until"]) == clock.now + 30


def test_claim_same_owner_resumes(store):
    store.claim("p1", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=30)
    c = store.claim("p1", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=30)
    assert c.kind == "resumed" and c.previous_status == "PENDING" and c.record["attempts"] == 2


@pytest.mark.parametrize("status", ["RETRYING", "UNKNOWN"])
def test_claim_resumes_retrying_and_unknown(store, status):
    store.claim("p1", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=30)
    assert store.transition("p1", status, owner="w1", note="x")["status"] == status
    c = store.claim("p1", "sale", fields=SALE_FIELDS, owner="w2", lease_seconds=30)
    assert c.kind == "resumed" and c.previous_status == status
    assert c.record["status"] == "PENDING" and c.record["lease_owner"] == "w2" and c.record["attempts"] == 2
    assert [h["status"] for h in store.history("p1")] == ["PENDING", status, "PENDING"]


def test_claim_rejects_bad_input(store):
    with pytest.raises(ValueError):
        store.claim("p1", "refundz", fields={}, owner="w1", lease_seconds=1)
    with pytest.raises(ValueError):
        store.claim("", "sale", fields={}, owner="w1", lease_seconds=1)


def test_concurrent_claims_exactly_one_wins(client, prefix):
    store = ResultsStore(client, prefix=prefix)
    n_threads = 8
    for round_ in range(60):
        pid = f"race-{round_}"
        barrier = threading.Barrier(n_threads)
        kinds = []
        lock = threading.Lock()

        def worker(i):
            s = ResultsStore(client, prefix=prefix)  # separate instances, as separate workers
            barrier.wait()
            c = s.claim(pid, "sale", fields=SALE_FIELDS, owner=f"w{i}", lease_seconds=30)
            with lock:
                kinds.append(c.kind)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(kinds) == ["busy"] * (n_threads - 1) + ["claimed"], kinds
        assert store.get(pid)["attempts"] == 1


# ---- transition ----------------------------------------------------------------------------

def test_transition_expect_and_owner(store, clock):
    store.claim("p1", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=30)
    assert store.transition("p1", "APPROVED", expect={"RETRYING"}) is None
    assert store.transition("p1", "APPROVED", owner="w2") is None
    assert store.transition("missing", "APPROVED") is None
    assert store.get("p1")["status"] == "PENDING"
    clock.advance(1.5)
    rec = store.transition("p1", "APPROVED", expect=["PENDING", "UNKNOWN"], owner="w1",
                           fields={"trans_id": "100000000001", "avs": "_", "extra": 5}, note="ok")
    assert rec["status"] == "APPROVED" and rec["trans_id"] == "100000000001"
    assert rec["extra"] == "5" and rec["updated_at"] != rec["created_at"]
    assert "lease_owner" not in rec and "lease_until" not in rec  # final clears the lease
    # later operation states need the expected status
    assert store.transition("p1", "VOIDED", expect={"PENDING"}) is None
    assert store.transition("p1", "VOIDED", expect={"APPROVED"}, fields={"voided_by": "v1"})["status"] == "VOIDED"


def test_transition_ignores_reserved_fields_and_validates_status(store):
    store.claim("p1", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=30)
    rec = store.transition("p1", "DECLINED", fields={"status": "APPROVED", "attempts": 99, "payment_id": "zz"})
    assert rec["status"] == "DECLINED" and rec["attempts"] == 1 and rec["payment_id"] == "p1"
    with pytest.raises(ValueError):
        store.transition("p1", "WHATEVER")


def test_history_and_audit(store, clock):
    store.claim("p1", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=30)
    clock.advance(1)
    store.transition("p1", "UNKNOWN", owner="w1", note="read timeout")
    clock.advance(1)
    store.claim("p1", "sale", fields=SALE_FIELDS, owner="w2", lease_seconds=30)
    approve(store, "p1", "100000000001")
    hist = store.history("p1")
    assert [h["status"] for h in hist] == ["PENDING", "UNKNOWN", "PENDING", "APPROVED"]
    assert hist[1]["note"] == "read timeout" and hist[3]["note"] == "gateway approved"
    assert store.get("p1")["history"] == hist
    entries = store.audit(count=100)
    assert [(e["from"], e["to"]) for e in entries] == [
        ("", "PENDING"), ("PENDING", "UNKNOWN"), ("UNKNOWN", "PENDING"), ("PENDING", "APPROVED")]
    last = entries[-1]
    assert last["payment_id"] == "p1" and last["operation"] == "sale" and last["trans_id"] == "100000000001"
    assert last["at"] == hist[3]["at"] and "id" in last
    assert [e["to"] for e in store.audit(after=entries[1]["id"])] == ["PENDING", "APPROVED"]
    assert [e["to"] for e in store.audit(count=1)] == ["PENDING"]


# ---- indexes -------------------------------------------------------------------------------

def test_trans_id_index(store):
    assert store.find_by_trans_id("100000000001") is None
    store.claim("p1", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=30)
    approve(store, "p1", "100000000001")
    assert store.find_by_trans_id("100000000001")["payment_id"] == "p1"
    # a later operation reporting the same trans id does not steal the original's entry
    store.claim("v1", "void", fields={"target": "100000000001", "parent": "p1"}, owner="w1", lease_seconds=30)
    approve(store, "v1", "100000000001")
    assert store.find_by_trans_id("100000000001")["payment_id"] == "p1"
    store.claim("c1", "capture", fields={"target": "100000000001"}, owner="w1", lease_seconds=30)
    approve(store, "c1", "100000000002")
    assert store.find_by_trans_id("100000000002")["payment_id"] == "c1"


def test_open_auths_index(store, clock):
    store.claim("a1", "auth", fields=SALE_FIELDS, owner="w1", lease_seconds=30)
    assert store.open_auths(0) == []
    approve(store, "a1", "100000000011")
    store.claim("a2", "auth", fields=SALE_FIELDS, owner="w1", lease_seconds=30)
    store.transition("a2", "DECLINED", expect={"PENDING"})
    store.claim("s1", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=30)
    approve(store, "s1", "100000000012")
    assert store.open_auths(60) == []  # too young
    clock.advance(61)
    assert [r["payment_id"] for r in store.open_auths(60)] == ["a1"]
    store.transition("a1", "VOIDED", expect={"APPROVED"}, fields={"voided_by": "v1"})
    assert store.open_auths(60) == []
    store.claim("a3", "auth", fields=SALE_FIELDS, owner="w1", lease_seconds=30)
    approve(store, "a3", "100000000013")
    clock.advance(61)
    assert [r["payment_id"] for r in store.open_auths(60)] == ["a3"]
    store.transition("a3", "CAPTURED", expect={"APPROVED"})
    assert store.open_auths(0) == []


def test_voids_due_index(store, clock):
    store.claim("s1", "sale", fields={**SALE_FIELDS, "then_void": "1"}, owner="w1", lease_seconds=30)
    store.claim("s2", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=30)
    store.claim("s3", "sale", fields={**SALE_FIELDS, "then_void": True}, owner="w1", lease_seconds=30)
    assert store.voids_due(0) == []  # PENDING is not due
    for pid, tid in (("s1", "100000000021"), ("s2", "100000000022"), ("s3", "100000000023")):
        approve(store, pid, tid)
    assert store.voids_due(10) == []
    clock.advance(11)
    assert sorted(r["payment_id"] for r in store.voids_due(10)) == ["s1", "s3"]
    store.transition("s1", "VOIDED", expect={"APPROVED"}, fields={"voided_by": "v1"})
    store.transition("s3", "APPROVED", expect={"APPROVED"}, fields={"then_void": ""}, note="void not wanted")
    assert store.voids_due(0) == []


def test_declined_chained_sale_is_not_due(store):
    store.claim("s1", "sale", fields={**SALE_FIELDS, "then_void": "1"}, owner="w1", lease_seconds=30)
    store.transition("s1", "DECLINED", expect={"PENDING"})
    assert store.voids_due(0) == []


def test_stale_non_final(store, clock):
    store.claim("pend", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=300)
    store.claim("retry", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=300)
    store.transition("retry", "RETRYING", owner="w1")
    store.claim("unk", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=300)
    store.transition("unk", "UNKNOWN", owner="w1")
    store.claim("done", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=300)
    approve(store, "done", "100000000031")
    assert store.stale_non_final(60) == []
    clock.advance(120)
    # PENDING with a live lease is not stale
    assert sorted(r["payment_id"] for r in store.stale_non_final(60)) == ["retry", "unk"]
    clock.advance(200)  # lease expired
    assert sorted(r["payment_id"] for r in store.stale_non_final(60)) == ["pend", "retry", "unk"]
    store.transition("unk", "APPROVED", expect={"UNKNOWN"}, fields={"trans_id": "100000000032"})
    store.claim("retry", "sale", fields=SALE_FIELDS, owner="w2", lease_seconds=30)  # touched now
    assert sorted(r["payment_id"] for r in store.stale_non_final(60)) == ["pend"]
    assert store.get("unk")["payment_id"] not in client_zset(store, store.k_non_final)


def test_list_newest_first_with_filters(store, clock):
    for i, op in enumerate(["sale", "auth", "sale", "void"]):
        clock.advance(1)
        store.claim(f"p{i}", op, fields=SALE_FIELDS, owner="w1", lease_seconds=30)
    approve(store, "p2", "100000000041")
    assert [r["payment_id"] for r in store.list()] == ["p3", "p2", "p1", "p0"]
    assert [r["payment_id"] for r in store.list(limit=2)] == ["p3", "p2"]
    assert [r["payment_id"] for r in store.list(operation="sale")] == ["p2", "p0"]
    assert [r["payment_id"] for r in store.list(status="APPROVED")] == ["p2"]
    assert store.list(status="VOIDED") == []


def client_zset(store, key):
    return store.redis.zrange(key, 0, -1)


def test_indexes_track_every_transition(store):
    store.claim("p1", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=30)
    assert client_zset(store, store.k_non_final) == ["p1"]
    assert client_zset(store, store.k_time) == ["p1"]
    store.transition("p1", "RETRYING", owner="w1")
    assert client_zset(store, store.k_non_final) == ["p1"]
    store.transition("p1", "ERROR", fields={"message": "bad seal", "error_class": "Rejected"})
    assert client_zset(store, store.k_non_final) == []
    assert store.stale_non_final(0) == []


# ---- leases and locks ----------------------------------------------------------------------

def test_renew_lease(store, clock):
    store.claim("p1", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=30)
    clock.advance(20)
    assert store.renew_lease("p1", "w1", 30) is True
    assert store.renew_lease("p1", "w2", 30) is False
    assert store.renew_lease("missing", "w1", 30) is False
    clock.advance(20)
    assert store.claim("p1", "sale", fields=SALE_FIELDS, owner="w2", lease_seconds=30).kind == "busy"
    approve(store, "p1", "100000000051")
    assert store.renew_lease("p1", "w1", 30) is False


def test_lock_acquire_release_by_token(store, client):
    token = store.acquire_lock("sweep", 30)
    assert token
    assert store.acquire_lock("sweep", 30) is None
    assert client.pttl(store.lock_key("sweep")) > 0
    assert store.release_lock("sweep", "not-the-token") is False
    assert store.acquire_lock("sweep", 30) is None
    assert store.release_lock("sweep", token) is True
    assert store.release_lock("sweep", token) is False
    token2 = store.acquire_lock("sweep", 30)
    assert token2 and token2 != token
    store.release_lock("sweep", token2)


# ---- card data guard -----------------------------------------------------------------------

@pytest.mark.parametrize("value", ["4111111111111111", "card 4111 1111 1111 1111 here", "4111-1111-1111-1111",
                                   "378282246310005", "6011000990139424"])
def test_card_number_guard(store, client, prefix, value):
    with pytest.raises(ValueError) as exc:
        store.claim("p1", "sale", fields={**SALE_FIELDS, "message": value}, owner="w1", lease_seconds=30)
    assert "message" in str(exc.value) and value not in str(exc.value) and "1111" not in str(exc.value)
    assert store.get("p1") is None
    store.claim("p1", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=30)
    with pytest.raises(ValueError) as exc:
        store.transition("p1", "APPROVED", fields={"whatever": value})
    assert "whatever" in str(exc.value)
    with pytest.raises(ValueError):
        store.transition("p1", "APPROVED", note=value)
    assert store.get("p1")["status"] == "PENDING"
    # nothing under our prefix contains the number
    digits = value.replace(" ", "").replace("-", "")[-16:]
    for key in client.scan_iter(match=prefix + "*"):
        assert digits not in repr(client.dump(key))


def test_card_guard_allows_ordinary_values(store):
    # a 12-digit Luhn-valid gateway trans id is fine in id fields; non-Luhn long runs are fine anywhere
    rec = store.claim("p1", "sale", fields={**SALE_FIELDS, "trans_id": "100000000008",
                                            "message": "ref 4111111111111112"}, owner="w1", lease_seconds=30)
    assert rec.kind == "claimed"
    assert store.transition("p1", "APPROVED", fields={"target": "100000000008", "auth_code": "123456"})


# ---- public outcome ------------------------------------------------------------------------

def test_public_outcome(store):
    store.claim("p1", "void", fields={"target": "100000000061", "parent": "s1"}, owner="w1", lease_seconds=30)
    rec = store.transition("p1", "APPROVED", fields={"trans_id": "100000000062", "error_class": "",
                                                     "then_void": "", "bank_name": "TEST BANK"})
    out = public_outcome(store.get("p1"))
    assert set(out) == set(CONTRACT_FIELDS) | {"target", "parent", "bank_name"}
    assert out["attempts"] == 1 and out["status"] == "APPROVED" and out["operation"] == "void"
    assert out == public_outcome(rec)
    import json
    assert json.loads(json.dumps(out)) == out
    blank = public_outcome({"payment_id": "x"})
    assert set(blank) == set(CONTRACT_FIELDS) and blank["attempts"] == 0


# ---- one round trip ------------------------------------------------------------------------

class CountingRedis(redis.Redis):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.commands = []

    def execute_command(self, *args, **options):
        self.commands.append(str(args[0]).upper())
        return super().execute_command(*args, **options)


@pytest.mark.parametrize("decode", [True, False])
def test_one_evalsha_per_hot_path_call(prefix, decode):
    counting = CountingRedis.from_url(REDIS_URL, decode_responses=decode)
    try:
        store = ResultsStore(counting, prefix=prefix)
        store.load_scripts()  # warm-up (a cold server would otherwise answer NOSCRIPT once)
        counting.commands.clear()
        c = store.claim("p1", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=30)
        assert counting.commands == ["EVALSHA"] and c.kind == "claimed"
        counting.commands.clear()
        assert store.claim("p1", "sale", fields=SALE_FIELDS, owner="w2", lease_seconds=30).kind == "busy"
        assert counting.commands == ["EVALSHA"]
        counting.commands.clear()
        assert store.transition("p1", "UNKNOWN", owner="w1", note="t")["status"] == "UNKNOWN"
        assert counting.commands == ["EVALSHA"]
        counting.commands.clear()
        assert store.claim("p1", "sale", fields=SALE_FIELDS, owner="w2", lease_seconds=30).kind == "resumed"
        assert counting.commands == ["EVALSHA"]
        counting.commands.clear()
        rec = store.transition("p1", "APPROVED", expect={"PENDING"}, owner="w2", fields={"trans_id": "100000000071"})
        assert counting.commands == ["EVALSHA"] and rec["attempts"] == 2 and rec["status"] == "APPROVED"
        counting.commands.clear()
        assert store.renew_lease("p1", "w2", 5) is False
        assert counting.commands == ["EVALSHA"]
    finally:
        counting.close()


def test_works_without_explicit_script_load(client, prefix):
    # redis-py's Script falls back to SCRIPT LOAD on NOSCRIPT; no warm-up is required.
    store = ResultsStore(client, prefix=prefix)
    assert store.claim("p1", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=30).kind == "claimed"


@pytest.mark.parametrize("existing", [None, "APPROVED", "PENDING-other-owner"])
def test_claim_with_message_id_clears_that_messages_outbox_entry_whatever_the_claim_says(store, existing):
    for msg in ("msg-1", "msg-2"):
        store.outbox_put(msg, {"name": "payments.sale", "body": [], "headers": {"id": msg}})
    if existing == "APPROVED":
        store.claim("p-1", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=60)
        approve(store, "p-1", "100000000001")
    elif existing:
        store.claim("p-1", "sale", fields=SALE_FIELDS, owner="other", lease_seconds=60)
    claim = store.claim("p-1", "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=60, message_id="msg-1")
    assert claim.kind == {None: "claimed", "APPROVED": "final", "PENDING-other-owner": "busy"}[existing]
    assert store.redis.hget(store.k_outbox, "msg-1") is None
    assert store.redis.zscore(store.k_outbox_ts, "msg-1") is None
    assert store.redis.hget(store.k_outbox, "msg-2") is not None  # other messages untouched
    assert store.outbox_stale(-1) and [t for t, _ in store.outbox_stale(-1)] == ["msg-2"]
