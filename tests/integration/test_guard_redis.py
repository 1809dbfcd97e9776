"""The gateway's shared guard (worker/guard/) on a real Redis: the token bucket's bound, the breaker's states, the
lanes' separate budgets. Two guards over one Redis stand for two worker processes."""
from __future__ import annotations

import time

import pytest

from worker.gateway import GatewayUnavailable, Throttled
from worker.gateway.guarding import DOWN, NEUTRAL, UP
from worker.guard import GuardSettings, RedisGuard, breaker_state


def guard(client, prefix, merchant="m1", **settings) -> RedisGuard:
    return RedisGuard(client, prefix=prefix, merchant=merchant,
                      settings=GuardSettings(**{"max_wait": 0.0, **settings}))


def test_two_processes_share_one_bucket_and_never_pass_rate_plus_burst_in_a_second(client, prefix):
    a, b = guard(client, prefix, rate=10.0), guard(client, prefix, rate=10.0)
    admitted: list[float] = []
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        for g in (a, b):
            try:
                g.admit("pay")
                admitted.append(time.monotonic())
            except Throttled as exc:
                assert 0 < exc.retry_after <= 0.1 + 1e-3
        time.sleep(0.005)
    worst = max(sum(1 for t in admitted if start <= t < start + 1.0) for start in admitted)
    assert 10 <= worst <= 11  # the rate, plus the burst of 1 a full bucket holds


def test_a_throttled_attempt_waits_a_bounded_moment_in_process_instead(client, prefix):
    g = guard(client, prefix, rate=5.0, max_wait=0.5)
    started = time.monotonic()
    for _ in range(3):  # the first takes the bucket's one token; the next two wait ~0.2 s each
        g.admit("pay")
    assert 0.3 <= time.monotonic() - started < 1.0
    quick = guard(client, prefix, rate=5.0, max_wait=0.05)
    with pytest.raises(Throttled):
        quick.admit("pay")


def test_stq_keeps_its_own_budget(client, prefix):
    g = guard(client, prefix, rate=1.0, look_rate=1.0)
    g.admit("pay")
    with pytest.raises(Throttled):
        g.admit("pay")
    g.admit("look")  # a backlog of charges never takes reconciliation's tokens


def test_the_breaker_opens_after_consecutive_failures_and_one_probe_closes_it(client, prefix):
    a = guard(client, prefix, breaker_failures=3, cooldown=1.0)
    b = guard(client, prefix, breaker_failures=3, cooldown=1.0)
    for g in (a, b, a):
        g.settle(g.admit("pay"), DOWN)
    assert breaker_state(client, prefix=prefix, merchant="m1").state == "open"
    with pytest.raises(GatewayUnavailable) as held:
        b.admit("look")  # nothing goes while open, stq included
    assert 0 < held.value.retry_after <= 1.5  # the cooldown left, spread by up to half of it
    time.sleep(1.05)
    probe = a.admit("pay")
    with pytest.raises(GatewayUnavailable):
        b.admit("pay")  # one probe at a time
    a.settle(probe, UP)
    state = breaker_state(client, prefix=prefix, merchant="m1")
    assert (state.state, state.failures, state.opened) == ("closed", 0, 1)
    b.settle(b.admit("pay"), UP)


def test_a_success_between_failures_resets_the_count(client, prefix):
    g = guard(client, prefix, breaker_failures=2, cooldown=5.0)
    g.settle(g.admit("pay"), DOWN)
    g.settle(g.admit("pay"), UP)
    g.settle(g.admit("pay"), DOWN)
    assert breaker_state(client, prefix=prefix, merchant="m1").state == "closed"


def test_a_failed_probe_opens_it_again_and_a_neutral_one_frees_its_place(client, prefix):
    g = guard(client, prefix, breaker_failures=1, cooldown=0.3)
    g.settle(g.admit("pay"), DOWN)
    time.sleep(0.35)
    g.settle(g.admit("pay"), NEUTRAL)  # e.g. our own fence refused it: says nothing of the gateway
    probe = g.admit("pay")  # the place was freed at once, not after the probe lease
    g.settle(probe, DOWN)
    state = breaker_state(client, prefix=prefix, merchant="m1")
    assert state.state == "open" and state.opened == 2 and state.open_for > 0


def test_merchants_have_their_own_breaker_and_bucket(client, prefix):
    down = guard(client, prefix, merchant="m1", breaker_failures=1, cooldown=30.0, rate=1.0)
    other = guard(client, prefix, merchant="m2", breaker_failures=1, cooldown=30.0, rate=1.0)
    down.settle(down.admit("pay"), DOWN)
    with pytest.raises(GatewayUnavailable):
        down.admit("pay")
    other.settle(other.admit("pay"), UP)
    assert breaker_state(client, prefix=prefix, merchant="m2").state == "closed"


