"""A platform charging for its sub-merchants (PLATFORM_MERCHANT_ID, BluePay's C# library 3.0.8): our client against our
sandbox over HTTP, the sandbox started with the account's sub-merchants."""
from __future__ import annotations

import uuid
from datetime import date, timedelta

import pytest

from tests.support.env import CUSTOMER, TEST_CARD
from tests.support.sandbox import running_sandbox
from worker.gateway import BluePayClient, Rejected, RetryPolicy


@pytest.fixture(scope="module")
def sandbox():
    with running_sandbox(extra_args=["--platform-merchant-ids", "SUB1,SUB2"]) as sb:
        yield sb


def client_for(sandbox, platform_merchant_id: str) -> BluePayClient:
    return BluePayClient(account_id=sandbox.account_id, secret_key=sandbox.secret_key, base_url=sandbox.interfaces_url,
                         platform_merchant_id=platform_merchant_id, connect_timeout=1.0, read_timeout=2.0,
                         retry_policy=RetryPolicy(max_attempts=1, max_seconds=0))


def test_a_sub_merchants_sale_stq_and_void(sandbox):
    client, order_id = client_for(sandbox, "SUB1"), f"pm-{uuid.uuid4().hex}"
    sold = client.sale("3.00", TEST_CARD, CUSTOMER, order_id=order_id)
    assert sold.approved
    (entry,) = sandbox.ledger(order_id=order_id)
    assert entry["platform_merchant_id"] == "SUB1" and entry["id"] == sold.trans_id
    found = client.query(order_id=order_id)
    assert found is not None and found.trans_id == sold.trans_id
    assert client.void(sold.trans_id, order_id=f"{order_id}-v").approved
    today = date.today()
    with client.report(today - timedelta(days=1), today + timedelta(days=2)) as report:
        assert sold.trans_id in {row.trans_id for row in report}


def test_the_account_itself_and_an_unknown_sub_merchant(sandbox):
    assert client_for(sandbox, "").sale("3.00", TEST_CARD, order_id=f"pm-{uuid.uuid4().hex}").approved
    order_id = f"pm-{uuid.uuid4().hex}"
    with pytest.raises(Rejected, match="SECURITY ERROR"):
        client_for(sandbox, "SUB9").sale("3.00", TEST_CARD, order_id=order_id)
    assert sandbox.ledger(order_id=order_id) == []
