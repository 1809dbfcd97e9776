"""The payments worker: BluePay gateway client, results store, card vault, payment flow, sandbox.

`worker.app` is the Celery application (``celery -A worker worker``). It is loaded lazily so that
``python -m worker.sandbox`` and the pure modules do not pay for importing Celery.
"""


def __getattr__(name):
    if name in ("app", "celery"):
        from worker.broker.app import app

        return app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
