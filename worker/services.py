"""The one place that wires dependencies: settings -> Redis, results store, gateway client, card vault, flow.

Objects are built lazily, once per process (prefork children build their own after the fork, so no
socket is shared across processes), and reused by every payment the process runs. Each Celery app built by
``worker.broker.app.create_app`` carries its own (:class:`ProcessServices`); tasks and the publish path use their
app's, so a test builds an app over its own settings or fakes without touching any global.
"""
from __future__ import annotations

import os
from functools import cached_property
from typing import TYPE_CHECKING, Any

import redis
from celery import current_app

from worker.config import Settings, get_settings
from worker.payments.policy import ChargePolicy

if TYPE_CHECKING:  # annotations only: each part is imported when it is first built (no import at start-up)
    from worker.archive.db import Archive
    from worker.cards.vault import CardVault
    from worker.gateway import BluePayClient
    from worker.guard import RedisGuard
    from worker.ops.metrics import WorkerMetrics
    from worker.payments.flow import PaymentFlow
    from worker.store import ResultsStore


class Services:
    def __init__(self, settings: Settings):
        self.settings = settings

    @cached_property
    def redis(self) -> redis.Redis:
        # One node or the Sentinel master; rides out a restart or a failover instead of failing mid-flight.
        from worker.redis_connections import store_client

        return store_client(self.settings)

    @cached_property
    def store(self) -> ResultsStore:
        from worker.store import ResultsStore

        return ResultsStore(self.redis, prefix=self.settings.key_prefix, replicas=self.settings.min_replicas_ack,
                            replica_timeout=self.settings.replica_ack_timeout)

    @cached_property
    def gateway(self) -> BluePayClient:
        from worker.gateway import BluePayClient, RetryPolicy
        from worker.gateway.observe import NULL_OBSERVER
        from worker.ops.preflight import MisconfigurationReporter

        s = self.settings
        return BluePayClient(
            account_id=s.bluepay_account_id,
            secret_key=s.bluepay_secret_key,
            mode=s.bluepay_mode,
            base_url=s.bluepay_url,
            hash_type=s.bluepay_hash_type,
            platform_merchant_id=s.bluepay_platform_merchant_id,
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            retry_policy=RetryPolicy(max_attempts=s.retry_attempts, max_seconds=s.retry_seconds),
            on_failure=MisconfigurationReporter(s),
            guard=self.guard,
            observer=self.metrics if self.metrics is not None else NULL_OBSERVER,
        )

    @cached_property
    def guard(self) -> RedisGuard | None:
        """The gateway's rate limit and circuit breaker shared by every worker (worker/guard/), or None: both off."""
        if not self.settings.guard.on:
            return None
        import dataclasses

        from worker.guard import RedisGuard

        s = self.settings
        # the probe's place is kept for one attempt's timeouts: a probe whose process died frees it then
        settings = dataclasses.replace(s.guard, probe_lease=s.connect_timeout + s.read_timeout + 5)
        return RedisGuard(self.redis, prefix=s.key_prefix, merchant="default", settings=settings,
                          observer=self.metrics)

    @cached_property
    def metrics(self) -> WorkerMetrics | None:
        """This process's Prometheus observer (worker/ops/metrics.py), or None: metrics off, or not a worker."""
        from worker.ops.metrics import observer

        return observer()

    @cached_property
    def archive(self) -> Archive:
        """The archive of final records (``worker/archive/``, PAYMENTS_ARCHIVE_URL): connected on first use."""
        from worker.archive import Archive

        return Archive(self.settings.archive_url)

    @cached_property
    def vault(self) -> CardVault:
        from worker.cards.vault import load_card_key

        return load_card_key(self.settings.card_key, self.settings.bluepay_mode)

    @cached_property
    def card_keys(self) -> list[str]:
        """The card keys (first encrypts), also keying the card fingerprints idempotency keys are bound to."""
        from worker.cards.vault import DEVELOPMENT_KEY

        keys = [k.strip() for k in self.settings.card_key.split(",") if k.strip()]
        return keys or [DEVELOPMENT_KEY]

    @cached_property
    def flow(self) -> PaymentFlow:
        from worker.payments.flow import NullFlowObserver, PaymentFlow

        s = self.settings
        return PaymentFlow(store=self.store, gateway=self.gateway, card_keys=self.card_keys,
                           lease_seconds=s.lease_seconds, commit_horizon=s.commit_horizon,
                           operation_budget=s.operation_budget, call_budget=s.call_budget,
                           expire_minutes=s.submit_expiry_minutes, skew_margin=s.clock_skew_margin,
                           policy=ChargePolicy(s.avs_policy, s.cvv2_policy),
                           observer=self.metrics if self.metrics is not None else NullFlowObserver())


class ProcessServices:
    """One app's :class:`Services`, built once per process: a prefork child builds its own after the fork (no
    socket crosses processes). ``given``: these services in every process (tests: a fake store and gateway)."""

    def __init__(self, settings: Settings | None = None, *, given: Services | None = None) -> None:
        self._settings = settings
        self._given = given
        self._pid: int | None = None
        self._built: Services | None = None

    def get(self) -> Services:
        if self._given is not None:
            return self._given
        pid = os.getpid()
        if self._built is None or self._pid != pid:
            self._built = Services(self._settings or get_settings())
            self._pid = pid
        return self._built


#: What an app made without :func:`worker.broker.app.create_app` (or no app at all) uses: the environment's.
_from_environment = ProcessServices()


def attach(app: Any, holder: ProcessServices) -> None:
    """Make ``holder`` the services of Celery ``app`` (``create_app`` does it)."""
    app.payments_services = holder


def services_of(app: Any) -> Services:
    """The services of Celery ``app`` in this process."""
    holder: ProcessServices = getattr(app, "payments_services", None) or _from_environment
    return holder.get()


def services() -> Services:
    """The services of the current Celery app (a worker's own, a producer's ``worker.app``) in this process."""
    return services_of(current_app)
