"""Every attempt is fenced (issue 24, item 1): the flow's fence runs before each attempt of the client's retry loop,
so a holder that stalled inside the loop past its lease sends nothing more, and a takeover of an attempt that never
reported waits until no stamped attempt can still be accepted by the gateway. The real client (real retry loop) over a
scripted transport, the in-memory store on a fake clock."""
from __future__ import annotations

import socket

import pytest

from tests.support.fake_gateway import FakeGateway, reply
from tests.support.redis_store import StoreUnderTest, new_store
from worker.gateway import BluePayClient, NotSent, RetryPolicy, expiry
from worker.gateway.transport import HttpReply
from worker.payments.flow import PREFENCE_FRESH, GatewayOutage, PaymentFlow

from . import gateway_replies as R
from .test_flow import CARD, CUSTOMER, KEY, _dead_pid, new_id

LEASE = 30.0


class StallingTransport:
    """The first attempt stalls (the process is frozen) past the lease while another worker takes the operation
    over, then fails as "not sent" (connection refused): the retry loop wants to try again."""

    def __init__(self, store, clock, pid):
        self.store, self.clock, self.pid = store, clock, pid
        self.calls: list[dict] = []

    def post(self, url, data):
        self.calls.append(dict(data))
        if len(self.calls) == 1:
            self.clock.advance(LEASE + 5)
            taken = self.store.claim(self.pid, "sale", owner="other-host:1:taker", lease_seconds=LEASE)
            assert taken.kind == "resumed"
            raise NotSent("connection refused")
        return HttpReply(302, R.location(R.approved()), "")


def flow_over(store, transport, **kw):
    client = BluePayClient(account_id=R.ACCOUNT, secret_key=R.SECRET, transport=transport, sleep=lambda s: None,
                           retry_policy=RetryPolicy(max_attempts=4, max_seconds=60.0))
    return PaymentFlow(store, client, [KEY], LEASE, 60.0, 60.0, 30.0, **kw)


def test_a_lease_lost_inside_the_retry_loop_stops_its_next_attempt(store, clock):
    pid = new_id()
    transport = StallingTransport(store, clock, pid)
    outcome = flow_over(store, transport).charge("sale", pid, amount="3.00", card=dict(CARD), customer=CUSTOMER)
    assert len(transport.calls) == 1  # the retry after the stall was never sent
    record = store.get(pid)
    assert record["lease_owner"] == "other-host:1:taker" and record["status"] == "PENDING"
    assert outcome["status"] not in ("APPROVED", "DECLINED")  # the stalled delivery recorded nothing


def test_the_takeover_of_a_stalled_attempt_waits_until_its_stamp_cannot_be_accepted(store, clock):
    pid = new_id()
    transport = StallingTransport(store, clock, pid)
    flow_over(store, transport, expire_minutes=2, skew_margin=30.0).charge(
        "sale", pid, amount="3.00", card=dict(CARD), customer=CUSTOMER)
    stamp = transport.calls[0]["TRANS_SUBMIT_TIMESTAMP"]
    assert transport.calls[0]["TRANS_EXPIRE_PERIOD"] == "2 MINUTES"
    stamped_at = clock.now - (LEASE + 5)
    assert stamp == expiry.submit_stamp(stamped_at)
    # The taker counts the stalled attempt as possibly sent until it expires at the gateway (+ a minute, + margin).
    assert float(store.get(pid)["sent_ts"]) >= expiry.accepted_until(stamped_at, 2, 30.0) - 0.001


def test_a_taker_does_not_send_before_the_stalled_attempt_expired(store, clock):
    pid = new_id()
    flow_over(store, StallingTransport(store, clock, pid)).charge(
        "sale", pid, amount="3.00", card=dict(CARD), customer=CUSTOMER)
    store.transition(pid, "UNKNOWN", owner="other-host:1:taker", sent=None)  # the taker parks it; a redelivery:
    clock.advance(61)  # past the old rule (lease end + commit horizon), well before the stamp's expiry
    gw = FakeGateway(script=[reply(order_id=pid)], stq=[None])
    with pytest.raises(GatewayOutage) as parked:
        PaymentFlow(store, gw, [KEY], LEASE, 60.0, 60.0, 30.0).charge(
            "sale", pid, amount="3.00", card=dict(CARD), customer=CUSTOMER, redelivered=True)
    assert gw.sends == [] and parked.value.parked_as == "UNKNOWN"


def test_a_dead_holder_is_not_waited_for_past_the_commit_horizon(store, clock):
    """A holder whose process is known dead sends nothing later: only the commit horizon counts (as before)."""
    pid = new_id()
    gw = FakeGateway(script=[lambda call: (_ for _ in ()).throw(SystemExit())])
    with pytest.raises(SystemExit):
        PaymentFlow(store, gw, [KEY], LEASE, 60.0, 60.0, 30.0).charge(
            "sale", pid, amount="3.00", card=dict(CARD), customer=CUSTOMER)
    holder = store.get(pid)["lease_owner"]
    taken = store.claim(pid, "sale", owner="w2", lease_seconds=LEASE, dead_owner=holder)
    assert taken.kind == "resumed" and float(taken.record["sent_ts"]) <= clock.now


