"""BluePay 2.0 gateway client: pure protocol code plus an HTTP transport.

No Celery and no Redis here. Public names::

    BluePayClient, Response, Card, RetryPolicy, HttpTransport, HttpReply,
    PaymentError, InvalidInput, GatewayError, NotSent, OutcomeUnknown, Rejected
"""

from .client import BluePayClient
from .errors import GatewayError, InvalidInput, NotSent, OutcomeUnknown, PaymentError, Rejected
from .protocol import Response
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
    "OutcomeUnknown",
    "Rejected",
]
