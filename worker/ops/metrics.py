"""The worker's own Prometheus metrics (prometheus-client), served on ``WORKER_METRICS_PORT`` (0: off, the default).

What is counted, and where it is said (the flow and the gateway client only know their observer protocols,
``worker.payments.flow.FlowObserver`` and ``worker.gateway.observe.GatewayObserver``; ``worker/services.py`` hands them
:class:`WorkerMetrics` when this process serves metrics)::

    payments_operations_total{merchant,operation,status}
                                                       final outcomes this process wrote (each final outcome is
                                                       written once, by one process: the sum over workers equals
                                                       the store's records that reached that status)
    payments_amount_total{merchant,operation,status}   their amounts (a float: fine for a dashboard, not for books)
    payments_parked_total{merchant,operation,status}   parkings as RETRYING / UNKNOWN (one operation may park often)
    payments_gateway_request_seconds{merchant,endpoint,result}
                                                       one HTTP attempt; result: approved, declined, error, absent
                                                       (stq found nothing), not_sent, unknown, rejected
    payments_gateway_retries_total{merchant,error_class}
                                                       in-process retries, by the transport's exception class
    payments_reconciliations_total{merchant,result}    stq lookups by ORDER_ID: found, absent, cannot_tell
    payments_settlement_reconciliations_total{merchant,result}
                                                       days reconciled against the gateway's daily report by the
                                                       beat task (tasks/reconciliation.py): clean, differences,
                                                       no_verdict (the report could not be had or read whole)
    payments_settlement_differences_total{merchant,kind}
                                                       what those found, by kind (worker/payments/reconciliation.py),
                                                       adopted too
    payments_gateway_held_total{merchant,reason}       attempts the shared guard held back (worker/guard/): throttled
                                                       (rate limit), busy (in-flight cap), breaker_open (breaker)
    payments_gateway_breaker_changes_total{merchant,change}
                                                       breaker changes this process made: opened, closed (its state,
                                                       shared by every worker: payments_gateway_breaker_state, exporter)
    payments_in_flight{merchant,operation}             deliveries (and sweep reconciliations) holding an operation
    payments_archived_records_total                    records the sweep's retention moved to the archive
    payments_archive_unavailable_total                 sweeps whose retention found the archive unusable (nothing
                                                       deleted; counted by worker/archive/retention.py)

Labels are bounded: a merchant account's name (only configured ones, BLUEPAY_ACCOUNTS, validated: ``default`` for the
BLUEPAY_* account; a message naming an account the workers do not know is refused and counted as ``unknown``), an
operation, a status, an endpoint, a result word, an exception class name; never an id, an amount or merchant data
(anything else is counted as ``other``). The flow and the gateway client of one account are handed
:meth:`WorkerMetrics.for_merchant`, which adds the account's name: their observer protocols stay merchant-free.

Processes: every pool uses prometheus-client's multiprocess mode, so prefork children's values add up. At worker
start (:func:`start`, Celery's ``worker_init``) the endpoint is bound first; only then is the directory
(``PROMETHEUS_MULTIPROC_DIR``, default ``<tmp>/payments-worker-metrics-<port>``) emptied and used, so a second
worker started on a port already taken never wipes the first one's files: it logs an ERROR and runs without
metrics (payments never stop for metrics). A prefork child that exits is marked dead (``worker_process_shutdown``),
and at each scrape the live gauges of processes that no longer exist (a killed child) are dropped.
"""
from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from worker.merchants import DEFAULT, valid_name
from worker.states import OPERATIONS, Status

log = logging.getLogger("payments.metrics")

ENDPOINTS = frozenset({"bp10emu", "stq"})
RESULTS = frozenset({"approved", "declined", "error", "absent", "not_sent", "unknown", "rejected"})
RECONCILIATIONS = frozenset({"found", "absent", "cannot_tell"})
HELD = frozenset({"throttled", "busy", "breaker_open"})
#: The label of a refusal of a message naming a merchant account the workers do not know (never the name it gave).
UNKNOWN_MERCHANT = "unknown"
BREAKER_CHANGES = frozenset({"opened", "closed"})
SETTLEMENTS = frozenset({"clean", "differences", "no_verdict"})
SETTLEMENT_KINDS = frozenset({"gateway_only", "ours_only", "status_mismatch", "amount_mismatch", "settled_but_voided",
                              "voided_at_gateway", "adopted"})
