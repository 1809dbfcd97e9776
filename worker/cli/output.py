"""What every ``payments`` subcommand prints and how it fails: shared by ``worker.cli.main`` and ``worker.cli.demo``.

Errors a user can act on end in one line on stderr (``payments: error: ...``) and exit status 2.
"""
from __future__ import annotations

from collections.abc import Mapping

EXIT_USAGE = 2

OUTCOME_LINES = (
    ("Transaction Status", "status"),
    ("Transaction Message", "message"),
    ("Transaction ID", "trans_id"),
    ("Transaction AVS Result", "avs"),
    ("Transaction CVV2 Result", "cvv2"),
    ("Masked Payment Account", "masked_account"),
    ("Card Type", "card_type"),
    ("Transaction Auth Code", "auth_code"),
)


class CommandError(Exception):
    """A failure to report in one line."""


def format_outcome(outcome: Mapping[str, object]) -> str:
    """The eight lines BluePay's sample prints for one outcome."""
    return "\n".join(f"{label}: {outcome.get(key) or ''}" for label, key in OUTCOME_LINES)


def release(result: object) -> None:
    """Stop waiting for a Celery result and every parent in its chain, now.

    ``delay()`` subscribes this process to the result's pub/sub channel, and a ``get()`` that timed out
    keeps the result registered with the backend until the task finishes. Left alone, each is dropped
    at interpreter shutdown, where ``AsyncResult.__del__`` tries to UNSUBSCRIBE over a new connection and
    prints "Exception ignored in AsyncResult.__del__ ... sys.meta_path is None". Releasing them while
    the interpreter is whole unsubscribes cleanly; closing the pub/sub connection afterwards leaves
    nothing for shutdown to do.
    """
    backend = getattr(result, "backend", None)
    node = result
    while node is not None:
        if getattr(node, "backend", None) is not None:
            node.backend.remove_pending_result(node)  # type: ignore[attr-defined]
        node = getattr(node, "parent", None)
    consumer = getattr(backend, "result_consumer", None)
    if consumer is not None and hasattr(consumer, "stop"):
        consumer.stop()