def test_payments_status_shows_the_limit_and_the_breaker_as_it_stands(client, prefix):
    import dataclasses
    import types

    from worker.config import Settings
    from worker.ops.status import _guard_line, guard_report

    settings = dataclasses.replace(Settings(), key_prefix=prefix,
                                   guard=GuardSettings(rate=8.0, look_rate=2.0, breaker_failures=1, cooldown=30.0))
    svc = types.SimpleNamespace(settings=settings, redis=client)
    assert _guard_line(guard_report(svc)) == "10/s (stq 2/s), breaker CLOSED (0 failures in a row; opened 0 times)"
    g = guard(client, prefix, merchant="default", breaker_failures=1, cooldown=30.0)
    g.settle(g.admit("pay"), DOWN)
    line = _guard_line(guard_report(svc))
    assert line.startswith("10/s (stq 2/s), breaker OPEN (1 failures in a row, ") and "opened 1 times" in line


def test_payments_status_shows_every_merchants_breaker(client, prefix):
    import dataclasses
    import types

    from worker.config import MerchantAccount, Settings
    from worker.ops.status import guard_report, render

    shop2 = MerchantAccount("shop2", "100000000002", "S2", guard=GuardSettings(breaker_failures=1, cooldown=30.0))
    settings = dataclasses.replace(Settings(), key_prefix=prefix, accounts=(shop2,),
                                   guard=GuardSettings(breaker_failures=1, cooldown=30.0))
    g = guard(client, prefix, merchant="shop2", breaker_failures=1, cooldown=30.0)
    g.settle(g.admit("pay"), DOWN)
    report = guard_report(types.SimpleNamespace(settings=settings, redis=client))
    assert report["breaker"]["state"] == "closed"
    (other,) = report["merchants"]
    assert other["merchant"] == "shop2" and other["breaker"]["state"] == "open"
    found = {"by_status": {}, "ages": dict.fromkeys(("unknown", "retrying", "needs_human", "non_final", "outbox",
                                                     "open_auths")),
             "broker": {"queues": {}, "unacked": 0}, "workers": [], "needs_human": {"count": 0},
             "non_final": {"count": 0}, "outbox": {"count": 0}, "stats": {}, "open_auths": {"count": 0},
             "now": 0.0, "gateway": {"url": "-", "reachable": True, "error": None}, "guard": report,
             "attention": []}
    assert "  shop2      no rate limit, breaker OPEN" in render(found)


# ---- recheck: a process trusts Redis's "closed, no failures" for a moment (GATEWAY_BREAKER_RECHECK)
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Counting:
    """The guard's Redis client, counting its script calls (each one round trip)."""

    def __init__(self, client) -> None:
        self.client, self.calls = client, 0

    def register_script(self, text: str):
        script = self.client.register_script(text)

        def call(keys, args):
            self.calls += 1
            return script(keys=keys, args=args)

        return call


def clocked(client, prefix, clock, **settings) -> RedisGuard:
    return RedisGuard(client, prefix=prefix, merchant="m1", clock=clock,
                      settings=GuardSettings(**{"max_wait": 0.0, "cooldown": 5.0, **settings}))


def test_a_closed_breaker_is_asked_once_per_recheck_not_per_attempt(client, prefix):
    clock, counting = Clock(), Counting(client)
    g = clocked(counting, prefix, clock, breaker_failures=2, recheck=1.0)
    for _ in range(50):
        g.settle(g.admit("pay"), UP)
    assert counting.calls == 1
    clock.now += 1.0
    g.settle(g.admit("pay"), UP)
    assert counting.calls == 2
    limited = clocked(counting, prefix, clock, breaker_failures=2, recheck=1.0, rate=1e6, look_rate=1e5, burst=100)
    for _ in range(10):  # a lane under a rate limit takes a token per attempt: it asks every time
        limited.settle(limited.admit("pay"), UP)
    assert counting.calls == 12
    capped = clocked(counting, prefix, clock, breaker_failures=2, recheck=1.0, max_in_flight=100)
    for _ in range(10):  # and under the in-flight cap: a place taken (admit) and freed (settle) per attempt
        capped.settle(capped.admit("pay"), UP)
    assert counting.calls == 32


def test_a_breaker_opened_elsewhere_stops_a_trusting_process_at_its_first_failure_or_within_recheck(client, prefix):
    clock = Clock()
    a, c = (clocked(client, prefix, clock, breaker_failures=2, recheck=1.0) for _ in range(2))
    b = clocked(client, prefix, clock, breaker_failures=2, recheck=0.0)  # asks every time
    a.settle(a.admit("pay"), UP)
    c.settle(c.admit("pay"), UP)  # a and c trust "closed" until 101.0
    for _ in range(2):
        b.settle(b.admit("pay"), DOWN)
    assert breaker_state(client, prefix=prefix, merchant="m1").state == "open"
    stale = a.admit("pay")  # the bounded staleness: a has not asked since
    a.settle(stale, DOWN)  # its own failure: it asks from now on
    with pytest.raises(GatewayUnavailable):
        a.admit("pay")
    clock.now += 1.0  # c saw no failure of its own: held once its recheck is over
    with pytest.raises(GatewayUnavailable):
        c.admit("pay")
    with pytest.raises(GatewayUnavailable):
        b.admit("pay")


def test_a_process_that_saw_failures_counted_asks_until_the_count_is_cleared(client, prefix):
    clock, counting = Clock(), Counting(client)
    g = clocked(counting, prefix, clock, breaker_failures=3, recheck=1.0)
    g.settle(g.admit("pay"), DOWN)
    g.settle(g.admit("pay"), UP)  # asked (1 failure counted): its success clears the count (settle)
    assert breaker_state(client, prefix=prefix, merchant="m1").failures == 0
    calls = counting.calls
    for _ in range(5):
        g.settle(g.admit("pay"), UP)
    assert counting.calls == calls + 1  # trusted again once Redis answered "closed, no failures"


# ---- the bulkhead (GATEWAY_MAX_IN_FLIGHT): a cap on one merchant's attempts in flight, all workers together ----
def test_two_processes_never_have_more_than_the_cap_in_flight(client, prefix):
    import threading

    from worker.guard import in_flight

    guards = [guard(client, prefix, max_in_flight=2, busy_wait=0.0), guard(client, prefix, max_in_flight=2,
                                                                              busy_wait=0.0)]
    lock = threading.Lock()
    out = {"now": 0, "most": 0, "admitted": 0, "busy": 0, "seen": 0}

    def worker(g: RedisGuard) -> None:  # four threads per guard: eight slots asking for two places
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            try:
                ticket = g.admit("pay")
            except Throttled as exc:
                assert "too many requests in flight for merchant m1" in str(exc) and exc.retry_after > 0
                with lock:
                    out["busy"] += 1
                time.sleep(0.002)
                continue
            with lock:
                out["now"] += 1
                out["admitted"] += 1
                out["most"] = max(out["most"], out["now"])
                out["seen"] = max(out["seen"], in_flight(client, prefix=prefix, merchant="m1"))
            time.sleep(0.01)  # the request
            with lock:
                out["now"] -= 1
            g.settle(ticket, UP)

    threads = [threading.Thread(target=worker, args=(g,)) for g in guards for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out["most"] == 2 and out["seen"] <= 2  # the cap reached, never passed
    assert out["admitted"] >= 20 and out["busy"] >= 20  # places were freed by settle and taken again
    assert in_flight(client, prefix=prefix, merchant="m1") == 0


def test_a_holder_that_dies_frees_its_place_after_its_deadline(client, prefix):
    from worker.guard import in_flight

    dead = guard(client, prefix, max_in_flight=1, probe_lease=0.4)  # one attempt's timeouts: 0.4 s here
    dead.admit("pay")  # its process dies mid-request: settle never comes
    other = guard(client, prefix, max_in_flight=1, busy_wait=0.0)
    with pytest.raises(Throttled) as busy:
        other.admit("look")  # the cap counts every request of the merchant, stq too
    assert busy.value.retry_after > 0
    assert in_flight(client, prefix=prefix, merchant="m1") == 1
    time.sleep(0.45)
    other.settle(other.admit("pay"), UP)
    assert in_flight(client, prefix=prefix, merchant="m1") == 0


def test_a_busy_attempt_waits_a_bounded_moment_in_process_and_spends_no_token(client, prefix):
    first = guard(client, prefix, max_in_flight=1, rate=1.0, burst=1)
    held = first.admit("pay")  # the bucket's one token, the one place
    waiting = guard(client, prefix, max_in_flight=1, rate=1.0, burst=1, busy_wait=0.2)
    started = time.monotonic()
    with pytest.raises(Throttled, match="gateway busy"):
        waiting.admit("pay")
    assert 0.15 <= time.monotonic() - started < 0.6
    first.settle(held, UP)
    with pytest.raises(Throttled, match="rate limit"):  # the place is free; the bucket is still empty
        waiting.admit("pay")


def test_settle_frees_the_place_whatever_the_attempt_proved(client, prefix):
    from worker.guard import in_flight

    g = guard(client, prefix, max_in_flight=1, breaker_failures=5, cooldown=5.0)
    for verdict in (UP, DOWN, NEUTRAL, UP):
        g.settle(g.admit("pay"), verdict)
        assert in_flight(client, prefix=prefix, merchant="m1") == 0
    assert breaker_state(client, prefix=prefix, merchant="m1").failures == 0  # the breaker still counts


def test_merchants_have_their_own_cap(client, prefix):
    slow = guard(client, prefix, merchant="m1", max_in_flight=1)
    other = guard(client, prefix, merchant="m2", max_in_flight=1)
    slow.admit("pay")
    with pytest.raises(Throttled):
        slow.admit("pay")
    other.settle(other.admit("pay"), UP)


def test_payments_status_shows_what_is_in_flight_of_the_cap(client, prefix):
    import dataclasses
    import types

    from worker.config import Settings
    from worker.ops.status import _guard_line, guard_report

    settings = dataclasses.replace(Settings(), key_prefix=prefix,
                                   guard=GuardSettings(max_in_flight=3, breaker_failures=0))
    svc = types.SimpleNamespace(settings=settings, redis=client)
    assert _guard_line(guard_report(svc)) == "no rate limit, 0 of 3 in flight, no breaker"
    guard(client, prefix, merchant="default", max_in_flight=3).admit("pay")
    assert _guard_line(guard_report(svc)) == "no rate limit, 1 of 3 in flight, no breaker"
