"""The client's hook for the shared guard (worker/gateway/guarding.py) and the guard's settings: which outcomes prove
the gateway down, that a held attempt sends nothing and asks no fence, that each attempt is admitted and settled.
The guard here is a scripted fake (the Redis one: tests/integration/test_guard_redis.py)."""
from __future__ import annotations

import pytest

from worker.config import ConfigError, Settings
from worker.gateway import (
    BluePayClient,
    Expired,
    FenceLost,
    GatewayUnavailable,
    NotSent,
    OutcomeUnknown,
    Rejected,
    RetryPolicy,
    Throttled,
)
from worker.gateway.guarding import DOWN, NEUTRAL, UP, verdict_of
from worker.guard import GuardSettings, parse_rate

from . import gateway_replies as R
from .gateway_replies import ACCOUNT, SECRET
from .test_gateway_client import CARD, FakeTransport, ok302


class ScriptedGuard:
    """Admits while ``held`` is empty, else raises its next item; notes every admission and verdict."""

    def __init__(self, *held: Exception):
        self.held = list(held)
        self.admitted: list[str] = []
        self.verdicts: list[str] = []

    def admit(self, lane: str) -> object:
        if self.held:
            raise self.held.pop(0)
        self.admitted.append(lane)
        return object()

    def settle(self, ticket: object, verdict: str) -> None:
        self.verdicts.append(verdict)


def transport_error(cls: type, cause: str) -> Exception:
    err = cls("posting to x")
    err.cause_name = cause
    return err


def make(guard, *script):
    transport = FakeTransport(*script)
    client = BluePayClient(account_id=ACCOUNT, secret_key=SECRET, transport=transport, sleep=lambda s: None,
                           retry_policy=RetryPolicy(max_attempts=4, max_seconds=60.0), guard=guard)
    return client, transport


@pytest.mark.parametrize(("exc", "verdict"), [
    (None, UP),
    (transport_error(NotSent, "ConnectionError (ConnectionRefusedError)"), DOWN),
    (transport_error(OutcomeUnknown, "ConnectionError (ConnectionResetError)"), DOWN),
    (transport_error(OutcomeUnknown, "ReadTimeout"), DOWN),
    (OutcomeUnknown("gateway answered HTTP 503", status_code=503), DOWN),
    (OutcomeUnknown("unparseable", status_code=200), UP),
    (OutcomeUnknown("duplicate", duplicate=True), UP),
    (Expired("TRANSACTION TOO OLD"), UP),
    (FenceLost("lease lost"), NEUTRAL),
])
def test_what_proves_the_gateway_down(exc, verdict):
    assert verdict_of(exc) == verdict


def test_rejected_is_an_answer():
    from worker.gateway.protocol import Response

    assert verdict_of(Rejected(Response(status="ERROR", message="SECURITY ERROR"))) == UP


def test_a_held_attempt_sends_nothing_asks_no_fence_and_is_not_retried_in_process():
    guard = ScriptedGuard(GatewayUnavailable("breaker open", retry_after=4.0))
    client, transport = make(guard, ok302(R.approved()))
    fenced: list[int] = []

    def fence() -> tuple[float, int]:
        fenced.append(1)
        return 1.0e9, 3

    with pytest.raises(GatewayUnavailable) as held:
        client.sale("3.00", CARD, order_id="o-1", fence=fence)
    assert held.value.retry_after == 4.0 and transport.calls == [] and fenced == []


def test_every_attempt_is_admitted_and_settled_retries_included():
    refused = transport_error(NotSent, "ConnectionError (ConnectionRefusedError)")
    guard = ScriptedGuard()
    client, _ = make(guard, refused, ok302(R.approved()))
    assert client.sale("3.00", CARD, order_id="o-1").approved
    assert guard.admitted == ["pay", "pay"] and guard.verdicts == [DOWN, UP]


