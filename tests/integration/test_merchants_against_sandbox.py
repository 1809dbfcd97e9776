"""Two merchant accounts at one gateway (our sandbox serving both, over HTTP) and one Redis: each account's requests,
stq lookups and daily reports are its own, and the settlement reconciliation compares each report with that account's
records only (another merchant's records are no ``ours_only``)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid

import pytest

from tests.support.env import CUSTOMER, INTEGRATION_REDIS_URL, TEST_CARD, TEST_CARD_KEY
from tests.support.redis_db import redis_or_skip
from tests.support.sandbox import running_sandbox
from worker.config import Settings, parse_accounts
from worker.gateway import OutcomeUnknown
from worker.merchants import DEFAULT
from worker.payments.decisions import reconcile_days
from worker.services import Services

SHOP2_ID, SHOP2_SECRET = "100000000002", "SHOP2SECRETKEY00000000000000000"


@pytest.fixture(scope="module")
def sandbox():
    with running_sandbox(duplicate_window=0, extra_args=["--accounts", json.dumps({SHOP2_ID: SHOP2_SECRET})]) as sb:
        yield sb


@pytest.fixture
def svc(sandbox, prefix):
    base = dataclasses.replace(Settings(), redis_url=INTEGRATION_REDIS_URL, key_prefix=prefix,
                               bluepay_account_id=sandbox.account_id, bluepay_secret_key=sandbox.secret_key,
                               bluepay_url=sandbox.interfaces_url, card_key=TEST_CARD_KEY, retry_attempts=1)
    accounts = parse_accounts(json.dumps({"shop2": {"account_id": SHOP2_ID, "secret_key": SHOP2_SECRET}}),
                              base=base.account(DEFAULT), duration=lambda v, n: float(v))  # type: ignore[arg-type]
    return Services(dataclasses.replace(base, accounts=accounts).check())


@pytest.fixture
def prefix():
    p = f"test:merchants:{uuid.uuid4().hex}:"
    yield p
    with redis_or_skip(INTEGRATION_REDIS_URL) as client:
        keys = list(client.scan_iter(match=p + "*", count=1000))
        if keys:
            client.delete(*keys)


def sale(flow, payment_id):
    return flow.charge("sale", payment_id, amount="3.00", card=dict(TEST_CARD), customer=CUSTOMER)


def test_each_account_sees_its_own_and_reconciles_its_own(sandbox, svc):
    ours, theirs = f"m1-{uuid.uuid4().hex}", f"m2-{uuid.uuid4().hex}"
    assert sale(svc.flow, ours)["status"] == "APPROVED"
    shop2 = sale(svc.flow_for("shop2"), theirs)
    assert shop2["status"] == "APPROVED" and shop2["merchant"] == "shop2"
    (entry,) = sandbox.ledger(order_id=theirs)
    assert entry["account"] == SHOP2_ID
    assert svc.gateway.query_all(order_id=theirs, days_back=1) == []  # the default account's stq: not its row
    assert svc.gateway_for("shop2").query(order_id=theirs, days_back=1).trans_id == shop2["trans_id"]
    today = dt.datetime.now(dt.UTC).date()
    results = {r.merchant: r for r in reconcile_days(svc, today, today)}
    assert set(results) == {DEFAULT, "shop2"}
    for merchant, result in results.items():
        assert result.differences == [], (merchant, [f.as_dict() for f in result.differences])
    assert results["shop2"].records == 1 and results["shop2"].summary()["merchant"] == "shop2"


def test_an_account_with_another_accounts_secret_is_refused(sandbox, svc):
    from worker.gateway import BluePayClient, RetryPolicy

    wrong = BluePayClient(account_id=SHOP2_ID, secret_key=sandbox.secret_key, base_url=sandbox.interfaces_url,
                          retry_policy=RetryPolicy(max_attempts=1, max_seconds=0))
    order_id = f"m2-{uuid.uuid4().hex}"
    with pytest.raises(OutcomeUnknown, match="SECURITY ERROR"):
        wrong.sale("3.00", TEST_CARD, order_id=order_id)
    assert sandbox.ledger(order_id=order_id) == []
