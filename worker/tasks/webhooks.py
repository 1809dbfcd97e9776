"""``payments.webhooks.drain``: one drain of the webhook schedule (worker/webhooks/deliverer.py), sent by beat every
WEBHOOK_DRAIN_INTERVAL to the ``webhooks`` queue (the default worker consumes it with the payments' queue; a
deployment can pin workers to either with ``-Q``)."""
from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery import Task

from worker.services import services_of
from worker.tasks.registry import TaskTable

log = logging.getLogger("payments.webhooks")
QUEUE = "webhooks"
DRAIN = "payments.webhooks.drain"


class QuietDrains(logging.Filter):
    """Drops Celery's INFO lines about the drain (sent, received, succeeded: six a second with beat in the worker);
    its failures (ERROR) and what a drain did (``payments.webhooks``) are still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or DRAIN not in f"{record.msg} {record.args}"


for _name in ("celery.beat", "celery.worker.strategy", "celery.app.trace"):
    logging.getLogger(_name).addFilter(QuietDrains())
_deliverers: dict[tuple[int, int], Any] = {}


def deliverer_for(svc: Any) -> Any:
    """This process's deliverer over ``svc``'s Redis (one HTTP session per process, made after a fork)."""
    from worker.webhooks.deliverer import Deliverer
    from worker.webhooks.settings import WebhookSettings

    key = (os.getpid(), id(svc))
    if key not in _deliverers:
        settings = WebhookSettings.from_env()  # first: a bad setting is said before anything is built
        _deliverers[key] = Deliverer(svc.redis, settings, prefix=svc.settings.key_prefix, card_keys=svc.card_keys)
    return _deliverers[key]


#: made on an app by ``worker.broker.app.create_app``
TASKS = TaskTable()


_last_complaint = [0.0]


@TASKS.task(bind=True, name=DRAIN, ignore_result=True)
def drain(self: Task) -> dict[str, Any]:
    from worker.config import ConfigError

    try:
        deliverer = deliverer_for(services_of(self.app))
    except ConfigError as exc:
        # A bad PAYMENTS_WEBHOOK_* / WEBHOOK_* setting stops webhooks, never payments: said once a minute.
        if time.monotonic() - _last_complaint[0] > 60:
            _last_complaint[0] = time.monotonic()
            log.error("webhooks: not delivering: %s", exc)
        return {"error": str(exc)}
    report = deliverer.drain()
    if report.events or report.results:
        log.info("webhooks: %d event(s), deliveries %s", report.events, report.results)
    return {"events": report.events, "results": report.results, "skipped": report.skipped}
