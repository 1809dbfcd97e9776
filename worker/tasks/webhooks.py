"""``payments.webhooks.drain``: one drain of the webhook schedule (worker/webhooks/deliverer.py), sent by beat every
WEBHOOK_DRAIN_INTERVAL to the ``webhooks`` queue (the default worker consumes it with the payments' queue; a
deployment can pin workers to either with ``-Q``)."""
from __future__ import annotations

import logging
import os
from typing import Any

from celery import Task

from worker.services import services_of
from worker.tasks.registry import TaskTable

log = logging.getLogger("payments.webhooks")
QUEUE = "webhooks"
_deliverers: dict[tuple[int, int], Any] = {}


def deliverer_for(svc: Any) -> Any:
    """This process's deliverer over ``svc``'s Redis (one HTTP session per process, made after a fork)."""
    from worker.webhooks.deliverer import Deliverer
    from worker.webhooks.settings import WebhookSettings

    key = (os.getpid(), id(svc))
    if key not in _deliverers:
        _deliverers[key] = Deliverer(svc.redis, WebhookSettings.from_env(), prefix=svc.settings.key_prefix)
    return _deliverers[key]


#: made on an app by ``worker.broker.app.create_app``
TASKS = TaskTable()


@TASKS.task(bind=True, name="payments.webhooks.drain", ignore_result=True)
def drain(self: Task) -> dict[str, Any]:
    report = deliverer_for(services_of(self.app)).drain()
    if report.events or report.results:
        log.info("webhooks: %d event(s), deliveries %s", report.events, report.results)
    return {"events": report.events, "results": report.results, "skipped": report.skipped}
