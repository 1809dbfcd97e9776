"""What only the Redis store can show, against a real Redis (database 9 by default, env TEST_REDIS_URL): every
hot-path call is one EVALSHA, the scripts load themselves, and every timestamp comes from Redis ``TIME``.

The store's contract (claims, journal, transitions, leases, repairs, indexes, outbox, locks, the card guard) is in
tests/contract/, run against this store and the in-memory fake alike.
"""

import time

import pytest
import redis

from tests.support.env import INTEGRATION_REDIS_URL
from worker.store import ResultsStore

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


@pytest.mark.parametrize("decode", [True, False])
def test_one_evalsha_per_hot_path_call(prefix, decode):
    counting = CountingRedis.from_url(REDIS_URL, decode_responses=decode)
    try:
        store = ResultsStore(counting, prefix=prefix)
        _hot_path(store, "warm-up", counting)  # a cold server answers NOSCRIPT once per script
        assert _hot_path(store, "p1", counting) == [["EVALSHA"]] * 7
    finally:
        counting.close()


def test_works_without_explicit_script_load(client, prefix):
    # redis-py's Script falls back to SCRIPT LOAD on NOSCRIPT; no warm-up is required. (No SCRIPT FLUSH here:
    # the server is shared with the other tiers.)
    store = ResultsStore(client, prefix=prefix)
    assert claim(store, "p1").kind == "claimed"
