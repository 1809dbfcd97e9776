"""What the client asks of a guard shared by every worker (rate limit, circuit breaker: ``worker/guard/``) around
each HTTP attempt, and which outcomes prove the gateway down. Pure: no Redis here.

``admit(lane)`` before an attempt returns a ticket or raises :class:`~.errors.Held` (nothing is sent); ``settle``
after it says how it went. Lanes: ``pay`` (bp10emu: charges and follow-ups) and ``look`` (stq and the daily
report: reconciliation keeps a budget of its own).
"""
from __future__ import annotations

from typing import Any, Protocol, TypeVar

from .errors import Expired, GatewayError, OutcomeUnknown, Rejected

__all__ = ["Guard", "AnyGuard", "Ticket", "DOWN", "UP", "NEUTRAL", "verdict_of"]

#: what an attempt says of the gateway
DOWN, UP, NEUTRAL = "down", "up", "neutral"


class Ticket(Protocol):
    """The guard's note of one admitted attempt (whether it is the breaker's probe, what it saw)."""


#: a guard's own ticket type: what its admit gives back is what its settle takes
TicketT = TypeVar("TicketT")


class Guard(Protocol[TicketT]):
    def admit(self, lane: str) -> TicketT: ...

    def settle(self, ticket: TicketT, verdict: str) -> None: ...


#: any guard (the client only hands a guard's ticket back to that guard)
AnyGuard = Guard[Any]


def verdict_of(exc: BaseException | None) -> str:
    """DOWN for what proves the gateway unreachable or failing: a transport failure (refused, connect or read
    timeout, reset: the transport sets ``cause_name``) or an HTTP 5xx; UP for any answer (approved, declined,
    Rejected, DUPLICATE); NEUTRAL for what says nothing of the gateway (our own fence, a reply we could not read)."""
    if exc is None or isinstance(exc, (Rejected, Expired)):  # the gateway answered
        return UP
    if isinstance(exc, OutcomeUnknown) and exc.status_code is not None:
        return DOWN if exc.status_code >= 500 else UP
    if isinstance(exc, GatewayError) and bool(getattr(exc, "cause_name", None)):
        return DOWN
    if isinstance(exc, OutcomeUnknown) and exc.duplicate:
        return UP
    return NEUTRAL
