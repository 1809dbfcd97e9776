"""Clocks the tests inject into the results store and the flow."""
from __future__ import annotations

import time


class FixedClock:
    """A clock that stands still until the test moves it."""

    def __init__(self, now: float = 1_750_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class OffsetClock:
    """Wall time plus an offset the test moves forward (for code that also waits for real)."""

    def __init__(self):
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds
