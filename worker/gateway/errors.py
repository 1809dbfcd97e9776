"""Exceptions raised by the gateway client.

::

    PaymentError                      base of everything we raise
    ├── InvalidInput(field, message)  our validation refused the request; nothing was sent
    └── GatewayError
        ├── NotSent                   connection refused, DNS failure, connect timeout: safe to retry
        │   ├── Expired               the gateway refused an attempt as TRANSACTION TOO OLD (not saved): retried
        │   ├── FenceLost             the caller's fence (lease check) before an attempt failed: nothing sent, stop
        │   └── Held(retry_after)     the shared guard (worker/guard/) held the attempt back: nothing sent, re-queue
        │       ├── Throttled         the shared rate limit (GATEWAY_RATE_LIMIT) has no room now
        │       └── GatewayUnavailable  the shared circuit breaker is open (or another worker's probe is out)
        ├── OutcomeUnknown            read timeout, reset after the request went out, HTTP 5xx, reply that
        │                             cannot be parsed or authenticated (bad/missing BP_STAMP on an approval),
        │                             MESSAGE=DUPLICATE (attribute .duplicate = True): reconcile, never blindly resend
        ├── Rejected(response)        the gateway answered Result=ERROR or MISSING (bad seal, invalid data); final
        └── ReportError               the daily report (bpdailyreport2) cannot be read as a whole; no verdict from it
            ├── MalformedReport(line, reason)  missing required columns, a row that does not fit the header,
            │                             a bad id/amount/status/date, garbage instead of CSV
            └── ReportIncomplete      the body ended (connection cut, truncated) before the report did

No message built here ever contains a card number, CVV2, seal or secret: callers pass
only field names, gateway MESSAGE texts and exception class names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .protocol import Response

__all__ = [
    "PaymentError",
    "InvalidInput",
    "GatewayError",
    "NotSent",
    "Expired",
    "FenceLost",
    "Held",
    "Throttled",
    "GatewayUnavailable",
    "OutcomeUnknown",
    "Rejected",
    "ReportError",
    "MalformedReport",
    "ReportIncomplete",
]


class PaymentError(Exception):
    """Base of everything the gateway package raises."""

    #: how many attempts were made (set by ``retry.call_with_retry`` on what it raises)
    attempts: int


class InvalidInput(PaymentError, ValueError):
    """Our validation refused the request; nothing was sent to the gateway."""

    def __init__(self, field: str, message: str = "invalid value") -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class GatewayError(PaymentError):
    """Something went wrong talking to the gateway."""

    #: class names of the transport exception behind it (set by ``transport.HttpTransport``; never chained)
    cause_name: str


class NotSent(GatewayError):
    """The request provably never reached the gateway: safe to retry."""


class Expired(NotSent):
    """The gateway answered ``TRANSACTION TOO OLD`` (a verified reply): the attempt's TRANS_SUBMIT_TIMESTAMP had
    expired, and BluePay does not save such a transaction. Nothing was charged by this attempt; another attempt
    (freshly stamped, after the fence passes again) is safe."""


class FenceLost(NotSent):
    """The fence the caller gave (the flow: "do I still hold this operation's lease?") refused an attempt before it
    was sent. Never retried: whoever holds the operation now decides."""


class Held(NotSent):
    """The shared guard (worker/guard/: rate limit, circuit breaker) held the attempt back before anything was sent.
    Never retried in process: the caller re-queues after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        self.retry_after = max(0.0, retry_after)
        super().__init__(message)


class Throttled(Held):
    """The shared rate limit has no room for this attempt now (not an outage: the gateway is fine)."""


class GatewayUnavailable(Held):
    """The shared circuit breaker is open: the gateway proved down; nothing is sent until the cooldown ends."""


class OutcomeUnknown(GatewayError):
    """The request may have been processed; reconcile (stq) before any resend.

    ``duplicate`` is True when the gateway answered MESSAGE=DUPLICATE.
    ``response`` is the parsed reply when there was one (e.g. duplicate).
    """

    def __init__(
        self,
        message: str = "outcome unknown",
        *,
        duplicate: bool = False,
        response: Response | None = None,
        status_code: int | None = None,
    ) -> None:
        self.duplicate = duplicate
        self.response = response
        self.status_code = status_code
        super().__init__(message)


class Rejected(GatewayError):
    """The gateway answered Result=ERROR or MISSING: final, do not retry."""

    def __init__(self, response: Response, message: str | None = None) -> None:
        self.response = response
        text = message if message is not None else _describe(response)
        super().__init__(text)

    @property
    def gateway_message(self) -> str:
        return getattr(self.response, "message", "") or ""


class ReportError(GatewayError):
    """The daily report cannot be used: nothing read from it may be trusted (never a partial verdict)."""


class MalformedReport(ReportError):
    """The report is not what bpdailyreport2 sends. ``line``: 1 is the header (0: the body as a whole)."""

    def __init__(self, line: int, reason: str) -> None:
        self.line = line
        self.reason = reason
        where = f"line {line}: " if line else ""
        super().__init__(f"malformed report: {where}{reason}")


class ReportIncomplete(ReportError):
    """The report's body ended before the report did (connection cut mid-stream, short body)."""


def _describe(response: Any) -> str:
    status = getattr(response, "status", "") or ""
    message = getattr(response, "message", "") or ""
    missing = getattr(response, "missing_field", "") or ""
    text = f"{status}: {message}" if message else status or "rejected"
    if missing:
        text += f" (missing {missing})"
    return text
