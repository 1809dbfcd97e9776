"""The time index of each merchant account other than ``default`` (``P idx:merchant:<name>:time``): written by the
claim of another account's new record only, removed by retention, read by ``list(merchant=...)``; records written
before it (no entry) are found in the shared index until a recount indexes them (docs/merchants.md)."""

from tests.contract.test_results_store import SALE_FIELDS, approve, claim


def shop(store, pid, merchant="shop2"):
    return claim(store, pid, fields=dict(SALE_FIELDS, merchant=merchant))


def ids(records):
    return [r["payment_id"] for r in records]


def merchant_keys(tier):
    return sorted(k for k in tier.client.scan_iter(match=tier.prefix + "idx:merchant:*"))


def test_only_another_accounts_new_record_is_put_in_its_accounts_index(store, tier):
    claim(store, "d1")
    store.transition("d1", "UNKNOWN", owner="w1", sent=True)
    store.transition("d1", "APPROVED", fields={"trans_id": "100000000090"}, expect={"UNKNOWN"}, owner="w1")
    assert merchant_keys(tier) == []  # a default payment: nothing more written, whatever its statuses
    shop(store, "s1")
    shop(store, "t1", merchant="shop3")
    assert tier.client.zrange(store.keys.merchant_time("shop2"), 0, -1) == ["s1"]
    assert tier.client.zrange(store.keys.merchant_time("shop3"), 0, -1) == ["t1"]
    score = tier.client.zscore(store.keys.merchant_time("shop2"), "s1")
    assert score == float(store.get("s1")["created_ts"])
    assert float(tier.client.get(store.keys.merchant_since)) <= score  # the first one's time, kept


def test_listing_an_account_reads_its_own_index_newest_first_with_the_filters(store, tier):
    shop(store, "s1")
    claim(store, "d1")
    tier.wait(0.002)
    shop(store, "s2")
    approve(store, "s2", "100000000091")
    tier.client.zrem(store.keys.time, "s1", "s2")  # not read from the shared index: still listed
    assert ids(store.list(merchant="shop2")) == ["s2", "s1"]
    assert ids(store.list(merchant="shop2", status="APPROVED")) == ["s2"]
    assert ids(store.list(merchant="shop2", limit=1)) == ["s2"]
    assert ids(store.list(merchant="shop3")) == []
    assert ids(store.list(merchant="default")) == ["d1"]  # default: the shared index, filtered


def test_records_written_before_the_index_are_listed_and_a_recount_indexes_them(store, tier):
    # as the previous version wrote them: the merchant field, the shared index only
    old = {"payment_id": "old1", "operation": "sale", "status": "APPROVED", "merchant": "shop2",
           "created_ts": "100.000", "updated_ts": "100.000"}
    tier.client.hset(store.keys.record("old1"), mapping=old)
    tier.client.zadd(store.keys.time, {"old1": 100.0})
    assert ids(store.list(merchant="shop2")) == ["old1"]  # no index at all yet: the shared one, filtered
    shop(store, "s1")
    assert ids(store.list(merchant="shop2")) == ["s1", "old1"]  # the index, then older records filtered
    store.health.recount()
    assert tier.client.get(store.keys.merchant_since) == "0"
    assert tier.client.zrange(store.keys.merchant_time("shop2"), 0, -1) == ["old1", "s1"]
    tier.client.zrem(store.keys.time, "old1", "s1")
    assert ids(store.list(merchant="shop2")) == ["s1", "old1"]  # from its own index only now


def test_retention_removes_a_record_from_its_accounts_index(store, tier):
    shop(store, "s1")
    approve(store, "s1", "100000000092")
    shop(store, "s2")
    tier.wait(0.005)
    cutoff = tier.server_now()
    tier.wait(0.005)
    due, _ = store.retention.due(cutoff)
    assert store.retention.forget(due, cutoff) == ["s1"]
    assert tier.client.zrange(store.keys.merchant_time("shop2"), 0, -1) == ["s2"]
    assert ids(store.list(merchant="shop2")) == ["s2"]


def test_another_accounts_records_are_counted_by_status_with_its_oldest_in_doubt(store, tier):
    claim(store, "d1")
    store.transition("d1", "UNKNOWN", owner="w1", sent=True)
    shop(store, "s1")
    shop(store, "s2")
    shop(store, "t1", merchant="shop3")
    assert store.health.merchants(["default", "shop2", "shop3"])["shop2"]["by_status"] == {"PENDING": 2}
    approve(store, "s1", "100000000093")
    store.transition("s2", "UNKNOWN", owner="w1", sent=True)
    store.transition("t1", "RETRYING", owner="w1", sent=False)
    found = store.health.merchants(["default", "shop2", "shop3"])
    assert sorted(found) == ["shop2", "shop3"]  # default's: the shared counts minus these
    assert found["shop2"]["by_status"] == {"APPROVED": 1, "UNKNOWN": 1}
    assert found["shop2"]["unknown"] == {"count": 1, "oldest": float(store.get("s2")["created_ts"])}
    assert found["shop2"]["retrying"] == {"count": 0, "oldest": None}
    assert found["shop3"]["by_status"] == {"RETRYING": 1} and found["shop3"]["retrying"]["count"] == 1
    assert store.health.snapshot()["by_status"] == {"APPROVED": 1, "UNKNOWN": 2, "RETRYING": 1}  # all accounts
    # a void of shop2's sale: the sale (VOIDED) and the void (APPROVED) counted under shop2
    claim(store, "v1", op="void", fields={"target": "100000000093", "parent": "s1", "merchant": "shop2"})
    store.transition("v1", "APPROVED", fields={"trans_id": "100000000094"}, expect={"PENDING"}, owner="w1",
                     reflect=True)
    assert store.health.merchants(["shop2"])["shop2"]["by_status"] == {"APPROVED": 1, "VOIDED": 1, "UNKNOWN": 1}
    expected = store.health.merchants(["shop2", "shop3"])
    for key in tier.client.scan_iter(match=tier.prefix + "idx:merchant:*"):
        if not key.endswith(":time"):
            tier.client.delete(key)
    tier.client.hset(store.keys.merchant_counts("shop2"), "DECLINED", 7)  # a count gone wrong
    store.health.recount()
    assert store.health.merchants(["shop2", "shop3"]) == expected


def test_retention_takes_a_removed_record_off_its_accounts_count(store, tier):
    shop(store, "s1")
    approve(store, "s1", "100000000095")
    tier.wait(0.005)
    cutoff = tier.server_now()
    tier.wait(0.005)
    due, _ = store.retention.due(cutoff)
    assert store.retention.forget(due, cutoff) == ["s1"]
    assert store.health.merchants(["shop2"])["shop2"]["by_status"] == {}
