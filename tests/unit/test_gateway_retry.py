import logging
from dataclasses import FrozenInstanceError

import pytest

from worker.gateway.errors import GatewayError, InvalidInput, NotSent, OutcomeUnknown, Rejected
from worker.gateway.protocol import Response
from worker.gateway.retry import RetryPolicy, call_with_retry, should_retry

REJ = Rejected(Response(status="ERROR", message="SECURITY ERROR"))

TABLE = [
    (NotSent("x"), False, True),
    (NotSent("x"), True, True),
    (OutcomeUnknown("x"), False, False),
    (OutcomeUnknown("x"), True, True),
    (OutcomeUnknown("dup", duplicate=True), False, False),
    (GatewayError("x"), True, True),
    (GatewayError("x"), False, False),
    (REJ, False, False),
    (REJ, True, False),
    (InvalidInput("amount", "bad"), False, False),
    (InvalidInput("amount", "bad"), True, False),
    (ValueError("x"), True, False),
]


@pytest.mark.parametrize("exc,read_only,expected", TABLE)
def test_should_retry_table(exc, read_only, expected):
    assert should_retry(exc, read_only=read_only) is expected


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def failing(clock, exc_factory, cost=0.0):
    calls = []

    def fn():
        calls.append(clock.now)
        clock.now += cost
        raise exc_factory()

    return fn, calls


def test_attempt_bound():
    clock = FakeClock()
    fn, calls = failing(clock, lambda: NotSent("refused"))
    with pytest.raises(NotSent) as ei:
        call_with_retry(fn, policy=RetryPolicy(max_attempts=4, max_seconds=100), read_only=False,
                        operation="SALE", sleep=clock.sleep, clock=clock)
    assert len(calls) == 4 and ei.value.attempts == 4
    assert len(clock.sleeps) == 3
    assert all(0 <= s <= 2.0 for s in clock.sleeps)


def test_total_time_bound():
    clock = FakeClock()
    # each attempt burns a 3.05 s connect timeout; 10 s budget stops before attempt 5 of 10
    fn, calls = failing(clock, lambda: NotSent("connect timeout"), cost=3.05)
    policy = RetryPolicy(max_attempts=10, max_seconds=10.0, initial_wait=0.2, max_wait=2.0)
    with pytest.raises(NotSent):
        call_with_retry(fn, policy=policy, read_only=False, operation="SALE", sleep=clock.sleep, clock=clock)
    assert 2 <= len(calls) <= 4 < policy.max_attempts
    # no attempt starts at or after the budget
    assert all(t - 1000.0 < policy.max_seconds for t in calls)
    # total elapsed bounded by budget + one attempt
    assert clock.now - 1000.0 <= policy.max_seconds + 3.05


def test_backoff_grows_and_is_capped():
    clock = FakeClock()
    fn, _calls = failing(clock, lambda: NotSent("x"))
    policy = RetryPolicy(max_attempts=8, max_seconds=1e9, initial_wait=0.2, max_wait=2.0)
    with pytest.raises(NotSent):
        call_with_retry(fn, policy=policy, read_only=True, operation="QUERY", sleep=clock.sleep, clock=clock)
    assert len(clock.sleeps) == 7
    for i, s in enumerate(clock.sleeps, start=1):
        assert 0 <= s <= min(2.0, 0.2 * 2 ** (i - 1)) + 1e-9


def test_success_after_retries_reports_attempts():
    clock = FakeClock()
    outcomes = [NotSent("a"), NotSent("b"), "ok"]

    def fn():
        o = outcomes.pop(0)
        if isinstance(o, Exception):
            raise o
        return o

    assert call_with_retry(fn, policy=RetryPolicy(), read_only=False, operation="SALE",
                           sleep=clock.sleep, clock=clock) == ("ok", 3)


def test_outcome_unknown_on_money_call_not_retried():
    clock = FakeClock()
    fn, calls = failing(clock, lambda: OutcomeUnknown("read timeout"))
    with pytest.raises(OutcomeUnknown):
        call_with_retry(fn, policy=RetryPolicy(), read_only=False, operation="SALE", sleep=clock.sleep, clock=clock)
    assert len(calls) == 1 and clock.sleeps == []


def test_last_error_reraised_not_retry_error():
    clock = FakeClock()
    errors = iter([NotSent("first"), NotSent("second"), OutcomeUnknown("third")])

    def fn():
        raise next(errors)

    with pytest.raises(OutcomeUnknown, match="third"):
        call_with_retry(fn, policy=RetryPolicy(max_attempts=3), read_only=True, operation="QUERY", sleep=clock.sleep,
                        clock=clock)


def test_retries_logged_without_secrets(caplog):
    clock = FakeClock()
    fn, _calls = failing(clock, lambda: NotSent("CC_NUM=4111111111111111"))
    with caplog.at_level(logging.WARNING, logger="payments.gateway"), pytest.raises(NotSent):
        call_with_retry(fn, policy=RetryPolicy(max_attempts=3), read_only=False, operation="SALE",
                        sleep=clock.sleep, clock=clock)
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2
    for r in caplog.records:
        assert r.name == "payments.gateway" and r.levelno == logging.WARNING
        assert "4111111111111111" not in r.getMessage()
    assert "SALE" in retries[0].getMessage() and "NotSent" in retries[0].getMessage()
    assert "attempt 1" in retries[0].getMessage()


def test_policy_is_frozen_and_validated():
    p = RetryPolicy()
    assert (p.max_attempts, p.max_seconds, p.initial_wait, p.max_wait) == (4, 10.0, 0.2, 2.0)
    with pytest.raises(FrozenInstanceError):
        p.max_attempts = 9  # type: ignore[misc]  # the assignment is what must fail
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_a_first_attempt_that_succeeds_is_called_once_and_counted_once():
    clock = FakeClock()
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        return "ok"

    assert call_with_retry(fn, policy=RetryPolicy(), read_only=False, operation="SALE",
                           sleep=clock.sleep, clock=clock) == ("ok", 1)
    assert calls == [1] and clock.sleeps == []


def test_a_first_attempt_that_fails_for_good_is_called_once_and_counted_once():
    clock = FakeClock()
    fn, calls = failing(clock, lambda: Rejected(Response(status="ERROR", message="SECURITY ERROR")))
    with pytest.raises(Rejected) as ei:
        call_with_retry(fn, policy=RetryPolicy(), read_only=True, operation="QUERY", sleep=clock.sleep, clock=clock)
    assert len(calls) == 1 and ei.value.attempts == 1 and clock.sleeps == []
