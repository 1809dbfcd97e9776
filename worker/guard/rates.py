"""The guard's settings: a rate such as ``20/s`` and what the breaker does. They are settings, so they live in
worker/config.py (which imports nothing of ours); named here for the guard's callers."""
from __future__ import annotations

from worker.config import GuardSettings, parse_rate

__all__ = ["GuardSettings", "parse_rate"]
