"""The fence end to end without workers (issue 24, item 1): the real flow, the real Redis store and the real client
against the sandbox over HTTP. Each attempt carries TRANS_SUBMIT_TIMESTAMP from Redis time; a gateway whose clock
is far ahead refuses every one as TRANSACTION TOO OLD, which is "not charged, this attempt": the operation is parked
RETRYING (provably unsent), never UNKNOWN and never a recorded ERROR, and nothing is in the ledger."""
from __future__ import annotations

import uuid

import pytest

from tests.support.env import CUSTOMER, TEST_CARD, TEST_CARD_KEY
from tests.support.sandbox import running_sandbox
from worker.gateway import BluePayClient, RetryPolicy
from worker.payments.flow import GatewayOutage, PaymentFlow
from worker.store import ResultsStore


def flow_for(sandbox, client, prefix) -> PaymentFlow:
    gateway = BluePayClient(account_id=sandbox.account_id, secret_key=sandbox.secret_key,
                            base_url=sandbox.interfaces_url, connect_timeout=1.0, read_timeout=1.5,
                            retry_policy=RetryPolicy(max_attempts=3, max_seconds=5.0, initial_wait=0.05,
                                                     max_wait=0.2))
    return PaymentFlow(ResultsStore(client, prefix=prefix), gateway, [TEST_CARD_KEY], lease_seconds=10.0,
                       commit_horizon=5.0, expire_minutes=1, skew_margin=0.0)


def test_too_old_at_a_gateway_whose_clock_runs_ahead_is_parked_as_not_sent(client, prefix):
    with running_sandbox(extra_args=("--clock-offset", "120")) as sandbox:
        flow = flow_for(sandbox, client, prefix)
        key = f"fence-{uuid.uuid4().hex}"
        with pytest.raises(GatewayOutage) as parked:
            flow.charge("sale", key, amount="3.00", card=dict(TEST_CARD), customer=CUSTOMER)
        assert parked.value.parked_as == "RETRYING"
        record = flow.store.get(key)
        assert record is not None
        assert record["status"] == "RETRYING" and not record.get("sent_ts")  # provably unsent
        assert "TRANSACTION TOO OLD" in str(record["message"])
        assert sandbox.ledger(order_id=key) == [] and sandbox.stats()["requests"]["bp10emu"] == 3


def test_a_fresh_stamp_is_accepted_and_charged_once(client, prefix):
    with running_sandbox() as sandbox:
        flow = flow_for(sandbox, client, prefix)
        key = f"fence-{uuid.uuid4().hex}"
        outcome = flow.charge("sale", key, amount="3.00", card=dict(TEST_CARD), customer=CUSTOMER)
        assert outcome["status"] == "APPROVED"
        assert len(sandbox.ledger(order_id=key)) == 1
        record = flow.store.get(key)
        assert record is not None and float(str(record["fence_until"])) > float(str(record["created_ts"])) + 119
