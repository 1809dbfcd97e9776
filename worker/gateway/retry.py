"""Retry policy for gateway calls (tenacity).

* NotSent is retried (nothing reached the gateway, or the gateway refused it as too old and did not save it),
  except FenceLost (the caller's fence before the attempt said it no longer holds the operation) and Held (the
  shared guard held it back: the caller re-queues instead of holding a worker slot).
* A read-only call (stq) is retried on any GatewayError except Rejected.
* OutcomeUnknown on a money-moving call is never retried: reconcile first.
* Rejected / InvalidInput are final.

Bounds: at most ``max_attempts`` attempts, and no new attempt is started when the time since
the first one plus the next backoff would reach ``max_seconds`` (so the retry window is
bounded by ``max_seconds`` plus the duration of one attempt, i.e. its connect+read timeouts).
Backoff: tenacity's ``wait_random_exponential`` (full jitter) from ``initial_wait`` up to
``max_wait``. After giving up the last GatewayError itself is raised (never RetryError).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential
from tenacity.stop import stop_base

from .errors import FenceLost, GatewayError, Held, InvalidInput, NotSent, OutcomeUnknown, Rejected

__all__ = ["RetryPolicy", "should_retry", "call_with_retry", "logger"]

logger = logging.getLogger("payments.gateway")
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    max_seconds: float = 10.0
    initial_wait: float = 0.2
    max_wait: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.max_seconds < 0 or self.initial_wait < 0 or self.max_wait < 0:
            raise ValueError("durations must be >= 0")


def should_retry(exc: BaseException, *, read_only: bool) -> bool:
    if isinstance(exc, (InvalidInput, Rejected, FenceLost, Held)):
        return False
    if isinstance(exc, NotSent):
        return True
    if isinstance(exc, OutcomeUnknown):
        return read_only
    if isinstance(exc, GatewayError):
        return read_only
    return False


class _stop_before_delay_on(stop_base):
    """Like tenacity's stop_before_delay, but on an injectable clock."""

    def __init__(self, max_delay: float, clock: Callable[[], float], start: float) -> None:
        self.max_delay = max_delay
        self.clock = clock
        self.start = start

    def __call__(self, retry_state: RetryCallState) -> bool:
        return (self.clock() - self.start) + retry_state.upcoming_sleep >= self.max_delay


def call_with_retry(
    fn: Callable[[], T],
    *,
    policy: RetryPolicy,
    read_only: bool,
    operation: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_retry: Callable[[BaseException], None] | None = None,
) -> tuple[T, int]:
    """Run ``fn`` under ``policy``; return ``(result, attempts)``. ``on_retry`` hears of each retry's cause.

    On give-up or a non-retryable error the last exception is raised with ``.attempts`` set.
    """
    start = clock()  # the retry window counts from before the first attempt
    try:
        # The first attempt outside tenacity: most calls succeed at once, and building and running tenacity's
        # machinery cost ~25-50 us of CPU per call. A failed first attempt is handed to tenacity as its own first
        # attempt (raised again, fn not called again): backoff, stop, logging and give-up are tenacity's, as before.
        return fn(), 1
    except BaseException as exc:
        first_failure: BaseException | None = exc
    attempts = 1

    def attempt() -> T:
        nonlocal attempts, first_failure
        if first_failure is not None:
            failed, first_failure = first_failure, None
            raise failed
        attempts += 1
        return fn()

    try:
        result = _retrying(policy, read_only, operation, sleep, clock, start, on_retry)(attempt)
    except BaseException as exc:
        try:
            exc.attempts = attempts  # type: ignore[attr-defined]
        except Exception:  # pragma: no cover - exotic exceptions without __dict__
            pass
        if isinstance(exc, GatewayError) and attempts > 1:
            logger.warning("gateway %s gave up after %d attempts: %s", operation, attempts, type(exc).__name__)
        raise
    return result, attempts


def _retrying(policy: RetryPolicy, read_only: bool, operation: str, sleep: Callable[[float], None],
              clock: Callable[[], float], start: float, on_retry: Callable[[BaseException], None] | None) -> Retrying:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        logger.warning(
            "gateway %s attempt %d failed with %s; retrying in %.2fs",
            operation,
            state.attempt_number,
            type(exc).__name__ if exc else "?",
            state.upcoming_sleep,
        )
        if on_retry is not None and exc is not None:
            on_retry(exc)

    return Retrying(
        stop=stop_after_attempt(policy.max_attempts) | _stop_before_delay_on(policy.max_seconds, clock, start),
        wait=wait_random_exponential(multiplier=policy.initial_wait, max=policy.max_wait),
        retry=retry_if_exception(lambda e: should_retry(e, read_only=read_only)),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