def test_the_fence_stamps_each_attempt_with_store_time(store, clock):
    gw = FakeGateway(script=[reply()])
    PaymentFlow(store, gw, [KEY], LEASE, 60.0, 60.0, 30.0).charge("sale", new_id(), amount="3.00", card=dict(CARD))
    assert gw.stamps == [(clock.now, 3)]


@pytest.mark.parametrize("dead", [True, False])
def test_a_redelivery_waits_for_the_fence_of_a_stalled_holder_not_of_a_dead_one(store, clock, dead):
    """A holder on this host whose process is gone sends nothing later: its lapsed attempt needs only the commit
    horizon. One that may be stalled (alive, or on another host) is waited for until its stamp expired."""
    pid = new_id()
    holder = f"{socket.gethostname()}:{_dead_pid()}:deadbeef" if dead else "other-host:1:stalled"
    store.claim(pid, "sale", fields={"order_id": pid}, owner=holder, lease_seconds=LEASE, journal=True)
    assert store.fence(pid, holder, LEASE, 300.0) is not None
    clock.advance(LEASE + 1)  # its lease lapsed; the message comes back
    gw = FakeGateway(script=[reply(order_id=pid)], stq=[None])
    flow = PaymentFlow(store, gw, [KEY], LEASE, 1.0, 60.0, 30.0)  # a commit horizon of 1 s, long past
    if dead:  # absent, and its attempt older than the horizon: sent again at once
        outcome = flow.charge("sale", pid, amount="3.00", card=dict(CARD), customer=CUSTOMER, redelivered=True)
        assert outcome["status"] == "APPROVED" and len(gw.sends) == 1
        return
    with pytest.raises(GatewayOutage) as parked:
        flow.charge("sale", pid, amount="3.00", card=dict(CARD), customer=CUSTOMER, redelivered=True)
    assert gw.sends == [] and parked.value.parked_as == "UNKNOWN"
    assert parked.value.check_in == pytest.approx(300.0 - (LEASE + 1) + 1.0 + 1.0, abs=0.01)


class CountingFences(StoreUnderTest):
    """The real store, counting the fence calls it answers (the claim may fence the first attempt itself)."""

    def __init__(self, client, **kw):
        super().__init__(client, **kw)
        self.fences = 0

    def fence(self, *args, **kwargs):
        self.fences += 1
        return super().fence(*args, **kwargs)


class SteppedClock:
    """The flow's monotonic clock, moved by the test (how long the guard held the first attempt)."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def counting_store() -> CountingFences:
    store = new_store(CountingFences)
    assert isinstance(store, CountingFences)
    return store


class HeldGateway(FakeGateway):
    """The shared guard held each sale this long (the flow's clock moves) before it went out."""

    def __init__(self, script, clock: SteppedClock, held_for: float):
        super().__init__(script=script)
        self.clock, self.held_for = clock, held_for

    def sale(self, *args, **kwargs):
        self.clock.t += self.held_for
        return super().sale(*args, **kwargs)


def test_the_claim_fences_the_first_attempt_in_the_same_call():
    """One round trip fewer per payment: the claim that notes attempt 1 also checks its fence (same stamp, same
    fence_until as fence.lua); an attempt that goes out right after it asks the store nothing more."""
    store = counting_store()
    pid = new_id()
    gw = FakeGateway(script=[reply(order_id=pid)])
    flow = PaymentFlow(store, gw, [KEY], LEASE, 60.0, 60.0, 30.0, expire_minutes=2, skew_margin=30.0)
    assert flow.charge("sale", pid, amount="3.00", card=dict(CARD))["status"] == "APPROVED"
    assert store.fences == 0 and gw.stamps == [(store.clock.now, 2)]
    record = store.get(pid)
    assert record is not None
    assert float(record["fence_until"]) == pytest.approx(store.clock.now + 2 * 60 + expiry.MINUTE + 30.0, abs=0.002)


@pytest.mark.parametrize("held_for", [0.0, PREFENCE_FRESH])
def test_a_first_attempt_held_past_the_claims_freshness_is_fenced_again(held_for):
    """The guard held the first attempt PREFENCE_FRESH or more after the claim: the store checks the lease again."""
    store, steps, pid = counting_store(), SteppedClock(), new_id()
    gw = HeldGateway([reply(order_id=pid)], steps, held_for)
    flow = PaymentFlow(store, gw, [KEY], LEASE, 60.0, 60.0, 30.0, clock=steps)
    assert flow.charge("sale", pid, amount="3.00", card=dict(CARD))["status"] == "APPROVED"
    assert store.fences == (1 if held_for else 0)


def test_a_claim_without_the_fence_window_fences_nothing():
    store = counting_store()
    pid = new_id()
    claim = store.claim(pid, "sale", owner="w1", lease_seconds=LEASE, journal=True)
    record = store.get(pid)
    assert claim.kind == "claimed" and claim.fenced_at is None and record is not None and "fence_until" not in record
    again = store.claim(new_id(), "sale", owner="w1", lease_seconds=LEASE, journal="prior", fence_for=300.0)
    assert again.fenced_at is None  # a redelivery is looked up first: no attempt right after its claim
