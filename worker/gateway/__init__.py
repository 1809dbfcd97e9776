"""BluePay 2.0 gateway client: pure protocol code plus an HTTP transport.

No Celery and no Redis here. Public names::

    BluePayClient, Response, Card, RetryPolicy, HttpTransport, HttpReply, Report, ReportRow,
    PaymentError, InvalidInput, GatewayError, NotSent, Expired, FenceLost, Held, Throttled,
    GatewayUnavailable, OutcomeUnknown, Rejected,
    ReportError, MalformedReport, ReportIncomplete
"""

from .client import BluePayClient
from .errors import (
    Expired,
    FenceLost,
    GatewayError,
    GatewayUnavailable,
    Held,
    InvalidInput,
    MalformedReport,
    NotSent,
    OutcomeUnknown,
    PaymentError,
    Rejected,
    ReportError,
    ReportIncomplete,
    Throttled,
)
from .protocol import Response
from .report import Report, ReportRow
from .retry import RetryPolicy
from .transport import HttpReply, HttpTransport
from .validation import Card

__all__ = [
    "BluePayClient",
    "Response",
    "Card",
    "RetryPolicy",
    "HttpTransport",
    "HttpReply",
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
    "Report",
    "ReportRow",
    "ReportError",
    "MalformedReport",
    "ReportIncomplete",
]
