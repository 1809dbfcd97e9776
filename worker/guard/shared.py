"""The guard on Redis: every worker process of every host shares one token bucket per merchant and lane, one
circuit breaker per merchant and one set of each merchant's attempts in flight, capped (scripts/admit.lua,
scripts/settle.lua).

Breaker states: ``closed`` (requests go; consecutive failures are counted), ``open`` (nothing is sent until the
cooldown ends: :class:`~worker.gateway.GatewayUnavailable`), ``half_open`` (the cooldown is over: one probe at a time
goes; its answer closes the breaker, its failure opens it again for another cooldown).

Why not the ``limits`` library: its Redis moving window takes the caller's clock (``time.time()`` in each process,
where the design wants Redis time as the one clock) and the breaker's state would be a second round trip per
attempt; one script does both in one. pybreaker is not a dependency: the breaker is these two short scripts.
"""
from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

import redis

from worker.gateway.errors import GatewayUnavailable, Held, Throttled
from worker.gateway.guarding import DOWN, NEUTRAL, UP
from worker.guard.rates import GuardSettings

__all__ = ["RedisGuard", "GuardObserver", "BreakerState", "breaker_state", "in_flight", "in_flight_key", "LANES"]

log = logging.getLogger("payments.guard")
#: pay: bp10emu (charges, follow-ups); look: stq and the daily report (their own budget)
LANES = ("pay", "look")
#: seconds before an attempt held back because Redis did not answer the guard is tried again
REDIS_RETRY_AFTER = 5.0
#: the bulkhead (GATEWAY_MAX_IN_FLIGHT): how often a waiting attempt asks again for a place in process, and the
#: countdown (plus the task's jitter of up to a second) of a payment re-queued for want of one
BUSY_POLL = 0.05
BUSY_RETRY_AFTER = 1.0


def _script(name: str) -> str:
    return (resources.files("worker.guard") / "scripts" / f"{name}.lua").read_text()


class GuardObserver(Protocol):
    def held(self, merchant: str, reason: str) -> None:
        """An attempt was held back: ``reason`` throttled, busy (the in-flight cap) or breaker_open."""

    def breaker(self, merchant: str, change: str) -> None:
        """This process changed the breaker: opened or closed."""


class _NullObserver:
    def held(self, merchant: str, reason: str) -> None:
        pass

    def breaker(self, merchant: str, change: str) -> None:
        pass


@dataclass(frozen=True)
class _Ticket:
    probe: bool
    failures: int  # consecutive failures the breaker had counted when this attempt was admitted
    slot: str | None = None  # its id among the merchant's attempts in flight (the cap is on), freed by settle


#: an attempt admitted on this process's recent "closed, no failures" (no round trip)
_TRUSTED = _Ticket(probe=False, failures=0)


def _keys(prefix: str, merchant: str) -> tuple[str, str]:
    base = f"{prefix}guard:{merchant}:"
    return base + "breaker", base + "bucket:"


def in_flight_key(prefix: str, merchant: str) -> str:
    """The merchant's attempts in flight (the bulkhead): attempt ids scored by their deadline, Redis time."""
    return f"{prefix}guard:{merchant}:in_flight"


