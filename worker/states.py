"""Named states of a payment operation and the words the flow uses to talk about them.

Plain Python, no Celery, no Redis: the store, the flow, the tasks and the sweep all speak these names.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

__all__ = [
    "Status", "FINAL", "NON_FINAL", "TASK_STATUSES", "Operation", "OPERATIONS", "FOLLOW_UPS",
    "ClaimKind", "Absent", "CannotTell", "ABSENT", "CANNOT_TELL",
]


class Status(StrEnum):
    """What the store says about one operation."""

    # in flight: not final
    PENDING = "PENDING"    # a worker holds the lease and may be talking to the gateway
    RETRYING = "RETRYING"  # parked; no attempt can have reached the gateway
    UNKNOWN = "UNKNOWN"    # parked; an attempt may have reached the gateway: only stq may settle it
    # final outcomes of the operation itself
    APPROVED = "APPROVED"
    DECLINED = "DECLINED"
    ERROR = "ERROR"
    SKIPPED = "SKIPPED"
    # later states of an original operation, after a follow-up
    VOIDED = "VOIDED"
    CAPTURED = "CAPTURED"
    REFUNDED = "REFUNDED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    UPDATED = "UPDATED"  # its amount was changed by an UPDATE, which stands in for it from then on


NON_FINAL: frozenset[Status] = frozenset({Status.PENDING, Status.RETRYING, Status.UNKNOWN})
FINAL: frozenset[Status] = frozenset(Status) - NON_FINAL
#: What a task may return as ``status`` (docs/design.md's contract): never PENDING or RETRYING.
TASK_STATUSES: frozenset[Status] = FINAL | {Status.UNKNOWN}

Operation = Literal["sale", "auth", "credit", "capture", "refund", "void", "update"]
#: credit: money to a card with no original (docs/tokens.md; off unless PAYMENTS_ENABLE_CREDIT)
OPERATIONS: frozenset[str] = frozenset({"sale", "auth", "credit", "capture", "refund", "void", "update"})
FOLLOW_UPS: frozenset[str] = frozenset({"capture", "refund", "void", "update"})

#: What claiming an operation in the store found (see ``worker.store.Claim``).
ClaimKind = Literal["claimed", "final", "busy", "resumed", "mismatch", "exists"]


@dataclass(frozen=True)
class Absent:
    """stq answered: the gateway has no transaction under this ORDER_ID (as of now)."""


@dataclass(frozen=True)
class CannotTell:
    """stq gave no usable answer (failed, unauthenticated, or a row of another type)."""

    reason: str = ""
    #: seconds after which asking makes sense again when the shared guard held the lookup back (worker/guard/:
    #: breaker open, rate limit): stq was not asked at all, so it is no try of the sweep's
    held_for: float | None = None


ABSENT = Absent()
CANNOT_TELL = CannotTell()
