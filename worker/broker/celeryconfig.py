"""Celery settings for the payments worker; every value comes from worker.config (the environment).

``config_for(settings)`` gives them for any settings (``worker.broker.app.create_app`` uses it); the module's own
names are those of the environment's settings, so ``app.config_from_object("worker.broker.celeryconfig")`` works (the
top-level ``celeryconfig`` is an alias of this module).
Why each one is set:
"""
from typing import Any

from celery.schedules import crontab
from kombu import Queue

from worker.config import Settings, get_settings
from worker.redis_connections import celery_settings
from worker.webhooks.settings import drain_interval_from_env


def config_for(_s: Settings) -> dict[str, Any]:
    """Celery's settings for ``_s``: every lowercase name assigned below."""
    # REDIS_URL, or sentinel:// URLs with the master's name when REDIS_SENTINELS is set (worker/redis_connections.py).
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
    # Tasks find their own names (payments.*) in worker/tasks/ (a merchant's own tasks.py cannot shadow it).
    imports = ("worker.tasks",)
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
    beat_schedule["payments-webhooks"] = {"task": "payments.webhooks.drain", "schedule": drain_interval_from_env(),
                                          "options": {"queue": "webhooks", "expires": 10}}
    task_routes = {"payments.webhooks.*": {"queue": "webhooks"}}
    # A worker started without -Q consumes both queues (a one-worker setup delivers); "-Q celery" / "-Q webhooks" pin.
    task_queues = (Queue("celery"), Queue("webhooks"))
    timezone = "UTC"
    return {name: value for name, value in locals().items() if not name.startswith("_")}


globals().update(config_for(get_settings()))
