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
    assert merchant_keys(tier) == []  # a default payment: nothing more written
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