class RedisGuard:
    """One merchant's guard (``worker.gateway.guarding.Guard``). ``sleep``: the bounded in-process wait for a token."""

    def __init__(self, redis_client: Any, *, prefix: str, merchant: str, settings: GuardSettings,
                 observer: GuardObserver | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings.check()
        self.merchant = merchant
        self._breaker_key, self._bucket_key = _keys(prefix, merchant)
        self._in_flight_key = in_flight_key(prefix, merchant)
        self._admit = redis_client.register_script(_script("admit"))
        self._settle = redis_client.register_script(_script("settle"))
        self._observer: GuardObserver = observer or _NullObserver()
        self._sleep = sleep
        self._clock = clock
        # until when (clock) this process trusts Redis's last "closed, no failures" without asking (settings.recheck)
        self._closed_until = 0.0

    def _tells_breaker(self, ticket: _Ticket, verdict: str) -> bool:
        if not self.settings.breaker_failures:
            return False
        if verdict == UP and not ticket.probe and ticket.failures == 0:
            return False
        return not (verdict == NEUTRAL and not ticket.probe)

    def _rate(self, lane: str) -> float:
        return self.settings.look_rate if lane == "look" else self.settings.rate

    def admit(self, lane: str) -> _Ticket:
        """Admit one attempt in ``lane``, waiting at most ``max_wait`` in all for a token (``busy_wait`` for a place
        under the in-flight cap); else raise Throttled (the limit, the cap) or GatewayUnavailable (the breaker), with
        how long to wait before asking again."""
        s = self.settings
        trusting = self._trusting(lane)
        if trusting and self._clock() < self._closed_until:
            return _TRUSTED  # no round trip: the breaker was closed with no failures a moment ago (recheck)
        slot = uuid.uuid4().hex if s.max_in_flight else ""
        waited = 0.0
        while True:
            verdict, value = self._ask(lane, slot)
            if verdict == "ok":
                if trusting and value == 0:
                    self._closed_until = self._clock() + s.recheck
                return _Ticket(probe=False, failures=int(value), slot=slot or None)
            self._closed_until = 0.0  # open, half-open, throttled or busy: ask again next time
            if verdict == "probe":
                log.info("gateway breaker (%s): half-open, this attempt is the probe", self.merchant)
                return _Ticket(probe=True, failures=0, slot=slot or None)
            pause = self._pause(verdict, value, waited)  # or raises: held back
            self._sleep(pause)
            waited += pause

    def _trusting(self, lane: str) -> bool:
        """Whether this lane may go on Redis's last "closed, no failures" for ``recheck`` seconds: the breaker only
        (a rate limit takes a token per attempt and the cap a place, so with either the lane asks every time)."""
        s = self.settings
        return bool(s.breaker_failures) and s.recheck > 0 and self._rate(lane) == 0 and not s.max_in_flight

    def _ask(self, lane: str, slot: str) -> tuple[str, float]:
        """One admit.lua round trip: (verdict, seconds)."""
        s = self.settings
        try:
            verdict, seconds, _state = self._admit(
                keys=[self._breaker_key, self._bucket_key + lane, self._in_flight_key],
                args=[repr(self._rate(lane)), s.burst, "1" if s.breaker_failures else "0", repr(s.probe_lease),
                      repr(s.cooldown), s.max_in_flight, repr(s.probe_lease), slot])
        except redis.RedisError as exc:  # nothing is sent unasked: the fence after it needs Redis anyway
            log.warning("gateway guard (%s): Redis unavailable (%s); attempt held back", self.merchant,
                        type(exc).__name__)
            raise Held(f"not sent: the gateway guard could not reach Redis ({type(exc).__name__})",
                       retry_after=REDIS_RETRY_AFTER) from None
        return _text(verdict), float(_text(seconds))

    def _pause(self, verdict: str, value: float, waited: float) -> float:
        """How long to wait in process before asking again, or raise: the attempt is held back (nothing sent)."""
        s = self.settings
        if verdict == "throttled" and waited + value <= s.max_wait:
            return value
        if verdict == "throttled":
            self._observer.held(self.merchant, "throttled")
            raise Throttled(f"gateway rate limit reached ({self.merchant})", retry_after=value)
        if verdict == "busy" and waited + BUSY_POLL <= s.busy_wait:
            return BUSY_POLL
        if verdict == "busy":  # a throttle, not an outage: the merchant's gateway answers, slowly
            self._observer.held(self.merchant, "busy")
            raise Throttled(f"gateway busy: too many requests in flight for merchant {self.merchant} "
                            f"({s.max_in_flight})", retry_after=BUSY_RETRY_AFTER)
        self._observer.held(self.merchant, "breaker_open")
        # spread over half a wait more: the payments held now must not all come back at the same moment
        raise GatewayUnavailable(f"gateway unavailable: circuit breaker open ({self.merchant})",
                                 retry_after=value * random.uniform(1.0, 1.5))

    def settle(self, ticket: _Ticket, verdict: str) -> None:
        """Free the attempt's place under the in-flight cap, and tell the breaker how the attempt went: a round trip
        only when the cap is on or it changes something (a failure, a probe's answer, the first success after
        failures)."""
        s = self.settings
        if verdict == DOWN:
            self._closed_until = 0.0  # this process saw the gateway fail: its next attempt asks the breaker
        tell = self._tells_breaker(ticket, verdict)
        if not tell and ticket.slot is None:
            return
        keys = [self._breaker_key] + ([self._in_flight_key] if ticket.slot else [])
        try:
            change = _text(self._settle(keys=keys, args=[verdict if tell else NEUTRAL, s.breaker_failures,
                                                         repr(s.cooldown), "1" if ticket.probe else "0",
                                                         ticket.slot or ""]))
        except redis.RedisError as exc:  # never in the way of the attempt's own outcome: the breaker misses one count
            # (and the place under the cap is freed at its deadline)
            log.warning("gateway guard (%s): breaker not told (%s)", self.merchant, type(exc).__name__)
            return
        if change == "opened":
            log.warning("gateway breaker (%s): OPEN for %gs after %s", self.merchant, s.cooldown,
                        "the probe failed" if ticket.probe else f"{s.breaker_failures} consecutive failures")
            self._observer.breaker(self.merchant, "opened")
        elif change == "closed":
            log.warning("gateway breaker (%s): closed (the gateway answered)", self.merchant)
            self._observer.breaker(self.merchant, "closed")


@dataclass(frozen=True)
class BreakerState:
    merchant: str
    state: str  # closed, open, half_open
    failures: int
    opened: int  # how many times it opened (since the key was made)
    open_for: float  # seconds left of the cooldown (open only)


def breaker_state(redis_client: Any, *, prefix: str, merchant: str) -> BreakerState:
    """What ``payments status`` and the metrics show: the breaker as it stands, by Redis time."""
    key, _ = _keys(prefix, merchant)
    state, failures, open_until, opened = (_text(v) if v is not None else "" for v in
                                           redis_client.hmget(key, "state", "failures", "open_until", "opened"))
    seconds, micros = redis_client.time()
    now = float(seconds) + float(micros) / 1e6
    state = state or "closed"
    left = max(0.0, float(open_until or 0) - now)
    if state == "open" and left == 0:
        state = "half_open"  # the cooldown is over: the next attempt is the probe
    return BreakerState(merchant, state, int(failures or 0), int(opened or 0), round(left, 1))


def in_flight(redis_client: Any, *, prefix: str, merchant: str) -> int:
    """The merchant's attempts in flight now (places whose deadline passed not counted)."""
    seconds, micros = redis_client.time()
    return int(redis_client.zcount(in_flight_key(prefix, merchant), f"({float(seconds) + float(micros) / 1e6:.6f}",
                                   "+inf"))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
