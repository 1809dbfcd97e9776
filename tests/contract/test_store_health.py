"""What the metrics exporter and ``payments status`` read (``store.health``), on both stores: records by status
follow every transition, a reflection on the original and retention's removal; UNKNOWN, RETRYING and needs_human
are indexed with their oldest; the outbox's re-publications are counted; the last sweep is kept."""

from tests.contract.test_results_store import approve, claim


def counts(store):
    return store.health.snapshot()["by_status"]


def test_records_by_status_follow_every_transition_and_the_reflection_on_the_original(store, tier):
    claim(store, "s1")
    claim(store, "s2")
    assert counts(store) == {"PENDING": 2}
    approve(store, "s1", "100000000061")
    store.transition("s2", "DECLINED", fields={"message": "Declined"}, expect={"PENDING"}, owner="w1")
    assert counts(store) == {"APPROVED": 1, "DECLINED": 1}
    claim(store, "v1", op="void", fields={"target": "100000000061", "parent": "s1"})
    store.transition("v1", "APPROVED", fields={"trans_id": "100000000062"}, expect={"PENDING"}, owner="w1",
                     reflect=True)
    # the void is APPROVED, the sale it voided VOIDED: each record counted once, under its status now
    assert counts(store) == {"APPROVED": 1, "DECLINED": 1, "VOIDED": 1}
    claim(store, "s1")  # a final record claimed again: nothing changes
    assert sum(counts(store).values()) == 3


def test_unknown_retrying_and_needs_human_are_indexed_with_their_oldest(store, tier):
    claim(store, "u1")
    store.transition("u1", "UNKNOWN", owner="w1", sent=True)
    tier.wait(0.05)
    claim(store, "u2")
    store.transition("u2", "UNKNOWN", owner="w1")
    claim(store, "r1")
    store.transition("r1", "RETRYING", owner="w1", sent=False)
    snap = store.health.snapshot()
    assert tier.index("unknown") == ["u1", "u2"] and tier.index("retrying") == ["r1"]
    assert snap["unknown"]["count"] == 2 and snap["retrying"]["count"] == 1
    assert snap["unknown"]["oldest"] == float(store.get("u1")["created_ts"])
    assert snap["non_final"]["count"] == 3 and snap["needs_human"] == {"count": 0, "oldest": None}
    assert snap["by_status"] == {"UNKNOWN": 2, "RETRYING": 1}
    # the sweep gives up on u1: final, for a human
    claim(store, "u1", owner="w2", mode="reconcile")
    store.transition("u1", "ERROR", owner="w2", fields={"message": "check by hand", "needs_human": "1"})
    snap = store.health.snapshot()
    assert tier.index("unknown") == ["u2"] and tier.index("needs_human") == ["u1"]
    assert snap["needs_human"]["count"] == 1 and snap["by_status"] == {"UNKNOWN": 1, "RETRYING": 1, "ERROR": 1}


def test_retention_removing_a_record_counts_it_out(store, tier):
    claim(store, "old")
    store.transition("old", "DECLINED", fields={"message": "Declined"}, expect={"PENDING"}, owner="w1")
    tier.wait(0.05)
    due, _ = store.retention.due(tier.server_now())
    assert store.retention.forget(due, tier.server_now()) == ["old"]
    assert counts(store) == {}


def test_open_auths_outbox_and_stale_auths(store, tier):
    claim(store, "a1", op="auth")
    approve(store, "a1", "100000000071")
    store.outbox.put("t1", {"name": "payments.sale"})
    tier.wait(0.05)
    snap = store.health.snapshot(stale_auth_age=0.01)
    assert snap["open_auths"]["count"] == 1 and snap["stale_auths"] == 1
    # an entry's age starts when a sweep first sees it
    assert snap["outbox"] == {"count": 1, "oldest": None}
    assert store.outbox.stale(3600) == []
    snap = store.health.snapshot(stale_auth_age=3600)
    assert snap["outbox"]["count"] == 1 and snap["now"] - 5 <= snap["outbox"]["oldest"] <= snap["now"]
    assert snap["stale_auths"] == 0


def test_outbox_republications_and_give_ups_are_counted(store):
    store.outbox.put("t1", {"name": "payments.sale"})
    store.outbox.put("t2", {"name": "payments.sale"})
    (task_id, entry), _ = store.outbox.stale(-1)
    store.outbox.republished(task_id, entry)
    store.outbox.give_up("t2")
    snap = store.health.snapshot()
    assert snap["stats"] == {"outbox_republished": 1, "outbox_given_up": 1}
    assert snap["outbox"]["count"] == 1


def test_the_last_sweep_is_kept_with_when_it_ran(store, tier):
    assert store.health.last_sweep() is None and store.health.snapshot()["sweep"] is None
    started = tier.server_now()
    store.health.record_sweep({"ran": True, "reconcile_adopted": 2}, started=started)
    last = store.health.last_sweep()
    assert last["reconcile_adopted"] == 2 and last["started"] == started
    assert last["finished"] >= started and last["seconds"] >= 0
    assert store.health.snapshot()["sweep"] == last


def test_recount_rebuilds_what_an_older_version_did_not_keep(store, tier):
    claim(store, "a")
    approve(store, "a", "100000000081")
    claim(store, "u")
    store.transition("u", "UNKNOWN", owner="w1")
    claim(store, "h")
    store.transition("h", "ERROR", owner="w1", fields={"message": "check by hand", "needs_human": "1"})
    expected = store.health.snapshot()
    # as an older version left them: no counts, no indexes of money in doubt; a count gone wrong
    tier.wipe_health_indexes()
    assert store.health.snapshot()["by_status"] != expected["by_status"] and tier.index("unknown") == []
    assert store.health.recount(batch=2) == {"APPROVED": 1, "UNKNOWN": 1, "ERROR": 1}
    again = store.health.snapshot()
    for name in ("by_status", "unknown", "needs_human", "retrying"):
        assert again[name] == expected[name], name