def test_a_retry_the_guard_holds_ends_the_call():
    refused = transport_error(NotSent, "ConnectionError (ConnectionRefusedError)")
    guard = ScriptedGuard()
    client, transport = make(guard, refused)
    original = guard.admit
    calls = iter([None, GatewayUnavailable("opened meanwhile", retry_after=1.0)])

    def admit(lane):
        held = next(calls)
        if held is not None:
            raise held
        return original(lane)

    guard.admit = admit  # type: ignore[method-assign]
    with pytest.raises(GatewayUnavailable):
        client.sale("3.00", CARD, order_id="o-1")
    assert len(transport.calls) == 1


def test_stq_goes_in_its_own_lane():
    guard = ScriptedGuard()
    client, _ = make(guard, ok302(R.approved()))
    with pytest.raises(Exception):  # noqa: B017  (the reply is no stq reply: only the lane matters here)
        client.query_all(order_id="o-1")
    assert guard.admitted and set(guard.admitted) == {"look"}


@pytest.mark.parametrize(("text", "per_second"), [("20/s", 20.0), ("600/m", 10.0), ("5/2s", 2.5), ("off", 0.0),
                                                  ("", 0.0), ("3600/hour", 1.0)])
def test_rates(text, per_second):
    assert parse_rate(text) == per_second


@pytest.mark.parametrize("text", ["20", "fast", "0/s", "-1/s", "20/week"])
def test_bad_rates_are_named(text):
    with pytest.raises(ValueError, match="GATEWAY_RATE_LIMIT"):
        parse_rate(text)


def test_the_settings_split_the_limit_between_charges_and_stq(monkeypatch):
    monkeypatch.setenv("GATEWAY_RATE_LIMIT", "10/s")
    monkeypatch.setenv("GATEWAY_BREAKER_FAILURES", "5")
    guard = Settings.from_env().guard
    assert (guard.rate, guard.look_rate, guard.breaker_failures, guard.cooldown) == (8.0, 2.0, 5, 10.0)
    monkeypatch.setenv("GATEWAY_STQ_RATE_LIMIT", "10/s")
    with pytest.raises(ConfigError, match="GATEWAY_STQ_RATE_LIMIT"):
        Settings.from_env()
    monkeypatch.setenv("GATEWAY_STQ_RATE_LIMIT", "1/s")
    monkeypatch.setenv("GATEWAY_RATE_BURST", "0")
    with pytest.raises(ConfigError, match="GATEWAY_RATE_BURST"):
        Settings.from_env()


def test_the_breaker_is_on_by_default_the_rate_limit_off(monkeypatch):
    """Issue 31: a worker run with its defaults protects the gateway (5 failures, 10 s); 0 turns the breaker off."""
    for name in ("GATEWAY_RATE_LIMIT", "GATEWAY_STQ_RATE_LIMIT", "GATEWAY_BREAKER_FAILURES",
                 "GATEWAY_BREAKER_COOLDOWN", "GATEWAY_BREAKER_RECHECK"):
        monkeypatch.delenv(name, raising=False)
    for guard in (GuardSettings(), Settings().guard, Settings.from_env().guard):
        assert (guard.breaker_failures, guard.cooldown, guard.recheck) == (5, 10.0, 1.0)
        assert guard.on and guard.rate == 0 and guard.look_rate == 0
    monkeypatch.setenv("GATEWAY_BREAKER_FAILURES", "0")
    monkeypatch.setenv("GATEWAY_BREAKER_RECHECK", "0.25")
    guard = Settings.from_env().guard
    assert not guard.on and guard.recheck == 0.25
    monkeypatch.setenv("GATEWAY_BREAKER_RECHECK", "-1")
    with pytest.raises(ConfigError, match="GATEWAY_BREAKER_RECHECK"):
        Settings.from_env()


