"""Celery tasks: thin glue between the broker and the payment flow (worker/payments/flow.py).

``from worker.tasks import sale, auth, capture, refund, void, sweep``; ``reconcile_report``
(worker/tasks/reconciliation.py). They live in the ``worker`` package so that a merchant's own ``tasks.py`` (Django's
and Celery's default layout) cannot shadow them; the top-level ``tasks`` package is a documented alias.
"""
from worker.tasks.payments import auth, capture, refund, sale, sweep, void
from worker.tasks.reconciliation import reconcile_report
from worker.tasks.webhooks import drain as webhooks_drain

__all__ = ["sale", "auth", "capture", "refund", "void", "sweep", "reconcile_report", "webhooks_drain"]
