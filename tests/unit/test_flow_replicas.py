"""REDIS_MIN_REPLICAS_ACK in the flow: a claim or attempt-journal entry no replica acknowledged in time is never
followed by a gateway send; the operation is parked and re-queued (ReplicasBehind), and a later delivery whose
writes are acknowledged charges it once. The in-memory store plays a primary whose replicas lag (a fake, no Redis).
"""
from __future__ import annotations

import uuid

import pytest

from tests.support.env import TEST_CARD_KEY
from tests.support.fake_gateway import FakeGateway, reply
from tests.support.redis_store import StoreUnderTest, new_store
from worker.payments.flow import GatewayOutage, PaymentFlow, ReplicasBehind
from worker.redis_connections import ReplicaAckTimeout

CARD = {"number": "4111111111111111", "expire": "1230", "cvv2": "123"}


class LaggingReplicas(StoreUnderTest):
    """The next ``claims``/``journals`` writes that move money are not acknowledged by a replica: the write is made
    (as on a real primary) and ReplicaAckTimeout is raised, as worker.store does after WAIT."""

    def __init__(self, client, *, claims: int = 0, journals: int = 0, **kw):
        super().__init__(client, **kw)
        self.behind = {"claim": claims, "attempt journal": journals}

    def _lagging(self, what: str) -> None:
        if self.behind[what] > 0:
            self.behind[what] -= 1
            raise ReplicaAckTimeout(what, 1, 0, 100)

    def claim(self, *args, **kwargs):
        claim = super().claim(*args, **kwargs)
        if claim.kind in ("claimed", "resumed"):
            self._lagging("claim")
        return claim

    def journal(self, *args, **kwargs):
        noted = super().journal(*args, **kwargs)
        if noted is not None:
            self._lagging("attempt journal")
        return noted


def pid() -> str:
    return "pay-" + uuid.uuid4().hex[:12].translate(str.maketrans("0123456789", "ghijklmnop"))


def flow(store, gateway):
    return PaymentFlow(store, gateway, [TEST_CARD_KEY], 30.0, 60.0, 60.0, 30.0)


def test_an_unacknowledged_claim_sends_nothing_and_parks_then_the_next_delivery_charges_once():
    store = new_store(LaggingReplicas, claims=1)
    key = pid()
    gw = FakeGateway([reply(order_id=key)])
    with pytest.raises(ReplicasBehind) as info:
        flow(store, gw).charge("sale", key, amount="3.00", card=dict(CARD))
    assert isinstance(info.value, GatewayOutage) and info.value.parked_as == "RETRYING"
    record = store.get(key)
    assert gw.sends == [] and record is not None and record["status"] == "RETRYING"
    outcome = flow(store, gw).charge("sale", key, amount="3.00", card=dict(CARD))
    assert outcome["status"] == "APPROVED" and len(gw.sends) == 1


def test_an_unacknowledged_journal_entry_sends_nothing_and_parks():
    store = new_store(LaggingReplicas, claims=1, journals=1)
    key = pid()
    gw = FakeGateway([reply(order_id=key)])
    with pytest.raises(ReplicasBehind):
        flow(store, gw).charge("sale", key, amount="3.00", card=dict(CARD))
    # Delivery 2 resumes the parked record; its journal entry (before the send) is not acknowledged either.
    with pytest.raises(ReplicasBehind) as info:
        flow(store, gw).charge("sale", key, amount="3.00", card=dict(CARD), redelivered=False)
    assert gw.sends == [] and info.value.parked_as == "RETRYING"
    assert flow(store, gw).charge("sale", key, amount="3.00", card=dict(CARD))["status"] == "APPROVED"
    assert len(gw.sends) == 1
