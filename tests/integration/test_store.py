"""What only the Redis store can show, against a real Redis (database 9 by default, env TEST_REDIS_URL): every
hot-path call is one FCALL, the library loads itself, every timestamp comes from Redis ``TIME``, and a final write
puts the outcome, Celery's result and the message's ack in one call.

The store's contract (claims, journal, transitions, leases, repairs, indexes, outbox, locks, the card guard) is in
tests/contract/, run against this store and the in-memory fake alike.
"""

import json
import math
import random
import time
from datetime import UTC, datetime

import pytest
import redis

from tests.support.env import INTEGRATION_REDIS_URL
from tests.support.redis_clock import ClockedRedis
from worker.store import CONTRACT_FIELDS, ResultsStore, task_outcome
from worker.store.final_write import OUTCOME_PLACEHOLDER, FinalWrite, acked, written
from worker.store.lua import TEST_CLOCK_KEY
from worker.store.outcomes import public_outcome

REDIS_URL = INTEGRATION_REDIS_URL

SALE_FIELDS = {"amount": "3.00", "order_id": "o-1", "masked_account": "xxxxxxxxxxxx1111"}
FP_A = "a" * 64


@pytest.fixture
def store(client, prefix):
    return ResultsStore(client, prefix=prefix)


def server_now(client) -> float:
    seconds, micros = client.time()
    return int(seconds) + int(micros) / 1_000_000


def claim(store, pid, op="sale", owner="w1", lease=30, **kw):
    kw.setdefault("fields", SALE_FIELDS)
    return store.claim(pid, op, owner=owner, lease_seconds=lease, **kw)


def test_timestamps_come_from_redis_time_not_the_workers_clock(store, client, monkeypatch):
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # this worker's clock runs an hour ahead
    before = server_now(client)
    c = claim(store, "p1", journal=True)
    at = store.journal("p1", "w1", 30)
    rec = store.transition("p1", "UNKNOWN", owner="w1", sent=True, check_in=10)
    now = store.now()
    after = server_now(client)
    for value in (c.now, at, float(rec["created_ts"]), float(rec["updated_ts"]), float(rec["sent_ts"]),
                  float(rec["attempt_ts"]), now):
        assert before - 0.001 <= value <= after + 0.001
    assert float(c.record["lease_until"]) == pytest.approx(c.now + 30, abs=0.002)
    assert float(rec["next_check_ts"]) == pytest.approx(float(rec["updated_ts"]) + 10, abs=0.002)


# ---- one round trip --------------------------------------------------------------------------

class CountingRedis(redis.Redis):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.commands = []

    def execute_command(self, *args, **options):
        self.commands.append(str(args[0]).upper())
        return super().execute_command(*args, **options)


def _hot_path(store, pid, counting):
    """claim(journal), transition(park), claim(resume), journal, renew, transition(final): one EVALSHA each."""
    seen = []

    def step(call):
        counting.commands.clear()
        result = call()
        seen.append(list(counting.commands))
        return result

    assert step(lambda: store.claim(pid, "sale", fields=SALE_FIELDS, owner="w1", lease_seconds=30,
                                    journal=True, fingerprints=[FP_A])).kind == "claimed"
    assert step(lambda: store.claim(pid, "sale", fields=SALE_FIELDS, owner="w2", lease_seconds=30)).kind == "busy"
    assert step(lambda: store.transition(pid, "UNKNOWN", owner="w1", note="t", sent=None))["status"] == "UNKNOWN"
    assert step(lambda: store.claim(pid, "sale", fields=SALE_FIELDS, owner="w2", lease_seconds=30)).kind == "resumed"
    assert step(lambda: store.journal(pid, "w2", 30)) is not None
    assert step(lambda: store.renew(pid, "w2", 30)) is True
    rec = step(lambda: store.transition(pid, "APPROVED", expect={"PENDING"}, owner="w2", sent=True,
                                        fields={"trans_id": "100000000071"}))
    assert rec["attempts"] == 2 and rec["status"] == "APPROVED"
    return seen


