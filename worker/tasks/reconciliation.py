"""The daily settlement reconciliation under Celery beat (``payments.reconcile_report``, at RECONCILE_REPORT_AT):
the previous UTC day against the gateway's report, as ``payments reconcile --date yesterday`` does. A worker that
serves metrics counts it per merchant account (``payments_settlement_reconciliations_total{merchant,result}``,
``..._differences_total{merchant,kind}``)."""
from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Task

from worker.services import services_of
from worker.tasks.registry import TaskTable

log = logging.getLogger("payments.reconcile")

#: A report that cannot be had (gateway down, cut, malformed) is asked for again this often, this many times.
RETRY_EVERY = 600
RETRIES = 12


#: made on an app by ``worker.broker.app.create_app``
TASKS = TaskTable()


@TASKS.task(bind=True, name="payments.reconcile_report", max_retries=RETRIES)
def reconcile_report(self: Task, day: str | None = None) -> dict[str, Any]:
    """Reconcile ``day`` (YYYY-MM-DD; default: yesterday, UTC); returns the day's summary without its findings
    (those are kept in the store and logged)."""
    from worker.payments.decisions import merchants, reconciler
    from worker.payments.reconciliation import ReconcileError, parse_day

    when = parse_day(day) if day else datetime.now(UTC).date() - timedelta(days=1)
    svc = services_of(self.app)
    metrics = svc.metrics  # this process's (None: metrics off); each account's days under its own name
    summaries = []
    for merchant in merchants(svc):  # each merchant account's own report (worker/merchants.py)
        try:
            result = reconciler(svc, merchant).run_day(when)
        except ReconcileError as exc:
            if metrics is not None:
                metrics.settlement("no_verdict", {}, merchant)
            log.warning("reconcile %s (%s): %s; trying again in %d s", when, merchant, exc, RETRY_EVERY)
            raise self.retry(countdown=RETRY_EVERY, exc=exc) from None
        for finding in result.differences:
            log.error("reconcile %s: %s %s trans %s: %s (ours: %s; gateway: %s)", when, finding.kind.value,
                      finding.payment_id or "-", finding.trans_id or "-", finding.detail, finding.ours or "-",
                      finding.gateway or "-")
        summary = result.summary()
        summary.pop("findings", None)
        if metrics is not None:
            metrics.settlement("differences" if result.differences else "clean", summary["by_kind"], merchant)
        summaries.append(summary)
    first = summaries[0]
    return first if len(summaries) == 1 else {**first, "merchants": summaries[1:]}
