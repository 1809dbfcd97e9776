"""Celery settings for the payments worker, as ``config_for(settings)``: every value comes from the settings
(worker/config.py). ``worker.broker.app.create_app`` uses it; the module itself builds and reads nothing at import
(the top-level ``celeryconfig.py`` is the environment's settings as a module, for ``config_from_object``).
Why each one is set:
"""
from typing import Any
from urllib.parse import quote

from celery.schedules import crontab
from kombu import Queue

from worker.config import Settings, parse_sentinels
from worker.redis_connections import database, uses_sentinel


def celery_settings(settings: Settings) -> dict[str, Any]:
    """``broker_url``, ``result_backend`` and the Sentinel transport options to merge into the rest (REDIS_URL, or
    sentinel:// URLs with the master's name when REDIS_SENTINELS is set: worker/redis_connections.py)."""
    if not uses_sentinel(settings):
        return {"broker_url": settings.redis_url, "result_backend": settings.redis_url,
                "broker_transport_options": {}, "result_backend_transport_options": {},
                "broker_channel_error_retry": False, "broker_transport": None}
    auth = f":{quote(settings.redis_password, safe='')}@" if settings.redis_password else ""
    db = database(settings)
    # kombu and Celery take the master's password from the first URL, the sentinels' from sentinel_kwargs.
    url = ";".join(f"sentinel://{auth}{_host(h)}:{p}/{db}" for h, p in parse_sentinels(settings.redis_sentinels))
    options: dict[str, Any] = {"master_name": settings.redis_master_name}
    if settings.redis_sentinel_password:
        options["sentinel_kwargs"] = {"password": settings.redis_sentinel_password}
    # A demoted or cut-off primary answers READONLY / NOREPLICAS, which kombu counts as channel errors: the worker's
    # consumer reconnects (through the sentinels) instead of stopping (celery#7946; the workaround celery#6348 cites).
    # Imported here, not at the top: Celery's loader imports the top-level celeryconfig while gevent is still
    # monkey-patching (``-P gevent``), and kombu's Redis transport imported then keeps the unpatched select(): the
    # worker's loop blocks every greenlet (no ping answered, no task run). Only a Sentinel set-up needs it.
    from worker.broker import sentinel

    sentinel.install()  # sentinel:// is kombu's Sentinel transport over SentinelConnection, in this process
    return {"broker_url": url, "result_backend": f"{sentinel.__name__}:SentinelBackend+{url}",
            "broker_transport": None,
            "broker_transport_options": dict(options), "result_backend_transport_options": dict(options),
            "broker_channel_error_retry": True}


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def config_for(_s: Settings) -> dict[str, Any]:
    """Celery's settings for ``_s``: every lowercase name assigned below."""
    # REDIS_URL, or sentinel:// URLs with the master's name when REDIS_SENTINELS is set (celery_settings above).
    _redis = celery_settings(_s)

    # Redis is both the broker and the result backend, so AsyncResult.get() returns the outcome dict.
    broker_url = _redis["broker_url"]
    broker_transport = _redis["broker_transport"]
    result_backend = _redis["result_backend"]
    # JSON only: no pickle from the broker (code execution), and outcomes stay readable by other programs.
    task_serializer = "json"
    result_serializer = "json"
    accept_content = ["json"]
    event_serializer = "json"
    # Acknowledge after the task ran, and requeue when the worker process dies mid-task: a payment job
    # is never lost. Duplicate runs this allows are made harmless by the results store's claim.
    task_acks_late = True
    task_reject_on_worker_lost = True
    # One message per worker process at a time: a crashed process holds at most one payment hostage,
    # and a slow gateway call does not leave prefetched jobs waiting behind it. Green pools (gevent) get 2
    # instead (worker/broker/app.py: GreenPoolPrefetch): with 1 they stall; their spawn still bounds what
    # they hold to concurrency + 1.
    worker_prefetch_multiplier = 1
    # Events for Flower: task-sent from producers and the worker's own task events. Arguments in the
    # events are the masked argsrepr/kwargsrepr set by PaymentTask, never the card.
    worker_send_task_events = True
    task_send_sent_event = True
    # The soft limit lets a task record its state before the hard limit kills it; both are derived from
    # the gateway budgets (send, reconcile, send again) in worker.config.
    task_soft_time_limit = _s.soft_time_limit
    task_time_limit = _s.hard_time_limit
    # A message unacknowledged for visibility_timeout is redelivered; it must exceed the hard limit, or a
    # payment still running would be handed to a second worker. kombu restores unacked messages from
    # its sweep every interval x throttle seconds (100 s by default): tie it to the timeout so that a
    # crashed payment resumes within about 1.1 x BROKER_VISIBILITY_TIMEOUT.
    broker_transport_options = {
        "visibility_timeout": _s.visibility_timeout,
        "unacked_restore_interval": max(1, int(_s.visibility_timeout // 10)),
        "unacked_restore_throttle": 1,
        **_redis["broker_transport_options"],
    }
    result_backend_transport_options = {"retry_policy": {"timeout": 5.0}, **_redis["result_backend_transport_options"]}
    # Publishing (a producer's delay(), a worker's chain link or re-queue) rides out a Redis restart of a few
    # seconds (~8.5 s of retries) instead of Celery's default ~0.6 s: a sale recorded just before Redis went down
    # otherwise ended FAILURE (ConnectionError) in the result backend and its chained void was never published.
    task_publish_retry_policy = {"max_retries": 10, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
    # Threads/gevent pools share one result-backend connection pool instead of one connection per task.
    result_backend_thread_safe = True
    # Results are a convenience for AsyncResult.get(); the results store (then the archive) keeps every outcome.
    # RESULT_EXPIRES (default 1 day): at 1,000,000 payments a day a week of results held ~6 GB of Redis.
    result_expires = _s.result_expires
    broker_connection_retry_on_startup = True
    # Under Sentinel, a READONLY/NOREPLICAS reply (a demoted or cut-off primary) reconnects the consumer like a lost
    # connection does (worker/redis_connections.py).
    broker_channel_error_retry = _redis["broker_channel_error_retry"]
    # When the broker connection drops mid-payment, let the running payment finish and record its outcome
    # instead of cancelling it mid-call; its message is redelivered and the store's claim answers it.
    worker_cancel_long_running_tasks_on_connection_loss = False
    # No ``imports``: create_app registers the payment tasks on the app (worker/tasks/; a merchant's own tasks.py
    # cannot shadow them).
    worker_hijack_root_logger = True
    # The beat schedule: the sweep voids stale authorizations and reconciles unknown outcomes.
    # ... and once a day, at RECONCILE_REPORT_AT (UTC), the previous day is reconciled against the gateway's report.
    _hour, _minute = _s.reconcile_report_time
    beat_schedule = {
        "payments-sweep": {"task": "payments.sweep", "schedule": _s.sweep_interval},
        "payments-reconcile-report": {"task": "payments.reconcile_report",
                                      "schedule": crontab(hour=_hour, minute=_minute)},
    }
    # ... and the webhook schedule, every WEBHOOK_DRAIN_INTERVAL (1 s), on its own queue: a slow endpoint never holds
    # a payment's message. Expiring: drains a stopped worker missed are dropped, not run in a burst.
    beat_schedule["payments-webhooks"] = {"task": "payments.webhooks.drain", "schedule": _s.webhook_drain_interval,
                                          "options": {"queue": "webhooks", "expires": 10}}
    task_routes = {"payments.webhooks.*": {"queue": "webhooks"}}
    # A worker started without -Q consumes both queues (a one-worker setup delivers); "-Q celery" / "-Q webhooks" pin.
    task_queues = (Queue("celery"), Queue("webhooks"))
    timezone = "UTC"
    return {name: value for name, value in locals().items() if not name.startswith("_")}