@pytest.mark.parametrize("journal, fence_for", [(False, None), (True, None), (True, 300.0), ("prior", None)])
def test_a_new_record_s_claim_answers_the_record_it_wrote(store, client, prefix, journal, fence_for):
    # claim.lua answers only the times it wrote: the store rebuilds the rest from the call's arguments
    fields = {**SALE_FIELDS, "merchant": "acme", "needs_human": "1", "trans_id": "100000000777", "message": ""}
    c = claim(store, "p1", fields=fields, journal=journal, fingerprints=[FP_A], fence_for=fence_for)
    got = store.get("p1")
    del got["history"]
    assert c.kind == "claimed" and c.record == got and set(CONTRACT_FIELDS) <= got.keys()
    # no empty field is written: absent reads as '' (records.py claim, encoding.py typed)
    assert "" not in client.hgetall(store.record_key("p1")).values() and got["message"] == got["avs"] == ""
    assert (c.fenced_at is not None) == (fence_for is not None)
    # the indexes a new record's fields put it in (reindex's rules): non-final, needs_human, by trans id
    assert client.zscore(f"{prefix}idx:needs_human", "p1") == float(got["updated_ts"])
    assert client.zscore(f"{prefix}idx:non_final", "p1") == int(float(got["updated_ts"]))  # its second (second_of)
    assert client.hget(f"{prefix}idx:trans", "100000000777") == "p1"
    assert client.zscore(f"{prefix}idx:merchant:acme:time", "p1") == float(got["created_ts"])
    assert client.hget(f"{prefix}idx:merchant:acme:counts", "PENDING") == "1"


def test_the_clock_s_strings_are_the_time_s_whatever_the_functions_keep_between_calls(prefix):
    # common.lua's ts()/iso() keep the current second's strings: the same strings as formatting each time, as Python
    # computes them (a tests' clock: every call at a time it sets; several in one second, seconds and days apart)
    def old_ts(t: float) -> str:  # string.format('%.3f', math.floor(t * 1000) / 1000)
        return "%.3f" % (math.floor(t * 1000) / 1000)

    def old_iso(t: float) -> str:
        secs = math.floor(t)
        ms = math.floor((t - secs) * 1000)
        return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms:03d}Z"

    rng = random.Random(28)
    times = [1_750_000_000_000_000, 1_750_000_000_000_999, 1_750_000_000_001_000, 1_750_000_000_999_999,
             1_750_000_001_000_000, 1_709_164_799_999_999, 1_709_164_800_123_456, 4_102_444_799_999_999,
             951_868_800_000_001, *sorted(rng.randrange(10**15, 4 * 10**15) for _ in range(100)),
             *(1_750_000_002_000_000 + rng.randrange(10**6) for _ in range(50))]
    clocked = ClockedRedis.from_url(REDIS_URL, decode_responses=True)
    try:
        store = ResultsStore(clocked, prefix=prefix)
        for i, us in enumerate(times):
            clocked.set(TEST_CLOCK_KEY, str(us))
            rec = claim(store, f"p{i}").record
            t = us // 1_000_000 + (us % 1_000_000) / 1_000_000
            assert (rec["created_at"], rec["created_ts"], rec["lease_until"]) == (old_iso(t), old_ts(t),
                                                                                  old_ts(t + 30.0)), us
    finally:
        clocked.delete(TEST_CLOCK_KEY)
        clocked.close()


def test_the_functions_find_each_prefix_s_indexes_from_the_record_keys(client, prefix):
    # KEYS name only the record and its key index entry: the indexes come from the prefix the two share, kept
    # between calls (the library is one per server, its callers' prefixes are not)
    prefixes = [prefix, f"{prefix}op:", f"{prefix}key:x:", prefix]
    for i, p in enumerate(prefixes):
        store = ResultsStore(client, prefix=p)
        claim(store, f"p{i}", fields={**SALE_FIELDS, "trans_id": f"10000000000{i}"}, journal=True)
        assert store.transition(f"p{i}", "APPROVED", expect=("PENDING",), owner="w1", sent=True) is not None
    for i, p in enumerate(prefixes):
        assert client.zscore(f"{p}idx:time", f"p{i}") is not None
        assert client.hget(f"{p}idx:trans", f"10000000000{i}") == f"p{i}"
        assert client.zscore(f"{p}idx:non_final", f"p{i}") is None
    for p in {*prefixes}:
        assert client.zcard(f"{p}idx:time") == prefixes.count(p)
        assert client.hget(f"{p}idx:status_counts", "APPROVED") == str(prefixes.count(p))
        assert client.xlen(f"{p}audit") == 2 * prefixes.count(p)


@pytest.mark.parametrize("decode", [True, False])
def test_one_fcall_per_hot_path_call(prefix, decode):
    counting = CountingRedis.from_url(REDIS_URL, decode_responses=decode)
    try:
        store = ResultsStore(counting, prefix=prefix)
        _hot_path(store, "warm-up", counting)  # a server without the library answers "Function not found" once
        assert _hot_path(store, "p1", counting) == [["FCALL"]] * 7
    finally:
        counting.close()


