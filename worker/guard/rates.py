"""The guard's settings: a rate such as ``20/s`` and what the breaker does."""
from __future__ import annotations

import re
from dataclasses import dataclass

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*(s|sec|second|m|min|minute|h|hour)\s*$", re.IGNORECASE)
_UNIT = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


def parse_rate(text: str, *, name: str = "GATEWAY_RATE_LIMIT") -> float:
    """Requests per second of ``20/s``, ``600/m``, ``5/2s``; "" or "0" or "off": 0.0 (no limit)."""
    if text.strip().lower() in ("", "0", "off", "none"):
        return 0.0
    match = _RATE.match(text)
    if not match:
        raise ValueError(f"{name}: {text!r} is not a rate (e.g. 20/s, 600/m, or off)")
    count, per, unit = float(match.group(1)), int(match.group(2) or 1), _UNIT[match.group(3).lower()]
    if count <= 0 or per <= 0:
        raise ValueError(f"{name}: {text!r} must allow at least some requests (or say off)")
    return count / (per * unit)


@dataclass(frozen=True)
class GuardSettings:
    #: bp10emu requests (charges, follow-ups) per second for one merchant, all workers together; 0: no limit
    rate: float = 0.0
    #: stq and daily-report requests per second (a bucket of their own, so reconciliation is never starved)
    look_rate: float = 0.0
    #: requests a bucket may hold up after an idle moment (the burst over the rate in any one-second window)
    burst: int = 1
    #: consecutive failures proving the gateway down that open the breaker; 0: no breaker
    breaker_failures: int = 0
    #: seconds the breaker stays open before one probe may go
    cooldown: float = 30.0
    #: how long the probe's place is kept if its process never settles it (dies): one attempt's timeouts
    #: (worker/services.py sets it from GATEWAY_CONNECT_TIMEOUT + GATEWAY_READ_TIMEOUT)
    probe_lease: float = 20.0
    #: the longest one attempt waits in process for a token before it is re-queued instead (holds a worker slot)
    max_wait: float = 0.5

    @property
    def on(self) -> bool:
        return self.rate > 0 or self.look_rate > 0 or self.breaker_failures > 0

    def check(self) -> GuardSettings:
        if self.rate < 0 or self.look_rate < 0:
            raise ValueError("GATEWAY_RATE_LIMIT / GATEWAY_STQ_RATE_LIMIT must be a rate or off")
        if self.burst < 1:
            raise ValueError(f"GATEWAY_RATE_BURST ({self.burst}) must be at least 1")
        if self.breaker_failures < 0:
            raise ValueError(f"GATEWAY_BREAKER_FAILURES ({self.breaker_failures}) must be 0 (off) or more")
        if self.breaker_failures and self.cooldown <= 0:
            raise ValueError(f"GATEWAY_BREAKER_COOLDOWN ({self.cooldown:g}s) must be more than 0")
        if self.max_wait < 0:
            raise ValueError(f"GATEWAY_THROTTLE_WAIT ({self.max_wait:g}s) must be 0 or more")
        return self
