"""The AVS/CVV2 policy (docs/tokens.md) with the real flow, client and Redis store against the sandbox over HTTP: an
approval whose CVV2 result the policy lists is voided at once at the gateway, and the store says why. (The sandbox
answers CVV2 ``M`` when a CVV2 was sent and ``_`` otherwise, AVS ``_``: a policy listing ``M`` makes it happen.)"""
from __future__ import annotations

import uuid

import pytest

from tests.support.env import INTEGRATION_REDIS_URL, TEST_CARD, TEST_CARD_KEY
from tests.support.redis_db import redis_or_skip
from tests.support.sandbox import running_sandbox
from worker.gateway import BluePayClient, RetryPolicy
from worker.payments.flow import PaymentFlow
from worker.payments.policy import ChargePolicy
from worker.store import ResultsStore


@pytest.fixture(scope="module")
def client():
    with redis_or_skip(INTEGRATION_REDIS_URL) as r:
        yield r


@pytest.fixture(scope="module")
def world(client):
    prefix = f"test:policy:{uuid.uuid4().hex}:"
    with running_sandbox(duplicate_window=0) as sb:
        store = ResultsStore(client, prefix=prefix)
        gateway = BluePayClient(account_id=sb.account_id, secret_key=sb.secret_key, base_url=sb.interfaces_url,
                                retry_policy=RetryPolicy(max_attempts=2, max_seconds=5))
        flow = PaymentFlow(store=store, gateway=gateway, card_keys=[TEST_CARD_KEY], commit_horizon=0.5,
                           policy=ChargePolicy(cvv2=frozenset({"M"})))
        yield sb, store, flow
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)


def test_an_approval_the_policy_refuses_is_voided_at_the_gateway(world):
    sb, store, flow = world
    key = f"pol-{uuid.uuid4().hex}"
    outcome = flow.charge("sale", key, amount="3.00", card=dict(TEST_CARD))
    assert outcome["status"] == "VOIDED" and outcome["declined_by_policy"] == "CVV2 M" and outcome["cvv2"] == "M"
    [sale] = sb.ledger(order_id=key)
    [void] = sb.ledger(order_id=f"{key}:void")
    assert sale["voided"] and void["trans_type"] == "VOID" and void["origin"] == sale["id"]
    assert (store.get(f"{key}:void") or {})["status"] == "APPROVED"


def test_an_approval_the_policy_accepts_stands(world):
    sb, _store, flow = world
    key = f"pol-{uuid.uuid4().hex}"
    card = {k: v for k, v in TEST_CARD.items() if k != "cvv2"}  # no CVV2 sent: the sandbox answers "_"
    outcome = flow.charge("sale", key, amount="5.00", card=card)
    assert outcome["status"] == "APPROVED" and "declined_by_policy" not in outcome
    assert [e["trans_type"] for e in sb.ledger(order_id=key)] == ["SALE"]
