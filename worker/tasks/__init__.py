"""Celery tasks: thin glue between the broker and the payment flow (worker/payments/flow.py).

``from worker.tasks import sale, auth, capture, refund, void, sweep``; ``reconcile_report``
(worker/tasks/reconciliation.py). They live in the ``worker`` package so that a merchant's own ``tasks.py`` (Django's
and Celery's default layout) cannot shadow them; the top-level ``tasks`` package is a documented alias.

Each name here is the task of ``worker.app`` (the environment's app), whatever app is current, found on first use:
importing this package builds no app. The task functions are kept in ``worker.tasks.payments`` /
``worker.tasks.reconciliation`` and made tasks of an app by ``worker.broker.app.create_app``.
"""
from __future__ import annotations

from typing import Any

from celery.local import Proxy


def _of_the_default_app(name: str) -> Any:
    def task() -> Any:
        from worker.broker.app import default_app

        return default_app().tasks[name]

    return Proxy(task)


sale = _of_the_default_app("payments.sale")
auth = _of_the_default_app("payments.auth")
credit = _of_the_default_app("payments.credit")
update = _of_the_default_app("payments.update")  # off unless PAYMENTS_ENABLE_CREDIT (docs/tokens.md)
capture = _of_the_default_app("payments.capture")
refund = _of_the_default_app("payments.refund")
void = _of_the_default_app("payments.void")
sweep = _of_the_default_app("payments.sweep")
reconcile_report = _of_the_default_app("payments.reconcile_report")
webhooks_drain = _of_the_default_app("payments.webhooks.drain")

__all__ = ["sale", "auth", "credit", "update", "capture", "refund", "void", "sweep", "reconcile_report",
           "webhooks_drain"]
