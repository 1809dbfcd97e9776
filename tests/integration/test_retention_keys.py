"""Idempotency keys after retention, with real parts: the flow over the real Redis store (database 9, env
TEST_REDIS_URL), the real client against the sandbox over HTTP with its duplicate rule off (the gateway would not
save us from a second charge), and a real archive (SQLite, and PostgreSQL when one answers at TEST_ARCHIVE_PG_URL).

A key whose record the sweep's retention moved to the archive is still bound to its request: sent again, the same
request gets its stored outcome and the gateway sees nothing; a different one is an IdempotencyMismatch. The key
index lives in Redis, so this holds with the archive down too. And the archive keeps every operation run under one
key (a sale, then a void, then a refund, each archived in turn), never only the last.
"""
from __future__ import annotations

import pytest

from tests.support.archive_db import KINDS, archive_url
from tests.support.env import INTEGRATION_REDIS_URL, TEST_CARD_KEY
from tests.support.sandbox import running_sandbox
from worker.archive import Archive
from worker.archive.retention import archive_older_than
from worker.config import Settings
from worker.payments.sweep import run_sweep
from worker.services import Services
from worker.store import ResultsStore

DAY = 86400.0
CARD = {"number": "4111111111111111", "expire": "1230", "cvv2": "123"}
OTHER_CARD = {"number": "4012888888881881", "expire": "1230", "cvv2": "123"}
CUSTOMER = {"name1": "Bob", "name2": "Tester", "addr1": "123 Test St.", "city": "Testville", "state": "IL",
            "zipcode": "54321", "country": "USA"}


@pytest.fixture(params=KINDS)
def url(request, tmp_path):
    with archive_url(request.param, tmp_path) as made:
        yield made


@pytest.fixture(scope="module")
def sandbox():
    with running_sandbox(duplicate_window=0) as sb:  # duplicate scrubbing off: only our claim stands in the way
        yield sb


def services(prefix: str, url: str, client, sandbox) -> Services:
    svc = Services(Settings(redis_url=INTEGRATION_REDIS_URL, key_prefix=prefix, archive_url_setting=url,
                            bluepay_account_id=sandbox.account_id, bluepay_secret_key=sandbox.secret_key,
                            bluepay_url=sandbox.interfaces_url, card_key=TEST_CARD_KEY, retention=1 * DAY,
                            stale_auth_age=400 * DAY, reconcile_after=1000 * DAY))
    svc.store = ResultsStore(client, prefix=prefix)
    return svc


def test_a_key_sent_again_after_retention_gets_its_stored_outcome_and_another_request_is_a_mismatch(
        client, prefix, url, sandbox):
    svc = services(prefix, url, client, sandbox)
    key = f"order-{prefix.split(':')[2][:12]}"
    first = svc.flow.charge("sale", key, amount="3.00", card=dict(CARD), customer=CUSTOMER)
    assert first["status"] == "APPROVED" and sandbox.charges(key) == 1
    # three days later (the review's case: a 1-day retention), the sweep has moved the record to the archive
    report = run_sweep(svc, now=svc.store.now() + 3 * DAY)
    assert report.get("retention_archived") == 1, report
    assert svc.store.get(key) is None and (svc.archive.get(key) or {}).get("trans_id") == first["trans_id"]
    svc.archive.close()
    svc.archive = Archive("postgresql+psycopg://nobody@127.0.0.1:1/none")  # and the archive is down: no matter

    again = svc.flow.charge("sale", key, amount="3.00", card=dict(CARD), customer=CUSTOMER)
    assert again == first  # the stored outcome, not a second charge
    for amount, card in (("5.00", CARD), ("3.00", OTHER_CARD)):
        other = svc.flow.charge("sale", key, amount=amount, card=dict(card), customer=CUSTOMER)
        assert other["status"] == "ERROR" and other["error_class"] == "IdempotencyMismatch", other
    refused = svc.flow.follow_up("void", key, trans_id=first["trans_id"])
    assert refused["error_class"] == "IdempotencyMismatch"
    assert sandbox.charges(key) == 1 and len(sandbox.ledger(order_id=key)) == 1  # the gateway saw one request
    assert svc.store.get(key) is None  # nothing recreated in Redis


def test_the_archive_keeps_every_operation_run_under_one_key(client, prefix, url, sandbox):
    """Once a key's index entry is gone (here: a key retention already past when each record leaves), the key may
    run again: a sale, a void, a refund under one key, each archived in turn, are three rows, each with its
    history."""
    svc = services(prefix, url, client, sandbox)
    store, archive = svc.store, svc.archive
    kept: list[dict] = []
    for op, trans_id in (("sale", "100000000001"), ("void", "100000000002"), ("refund", "100000000003")):
        claimed = store.claim("k1", op, fields={"amount": "3.00", "target": "" if op == "sale" else "100000000001"},
                              owner="w", lease_seconds=30)
        assert claimed.kind == "claimed", (op, claimed.kind)
        store.transition("k1", "APPROVED" if op == "sale" else "ERROR", owner="w", expect="PENDING",
                         fields={"trans_id": trans_id, "message": op})
        kept.append(store.get("k1") or {})
        counts = archive_older_than(store, archive, store.now() + 1, key_retention=0)
        assert counts["archived"] == 1 and store.get("k1") is None
    assert archive.operations_of("k1") == kept
    assert [r["operation"] for r in archive.operations_of("k1")] == ["sale", "void", "refund"]
    assert archive.counts()["operations"] == 3
    archive.close()
