"""A wall clock the tests move forward (the results store's own clock for tests is tests/support/redis_clock.py)."""
from __future__ import annotations

import time


class OffsetClock:
    """Wall time plus an offset the test moves forward (for code that also waits for real)."""

    def __init__(self):
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds
