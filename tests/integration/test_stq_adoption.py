"""stq adoption against the sandbox over HTTP, with the real flow, client and Redis store: only a row that is provably
the operation's own is adopted (issue 24, item 2). A row under our ORDER_ID that shows another amount or another
card (here booked in the sandbox's console, as a person in BluePay's could) is "cannot tell": the operation stays
UNKNOWN, is never resent and never records another transaction as its own."""
from __future__ import annotations

import time
import uuid

import pytest

from tests.support.env import INTEGRATION_REDIS_URL, TEST_CARD_KEY
from tests.support.redis_db import redis_or_skip
from tests.support.sandbox import running_sandbox
from worker.gateway import BluePayClient, RetryPolicy
from worker.payments.flow import GatewayOutage, PaymentFlow
from worker.store import ResultsStore

CARD = {"number": "4111111111111111", "expire": "1230", "cvv2": "123"}
HORIZON = 0.5


@pytest.fixture(scope="module")
def client():
    with redis_or_skip(INTEGRATION_REDIS_URL) as r:
        yield r


@pytest.fixture
def world(client):
    prefix = f"test:adopt:{uuid.uuid4().hex}:"
    with running_sandbox(duplicate_window=0) as sb:
        store = ResultsStore(client, prefix=prefix)
        gateway = BluePayClient(account_id=sb.account_id, secret_key=sb.secret_key, base_url=sb.interfaces_url,
                                retry_policy=RetryPolicy(max_attempts=2, max_seconds=5))
        yield sb, store, PaymentFlow(store=store, gateway=gateway, card_keys=[TEST_CARD_KEY], commit_horizon=HORIZON)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)


def redelivered_sale(flow, key):
    """A delivery of a message delivered before: stq first, then (absent past the horizon) a send."""
    return flow.charge("sale", key, amount="3.00", card=dict(CARD), redelivered=True)


@pytest.mark.parametrize("booked", [
    {"amount": "7.00"},                                             # another amount under our ORDER_ID
    {"amount": "3.00", "payment_account": "xxxxxxxxxxxx4242"},      # another card
    {"amount": "3.00", "trans_type": "AUTH"},                       # another type
], ids=["other-amount", "other-card", "other-type"])
def test_a_row_under_our_order_id_that_is_not_ours_is_never_adopted_nor_taken_for_absent(world, booked):
    sb, store, flow = world
    key = f"adopt-{uuid.uuid4().hex[:10]}"
    foreign = sb.book(order_id=key, **booked)
    for _ in range(2):  # within the horizon, then past it: "absent" would mean sending it
        with pytest.raises(GatewayOutage) as parked:
            redelivered_sale(flow, key)
        assert parked.value.parked_as == "UNKNOWN"
        record = store.get(key)
        assert record["status"] == "UNKNOWN" and not record.get("trans_id") and "stq" in record["message"]
        time.sleep(HORIZON + 0.2)
    assert [e["id"] for e in sb.ledger(order_id=key)] == [foreign["id"]]  # nothing was sent
    assert not store.get(key).get("not_charged")


def test_a_row_provably_ours_is_adopted(world):
    sb, _store, flow = world
    key = f"adopt-{uuid.uuid4().hex[:10]}"
    ours = sb.book(order_id=key, amount="3.00")  # what an earlier delivery's request left at the gateway
    outcome = redelivered_sale(flow, key)
    assert (outcome["status"], outcome["trans_id"], outcome["reconciled"]) == ("APPROVED", ours["id"], "stq")
    assert len(sb.ledger(order_id=key)) == 1


def test_a_refund_without_an_amount_records_what_the_gateway_refunded(world):
    """Issue 24, item 4: 1.00 of a settled 3.00 sale was refunded at the gateway before (not through this store); a
    refund without an amount takes the 2.00 left. The store records the reply's AMOUNT, not its own 3.00 - 0."""
    sb, store, flow = world
    sold = flow.charge("sale", f"sale-{uuid.uuid4().hex[:10]}", amount="3.00", card=dict(CARD))
    sb.settle([sold["trans_id"]])
    assert flow.gateway.refund(sold["trans_id"], "1.00", order_id=f"elsewhere-{uuid.uuid4().hex[:8]}").approved
    key = f"refund-{uuid.uuid4().hex[:10]}"
    refunded = flow.follow_up("refund", key, trans_id=sold["trans_id"])
    assert refunded["status"] == "APPROVED" and refunded["amount"] == "2.00"
    sale = store.get(sold["payment_id"])  # the store counts the refunds it recorded, each as the gateway did it
    assert (sale["status"], sale["refunded_amount"]) == ("PARTIALLY_REFUNDED", "2.00")