STATUSES = frozenset(s.value for s in Status)
#: Seconds; the read timeout is 15 s by default, so the top buckets still tell a slow gateway from a dead one.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)

#: Set once this process (or, under prefork, its parent before the fork) serves metrics.
_active: dict[str, Any] = {}


def _bounded(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else "other"


def _merchant(value: str) -> str:
    """A merchant account's name as a label: only configured names (and ``unknown``) reach here, checked again."""
    return value if valid_name(value) else "other"


def _class_name(value: str) -> str:
    return value if value.isidentifier() and len(value) <= 40 else "other"


class WorkerMetrics:
    """The flow's and the gateway client's observer, over prometheus-client's metric objects.

    Never raises: a metric that cannot be written is logged once and the payment goes on."""

    def __init__(self, registry: Any = None) -> None:
        """``registry``: None (the multiprocess files are what is served), or a registry a unit test reads."""
        from prometheus_client import Counter, Gauge, Histogram

        r = registry
        self.operations = Counter("payments_operations", "Final outcomes written by this process",
                                  ["merchant", "operation", "status"], registry=r)
        self.amount = Counter("payments_amount", "Amounts of the final outcomes written (float)",
                              ["merchant", "operation", "status"], registry=r)
        self.parked_ops = Counter("payments_parked", "Operations parked as RETRYING or UNKNOWN",
                                  ["merchant", "operation", "status"], registry=r)
        self.gateway = Histogram("payments_gateway_request_seconds", "One HTTP attempt to the gateway",
                                 ["merchant", "endpoint", "result"], buckets=LATENCY_BUCKETS, registry=r)
        self.retries = Counter("payments_gateway_retries", "In-process retries of gateway calls",
                               ["merchant", "error_class"], registry=r)
        self.reconciliations = Counter("payments_reconciliations", "stq lookups by ORDER_ID, by answer",
                                       ["merchant", "result"], registry=r)
        self.settlements = Counter("payments_settlement_reconciliations",
                                   "Days reconciled against the gateway's report, by result", ["merchant", "result"],
                                   registry=r)
        self.settlement_differences = Counter("payments_settlement_differences",
                                              "Differences the settlement reconciliation found, by kind",
                                              ["merchant", "kind"], registry=r)
        self.held_attempts = Counter("payments_gateway_held", "Attempts the shared guard held back, by reason",
                                     ["merchant", "reason"], registry=r)
        self.breaker_changes = Counter("payments_gateway_breaker_changes", "Breaker changes made by this process",
                                       ["merchant", "change"], registry=r)
        self.in_flight_ops = Gauge("payments_in_flight", "Deliveries holding an operation now",
                                   ["merchant", "operation"], multiprocess_mode="livesum", registry=r)
        self._children: dict[tuple[Any, ...], Any] = {}
        self._bound: dict[str, MerchantMetrics] = {}
        self._failed = False
        self.known((DEFAULT,))

    def known(self, merchants: Iterable[str]) -> None:
        """Start the rare counters of these (configured) merchant accounts at 0: a series born at 1 (the day's one
        gateway_only) has no increase() to Prometheus, and the settlement alerts would never fire."""
        for name in merchants:
            merchant = _merchant(name)
            for result in sorted(SETTLEMENTS):
                self.settlements.labels(merchant, result)
            for change in sorted(BREAKER_CHANGES):
                self.breaker_changes.labels(merchant, change)
            for kind in sorted(SETTLEMENT_KINDS):
                self.settlement_differences.labels(merchant, kind)

    def for_merchant(self, merchant: str) -> MerchantMetrics:
        """The flow's and the gateway client's observer for one merchant account (its name on every series)."""
        bound = self._bound.get(merchant)
        if bound is None:
            bound = self._bound[merchant] = MerchantMetrics(self, _merchant(merchant))
        return bound

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _broken(self, exc: Exception) -> None:
        if not self._failed:
            self._failed = True
            log.error("metrics: not recorded (%s); payments go on", type(exc).__name__)

    # ---- worker.payments.flow.FlowObserver and worker.gateway.observe.GatewayObserver, through for_merchant;
    # called here directly, the default account's (or ``merchant``'s, checked)
    def outcome(self, operation: str, status: str, amount: str, merchant: str = DEFAULT) -> None:
        self._outcome(_merchant(merchant), operation, status, amount)

    def parked(self, operation: str, status: str, merchant: str = DEFAULT) -> None:
        self._parked(_merchant(merchant), operation, status)

    def reconciliation(self, result: str, merchant: str = DEFAULT) -> None:
        self._reconciliation(_merchant(merchant), result)

    def in_flight(self, operation: str, delta: int, merchant: str = DEFAULT) -> None:
        self._in_flight(_merchant(merchant), operation, delta)

    def request(self, endpoint: str, result: str, seconds: float, merchant: str = DEFAULT) -> None:
        self._request(_merchant(merchant), endpoint, result, seconds)

    def retry(self, error_class: str, merchant: str = DEFAULT) -> None:
        self._retry(_merchant(merchant), error_class)

    def settlement(self, result: str, kinds: dict[str, int], merchant: str = DEFAULT) -> None:
        """One day of one account reconciled against the gateway's report: its result and what it found by kind."""
        try:
            name = _merchant(merchant)
            self._child(self.settlements, name, _bounded(result, SETTLEMENTS)).inc()
            for kind, n in kinds.items():
                if n:
                    self._child(self.settlement_differences, name, _bounded(kind, SETTLEMENT_KINDS)).inc(n)
        except Exception as exc:
            self._broken(exc)

    # (merchant: a label already checked, by the caller or by MerchantMetrics once)
    def _outcome(self, merchant: str, operation: str, status: str, amount: str) -> None:
        try:
            labels = (merchant, _bounded(operation, OPERATIONS), _bounded(status, STATUSES))
            self._child(self.operations, *labels).inc()
            if amount:
                try:
                    value = float(Decimal(amount))
                except (InvalidOperation, ValueError):
                    return
                if value > 0:
                    self._child(self.amount, *labels).inc(value)
        except Exception as exc:
            self._broken(exc)

    def _parked(self, merchant: str, operation: str, status: str) -> None:
        try:
            self._child(self.parked_ops, merchant, _bounded(operation, OPERATIONS), _bounded(status, STATUSES)).inc()
        except Exception as exc:
            self._broken(exc)

    def _reconciliation(self, merchant: str, result: str) -> None:
        try:
            self._child(self.reconciliations, merchant, _bounded(result, RECONCILIATIONS)).inc()
        except Exception as exc:
            self._broken(exc)

    def _in_flight(self, merchant: str, operation: str, delta: int) -> None:
        try:
            self._child(self.in_flight_ops, merchant, _bounded(operation, OPERATIONS)).inc(delta)
        except Exception as exc:
            self._broken(exc)

    def _request(self, merchant: str, endpoint: str, result: str, seconds: float) -> None:
        try:
            labels = (merchant, _bounded(endpoint, ENDPOINTS), _bounded(result, RESULTS))
            self._child(self.gateway, *labels).observe(seconds)
        except Exception as exc:
            self._broken(exc)

    def _retry(self, merchant: str, error_class: str) -> None:
        try:
            self._child(self.retries, merchant, _class_name(error_class)).inc()
        except Exception as exc:
            self._broken(exc)

    # ---- worker.guard.GuardObserver (merchant: a configured account's name, worker/merchants.py)
    def held(self, merchant: str, reason: str) -> None:
        try:
            self._child(self.held_attempts, _merchant(merchant), _bounded(reason, HELD)).inc()
        except Exception as exc:
            self._broken(exc)

    def breaker(self, merchant: str, change: str) -> None:
        try:
            self._child(self.breaker_changes, _merchant(merchant), _bounded(change, BREAKER_CHANGES)).inc()
        except Exception as exc:
            self._broken(exc)


class MerchantMetrics:
    """One merchant account's view of :class:`WorkerMetrics`: the flow's and the gateway client's observer."""

    def __init__(self, metrics: WorkerMetrics, merchant: str) -> None:
        """``merchant``: already a label (checked once, by :meth:`WorkerMetrics.for_merchant`)."""
        self.metrics = metrics
        self.merchant = merchant

    def outcome(self, operation: str, status: str, amount: str) -> None:
        self.metrics._outcome(self.merchant, operation, status, amount)

    def parked(self, operation: str, status: str) -> None:
        self.metrics._parked(self.merchant, operation, status)

    def reconciliation(self, result: str) -> None:
        self.metrics._reconciliation(self.merchant, result)

    def in_flight(self, operation: str, delta: int) -> None:
        self.metrics._in_flight(self.merchant, operation, delta)

    def request(self, endpoint: str, result: str, seconds: float) -> None:
        self.metrics._request(self.merchant, endpoint, result, seconds)

    def retry(self, error_class: str) -> None:
        self.metrics._retry(self.merchant, error_class)


_metrics_by_pid: dict[int, WorkerMetrics] = {}


def observer() -> WorkerMetrics | None:
    """This process's metrics, or None when it serves none (metrics off, or not a worker)."""
    if not _active:
        return None
    pid = os.getpid()
    found = _metrics_by_pid.get(pid)
    if found is None:
        _metrics_by_pid.clear()
        found = _metrics_by_pid[pid] = WorkerMetrics()
    return found


def default_dir(port: int) -> Path:
    """One directory per port: a host runs one worker per metrics port, so it is that worker's alone."""
    return Path(tempfile.gettempdir()) / f"payments-worker-metrics-{port}"


class _LiveCollector:
    """prometheus-client's multiprocess collector, after dropping the live gauges of processes that are gone
    (a prefork child killed before it could say so)."""

    def __init__(self, path: str) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.path = path
        self._collector = MultiProcessCollector(None, path=path)

    def collect(self) -> Any:
        from prometheus_client import multiprocess

        for name in glob.glob(os.path.join(self.path, "gauge_live*_*.db")):
            try:
                pid = int(name.rsplit("_", 1)[1][:-3])
            except ValueError:
                continue
            if not _alive(pid):
                multiprocess.mark_process_dead(pid, self.path)
        return self._collector.collect()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start(port: int, addr: str = "0.0.0.0") -> bool:
    """Serve this worker's metrics on ``port`` (called once, in the worker's main process, before any metric
    is made). False (logged) when the port cannot be bound: the worker runs on without metrics."""
    if port <= 0 or _active:
        return bool(_active)
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or str(default_dir(port))
    Path(path).mkdir(parents=True, exist_ok=True)
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_LiveCollector(path))
    try:
        server, _thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        log.error("metrics: cannot serve on %s:%d (%s): this worker runs WITHOUT metrics; give each worker on a "
                  "host its own WORKER_METRICS_PORT", addr, port, exc.strerror or type(exc).__name__)
        return False
    # Bound, so this directory is ours: empty it (the files of an earlier run on this port would add up).
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.remove(stale)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    from prometheus_client import values

    # Chosen when prometheus_client was imported; the directory may have been set only now.
    values.ValueClass = values.get_value_class()
    _active.update(port=port, path=path, server=server, started=time.time())
    log.info("metrics: serving on %s:%d (multiprocess directory %s)", addr, port, path)
    return True


def stop() -> None:
    """At worker shutdown: stop serving; remove the directory when it is the default one (made for this run)."""
    server = _active.pop("server", None)
    if server is not None:
        server.shutdown()
        server.server_close()
    path = _active.get("path")
    if path and Path(path) == default_dir(int(_active.get("port") or 0)):
        shutil.rmtree(path, ignore_errors=True)
    _active.clear()


def child_started() -> None:
    """In a prefork child: let go of the parent's listening socket (only the parent serves)."""
    server = _active.get("server")
    if server is not None:
        try:
            server.socket.close()
        except OSError:
            pass


def child_exiting() -> None:
    """In a prefork child that exits: its live gauges (in flight) stop counting; its counters stay."""
    path = _active.get("path")
    if path:
        from prometheus_client import multiprocess

        try:
            multiprocess.mark_process_dead(os.getpid(), path)
        except OSError:
            pass
