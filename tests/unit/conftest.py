"""Unit fixtures: a fake clock and the in-memory results store on it (no Redis, no sleeping)."""
from __future__ import annotations

import pytest

from tests.support.clocks import FixedClock
from tests.support.fake_store import InMemoryStore


@pytest.fixture
def clock():
    return FixedClock()


@pytest.fixture
def store(clock):
    return InMemoryStore(clock=clock)
