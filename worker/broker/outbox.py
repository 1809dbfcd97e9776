"""The sweep's outbox publisher over one Celery app: publishes a kept payment message again, and says whether a
task already ran to its outcome. ``worker.payments.sweep`` is handed one (:class:`AppPublisher`) and imports no app.
"""
from __future__ import annotations

import logging
from typing import Any

from celery import Celery, states
from celery.app.amqp import task_message

from worker.cards.messages import masked_reprs, protect_body
from worker.services import services_of

log = logging.getLogger("payments.sweep")


def republish(message: dict[str, Any], publisher: Celery) -> None:
    """Publish an outbox message again through ``publisher``, as it was (same task id, chain), through the same
    encrypting and refusal as every other publish path (an entry kept by older code is encrypted now, or refused with
    CardDataRefused rather than published with card data in clear)."""
    headers = dict(message["headers"])
    # The message may have run before (its record lost with Redis): the worker asks stq before any send.
    headers["payments_republished"] = True
    body = protect_body(message["name"], message["body"], vault=services_of(publisher).vault, headers=headers)
    headers["argsrepr"], headers["kwargsrepr"] = masked_reprs(message["name"], body[0], body[1])
    again = task_message(headers=headers, properties={"correlation_id": headers["id"]},
                         body=tuple(body), sent_event=None)
    exchange, routing_key = message["exchange"] or None, message["routing_key"] or None
    # Published to the default exchange: the routing key names the queue (without queue=, Celery would send
    # it to the default queue whatever the key said).
    queue = routing_key if exchange is None and routing_key else None
    with publisher.producer_or_acquire() as producer:
        publisher.amqp.send_task_message(producer, message["name"], again, exchange=exchange, routing_key=routing_key,
                                         queue=queue)


class AppPublisher:
    """What the sweep needs of the broker, over ``app`` (worker/payments/sweep.py: ``OutboxPublisher``)."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def republish(self, message: dict[str, Any]) -> None:
        republish(message, self.app)

    def finished(self, task_id: str) -> bool:
        """Whether the result backend holds the task's SUCCESS (kept for RESULT_EXPIRES); when it cannot say, no."""
        try:
            return bool(self.app.AsyncResult(task_id).state == states.SUCCESS)
        except Exception as exc:  # the backend is a convenience: re-publishing is safe (the claim answers it)
            log.warning("sweep: result of %s unknown (%s); treated as not run", task_id, type(exc).__name__)
            return False