def test_a_server_without_the_library_gets_it_loaded_again_and_nothing_fails(client, prefix):
    # What a restarted Redis without persistence, or a primary that missed the load, looks like: our library gone.
    # (Only ours is deleted: the server is shared with the other tiers, which load it again the same way.)
    store = ResultsStore(client, prefix=prefix)
    assert claim(store, "p1").kind == "claimed"
    library = f"payments_{store.functions.version}"
    client.function_delete(library)
    assert claim(store, "p2").kind == "claimed"  # plain call: loaded, then called again
    client.function_delete(library)
    assert store.journal("p2", "w1", 30) is not None
    names = [entry[1] if isinstance(entry, list) else entry["library_name"] for entry in client.function_list(library)]
    assert names == [library]


def _final(prefix: str, task_id: str) -> FinalWrite:
    meta = json.dumps({"status": "SUCCESS", "result": OUTCOME_PLACEHOLDER, "traceback": None, "children": [],
                       "date_done": "2026-12-07T00:00:00+00:00", "task_id": task_id})
    return FinalWrite(task_id=task_id, result_key=f"{prefix}meta-{task_id}", meta=meta, expires=60,
                      unacked_key=f"{prefix}unacked", unacked_index_key=f"{prefix}unacked_index",
                      delivery_tag=f"tag-{task_id}")


def _delivered(client, final: FinalWrite) -> None:
    client.hset(final.unacked_key, final.delivery_tag, "[message]")
    client.zadd(final.unacked_index_key, {final.delivery_tag: 1.0})


def test_a_final_write_puts_the_outcome_the_result_and_the_ack_in_one_call(store, client, prefix):
    claim(store, "sale1", fields={**SALE_FIELDS, "then_void": "1"}, journal=True)
    sale = store.transition("sale1", "APPROVED", expect=("PENDING",), owner="w1", sent=True,
                            fields={"trans_id": "100000000101", "message": "Approved Sale", "auth_code": "A1"})
    assert sale is not None
    claim(store, "ref1", op="refund", fields={"target": "100000000101", "amount": "1.25", "parent": "sale1"},
          journal=True)
    final = _final(prefix, "task-ref1")
    _delivered(client, final)
    with client.monitor() as monitor:
        rec = store.transition("ref1", "APPROVED", expect=("PENDING",), owner="w1", sent=True, reflect=True,
                               fields={"trans_id": "100000000102", "message": "Approved Refund"}, then=final)
        client.get(f"{prefix}marker")
        seen = []
        while f"{prefix}marker" not in (command := monitor.next_command())["command"]:
            seen.append(command)
    assert [c["command"].split(" ", 1)[0] for c in seen if c["client_type"] != "lua" and prefix in c["command"]] \
        == ["FCALL"]
    assert rec is not None and rec["status"] == "APPROVED"
    meta = json.loads(client.get(final.result_key))
    assert meta["result"] == task_outcome(rec) and meta["task_id"] == "task-ref1" and meta["children"] == []
    assert meta["result"]["attempts"] == 1 and "refunded_amount" not in meta["result"]
    assert 0 < client.ttl(final.result_key) <= 60
    assert not client.hexists(final.unacked_key, final.delivery_tag)
    assert client.zscore(final.unacked_index_key, final.delivery_tag) is None
    assert store.get("sale1")["status"] == "PARTIALLY_REFUNDED"  # reflected in the same call
    # its answer: the record's public outcome only (no lease/internal fields), as the record holds it
    assert rec.keys() == public_outcome(rec).keys() and "created_ts" not in rec and "sent_ts" not in rec
    assert {k: str(v) for k, v in public_outcome(store.get("ref1")).items()} == {k: str(v) for k, v in rec.items()}
    assert "created_ts" in sale  # without a final write to make: the whole record, as before
    # what the backend and kombu's ack then skip, once each
    assert written("task-ref1") and not written("task-ref1")
    assert acked("tag-task-ref1") and not acked("tag-task-ref1")


def test_a_refused_final_write_writes_no_result_and_acks_nothing(store, client, prefix):
    claim(store, "p1", journal=True)
    final = _final(prefix, "task-p1")
    _delivered(client, final)
    # another worker's lease: the transition is refused, and so are the result and the ack
    assert store.transition("p1", "APPROVED", expect=("PENDING",), owner="w2", sent=True, then=final) is None
    assert client.get(final.result_key) is None
    assert client.hexists(final.unacked_key, final.delivery_tag)
    assert not written("task-p1") and not acked("tag-task-p1")
    # a status a task may not return is shown as UNKNOWN in the result, as the task returns it
    parked = store.transition("p1", "UNKNOWN", owner="w1", sent=True, then=final)
    assert parked is not None
    assert json.loads(client.get(final.result_key))["result"] == task_outcome(parked)
    assert task_outcome(parked)["status"] == "UNKNOWN"
    client.delete(final.result_key, final.unacked_key, final.unacked_index_key)
