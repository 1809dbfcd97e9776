"""The gateway's guard, shared by every worker through Redis: a rate limit (a token bucket per merchant and lane), a
circuit breaker (per merchant) and a bulkhead (a cap on each merchant's requests in flight). The client asks it before
each HTTP attempt (worker/gateway/guarding.py); one Lua round trip per attempt (two when an attempt fails, the breaker
is not closed, or the cap is on: the settle frees the place). docs/resilience.md says how to run it.
"""
from worker.guard.rates import GuardSettings, parse_rate
from worker.guard.shared import BreakerState, GuardObserver, RedisGuard, breaker_state, in_flight

__all__ = ["GuardSettings", "parse_rate", "RedisGuard", "BreakerState", "GuardObserver", "breaker_state", "in_flight"]
