"""Celery tasks: thin glue between the broker and the payment flow (worker/flow.py).

``from tasks import sale, auth, capture, refund, void, sweep``; ``reconcile_report`` (tasks/reconciliation.py).
"""
from tasks.payments import auth, capture, refund, sale, sweep, void
from tasks.reconciliation import reconcile_report

__all__ = ["sale", "auth", "capture", "refund", "void", "sweep", "reconcile_report"]