def test_the_cap_in_flight_turns_the_guard_on(monkeypatch):
    monkeypatch.setenv("GATEWAY_BREAKER_FAILURES", "0")  # the cap alone (the breaker is on by default)
    monkeypatch.setenv("GATEWAY_MAX_IN_FLIGHT", "3")
    monkeypatch.setenv("GATEWAY_BUSY_WAIT", "0.2s")
    guard = Settings.from_env().guard
    assert guard.on and (guard.max_in_flight, guard.busy_wait, guard.rate, guard.breaker_failures) == (3, 0.2, 0, 0)
    monkeypatch.setenv("GATEWAY_MAX_IN_FLIGHT", "-1")
    with pytest.raises(ConfigError, match="GATEWAY_MAX_IN_FLIGHT"):
        Settings.from_env()


# ---- the flow: a held attempt parks RETRYING (nothing sent), a throttle is no outage
def test_the_flow_parks_a_held_attempt_as_retrying_not_sent(store):
    from tests.support.fake_gateway import FakeGateway
    from worker.payments.flow import GatewayOutage, GatewayThrottled

    from .test_flow import make_flow, new_id, parked, sale

    for held, kind, words in [(GatewayUnavailable("gateway unavailable: circuit breaker open (default)",
                                                  retry_after=12.0), GatewayOutage, "gateway unavailable"),
                              (Throttled("gateway rate limit reached (default)", retry_after=0.2), GatewayThrottled,
                               "rate limit"),
                              (Throttled("gateway busy: too many requests in flight for merchant default (2)",
                                         retry_after=1.0), GatewayThrottled, "gateway busy")]:
        pid = new_id()
        out = parked(lambda: sale(make_flow(store, FakeGateway([held])), pid))  # noqa: B023  (run at once)
        record = store.get(pid)
        assert type(out) is kind and out.parked_as == "RETRYING" and out.check_in == held.retry_after
        assert record["status"] == "RETRYING" and not record.get("sent_ts") and words in record["message"]


def test_the_sweep_spends_no_try_when_the_guard_holds_stq_back(store, clock):
    from tests.support.fake_gateway import FakeGateway

    from .test_flow import _left, make_flow

    pid = _left(store, "unknown")
    flow = make_flow(store, FakeGateway(stq=[GatewayUnavailable("breaker open", retry_after=20.0), NotSent("down")]))
    assert flow.reconcile(store.get(pid), give_up_after=3600, retry_base=0.5) == "still_unknown"
    held = store.get(pid)
    assert held["status"] == "UNKNOWN" and not held.get("reconcile_tries") and "unavailable" in held["message"]
    assert float(held["next_check_ts"]) - float(held["updated_ts"]) == pytest.approx(21.0, abs=0.01)
    assert flow.reconcile(store.get(pid), give_up_after=3600, retry_base=0.5) == "skipped"  # not due yet
    clock.advance(21.1)
    assert flow.reconcile(store.get(pid), give_up_after=3600, retry_base=0.5) == "still_unknown"
    assert store.get(pid)["reconcile_tries"] == "1"  # a real failure of stq is a try


class RedisAway:
    """A Redis client whose scripts fail as a Redis that went away does."""

    def register_script(self, text: str):
        import redis

        def call(keys, args):
            raise redis.ConnectionError("Connection refused")

        return call


def test_the_guard_holds_an_attempt_back_when_redis_does_not_answer_and_never_masks_an_outcome():
    from worker.gateway import Held
    from worker.guard import RedisGuard
    from worker.guard.shared import _Ticket

    guard = RedisGuard(RedisAway(), prefix="p:", merchant="m", settings=GuardSettings(rate=5.0, breaker_failures=3))
    with pytest.raises(Held, match="could not reach Redis") as held:
        guard.admit("pay")
    assert held.value.retry_after > 0 and not isinstance(held.value, (Throttled, GatewayUnavailable))
    guard.settle(_Ticket(probe=True, failures=2), DOWN)  # logged, not raised: the attempt's own outcome stands
