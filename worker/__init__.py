"""The payments worker: BluePay gateway client, results store, card vault, payment flow, sandbox.

`worker.app` is the Celery application (``celery -A worker worker``), built on first use
(``worker.broker.app.default_app``): importing ``worker`` or any module in it builds nothing, so that
``python -m worker.sandbox`` and the pure modules do not pay for Celery.
"""
from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from worker.broker.app import default_app

        return default_app()
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
