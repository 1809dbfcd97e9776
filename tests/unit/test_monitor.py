"""What needs a human (worker/ops/monitor.py's attention, which `payments status` exits on and the alert rules mirror),
and what the status screen says, from snapshots shaped as ``store.health.snapshot()`` makes them."""
from __future__ import annotations

import pytest

from tests.support.redis_store import new_store
from worker.config import Settings
from worker.ops.monitor import attention
from worker.ops.status import render

SETTINGS = Settings(reconcile_after=600, visibility_timeout=300, sweep_interval=300, stale_auth_age=7 * 86400)
NOW = 1_800_000_000.0


def healthy(**changes) -> dict:
    found = {"now": NOW, "by_status": {"APPROVED": 3}, "stats": {}, "stale_auths": 0,
             "sweep": {"ran": True, "finished": NOW - 60, "seconds": 0.2, "reconcile_adopted": 1},
             "broker": {"queues": {"celery": 0}, "unacked": 0}}
    for name in ("unknown", "retrying", "needs_human", "non_final", "outbox", "open_auths"):
        found[name] = {"count": 0, "oldest": None}
    found.update(changes)
    return found


def test_all_well_is_an_empty_list():
    assert attention(healthy(), SETTINGS, workers=["w@h"]) == []


@pytest.mark.parametrize("changes, says", [
    ({"unknown": {"count": 2, "oldest": NOW - 1201}}, "2 UNKNOWN, the oldest for 1201s"),
    ({"needs_human": {"count": 1, "oldest": NOW - 5}}, "1 records need a human"),
    ({"outbox": {"count": 1, "oldest": NOW - 901}}, "outbox: the oldest message is 901s old"),
    ({"sweep": None}, "the sweep has never run"),
    ({"sweep": {"finished": NOW - 901}}, "the sweep last ran 901s ago"),
    ({"open_auths": {"count": 1, "oldest": NOW - 7 * 86400 - 901}, "stale_auths": 1}, "1 approved auths older"),
])
def test_each_condition_past_its_threshold_needs_a_human(changes, says):
    found = attention(healthy(**changes), SETTINGS, workers=["w@h"])
    assert len(found) == 1 and found[0].startswith(says), found


@pytest.mark.parametrize("changes", [
    {"unknown": {"count": 2, "oldest": NOW - 1199}},
    {"outbox": {"count": 1, "oldest": NOW - 899}},
    {"sweep": {"finished": NOW - 899}},
    {"open_auths": {"count": 1, "oldest": NOW - 7 * 86400 - 899}, "stale_auths": 1},
])
def test_the_near_misses_do_not(changes):
    assert attention(healthy(**changes), SETTINGS, workers=["w@h"]) == []


def test_no_worker_and_an_unreachable_gateway_need_a_human_and_not_asking_says_nothing():
    found = healthy(broker={"queues": {"celery": 7}, "unacked": 0})
    assert attention(found, SETTINGS) == []
    assert attention(found, SETTINGS, workers=[], gateway_error="ConnectionError") == [
        "no worker answers a ping (7 messages waiting)", "the gateway cannot be reached: ConnectionError"]


def test_the_screen_over_the_in_memory_stores_own_snapshot():
    store = new_store()
    store.claim("p1", "sale", owner="w", lease_seconds=30, fields={"amount": "3.00"})
    store.transition("p1", "UNKNOWN", owner="w")
    found = dict(store.health.snapshot(stale_auth_age=SETTINGS.stale_auth_age),
                 broker={"queues": {"celery": 2}, "unacked": 1}, workers=["w1@h"],
                 gateway={"url": "http://gw/", "reachable": True, "error": None},
                 ages={"unknown": 5.0, "retrying": None, "needs_human": None, "non_final": 5.0, "outbox": None,
                       "open_auths": None})
    found["attention"] = attention(found, SETTINGS, workers=found["workers"])
    text = render(found)
    assert "UNKNOWN      1 (oldest 5s)" in text and "queue        2 waiting (celery=2), 1 unacked" in text
    assert "NEEDS ATTENTION:\n  - the sweep has never run" in text


def test_the_screen_shows_each_other_accounts_records_and_oldest_in_doubt():
    store = new_store()
    store.claim("s1", "sale", owner="w", lease_seconds=30, fields={"amount": "3.00", "merchant": "shop2"})
    store.transition("s1", "UNKNOWN", owner="w")
    store.clock.advance(5)
    found = dict(healthy(now=store.health.snapshot()["now"]), workers=["w1@h"],
                 gateway={"url": "http://gw/", "reachable": True, "error": None}, attention=[],
                 ages={"unknown": 5.0, "retrying": None, "needs_human": None, "non_final": 5.0, "outbox": None,
                       "open_auths": None}, merchants=store.health.merchants(["default", "shop2"]))
    assert "\n  shop2      UNKNOWN=1 (oldest UNKNOWN 5s, RETRYING -)\n" in render(found)


def test_redis_memory_reads_info_memory_and_tolerates_what_is_missing():
    from worker.ops.monitor import redis_memory

    info = {"used_memory": 123, "maxmemory": 0, "total_system_memory": 4096, "used_memory_human": "123B"}
    assert redis_memory(info) == {"used": 123, "maxmemory": 0, "total_system_memory": 4096}
    assert redis_memory(None) == {"used": 0, "maxmemory": 0, "total_system_memory": 0}
    assert redis_memory({"maxmemory": "bad"})["maxmemory"] == 0
