"""When a delivery is tried again: pure arithmetic over WEBHOOK_RETRY_SCHEDULE.

Attempt 1 is made as soon as the event is recorded; after failed attempt ``n`` the next one is ``schedule[n - 1]``
seconds later; after ``len(schedule) + 1`` failed attempts the delivery is exhausted (the failed set)."""
from __future__ import annotations

from collections.abc import Sequence


def attempts_allowed(schedule: Sequence[float]) -> int:
    return len(schedule) + 1


def next_delay(schedule: Sequence[float], failed_attempts: int) -> float | None:
    """Seconds until the next attempt after ``failed_attempts`` failures in a row, or None: give up."""
    if failed_attempts < 1:
        return 0.0
    if failed_attempts > len(schedule):
        return None
    return float(schedule[failed_attempts - 1])


def total_span(schedule: Sequence[float]) -> float:
    """From the first attempt to the last."""
    return float(sum(schedule))
