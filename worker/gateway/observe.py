"""What the client tells an observer (metrics): one call per HTTP attempt and one per retry.

The client knows nothing of Prometheus: ``worker/ops/metrics.py`` implements :class:`GatewayObserver` and
``worker/services.py`` hands it to the client. Labels stay bounded: an endpoint name, a result word, an
exception class name; never an id, an amount or anything from the request.
"""

from __future__ import annotations

from typing import Protocol

from .errors import NotSent, OutcomeUnknown, Rejected
from .protocol import Response

__all__ = ["GatewayObserver", "NullObserver", "NULL_OBSERVER", "result_of", "error_class_of"]


class GatewayObserver(Protocol):
    def request(self, endpoint: str, result: str, seconds: float) -> None:
        """One HTTP attempt to ``endpoint`` (bp10emu, stq) ended with ``result`` after ``seconds``."""

    def retry(self, error_class: str) -> None:
        """The retry policy is about to try again after ``error_class``."""


class NullObserver:
    def request(self, endpoint: str, result: str, seconds: float) -> None:
        pass

    def retry(self, error_class: str) -> None:
        pass


NULL_OBSERVER = NullObserver()


def result_of(reply: Response | list[Response] | None = None, exc: BaseException | None = None) -> str:
    """approved, declined, error, absent (stq found nothing), not_sent, unknown (outcome unknown), rejected.
    Several stq rows: the first one's (the newest, on our sandbox)."""
    if exc is not None:
        if isinstance(exc, NotSent):
            return "not_sent"
        if isinstance(exc, OutcomeUnknown):
            return "unknown"
        if isinstance(exc, Rejected):
            return "rejected"
        return "error"  # InvalidInput of a reply, or a bug: neither an answer nor a transport failure
    if isinstance(reply, list):
        reply = reply[0] if reply else None
    if reply is None:
        return "absent"
    if reply.approved:
        return "approved"
    return "declined" if reply.status == "DECLINED" else "error"


def error_class_of(exc: BaseException) -> str:
    """The transport's first exception class (ConnectTimeout, ConnectionError...), else the error's own class."""
    cause = getattr(exc, "cause_name", "") or ""
    name = cause.split(" ", 1)[0] if isinstance(cause, str) and cause else type(exc).__name__
    return name if name.isidentifier() else type(exc).__name__

