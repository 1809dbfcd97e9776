"""Celery tasks: thin glue between the broker and the payment flow (worker/flow.py).

``from tasks import sale, auth, capture, refund, void, sweep``.
"""
from tasks.payments import auth, capture, refund, sale, sweep, void

__all__ = ["sale", "auth", "capture", "refund", "void", "sweep"]
