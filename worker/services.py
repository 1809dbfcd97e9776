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

from worker.config import DEFAULT, Settings, get_settings
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
        # per merchant account (worker/merchants.py) but ``default``: built on first use, once per process
        self._gateways: dict[str, BluePayClient] = {}
        self._guards: dict[str, RedisGuard | None] = {}
        self._flows: dict[str, PaymentFlow] = {}

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
        """The ``default`` merchant account's gateway client (BLUEPAY_*)."""
        return self._build_gateway(DEFAULT)

    @cached_property
    def guard(self) -> RedisGuard | None:
        """The ``default`` account's rate limit and circuit breaker shared by every worker (worker/guard/), or None:
        both off."""
        return self._build_guard(DEFAULT)

    def gateway_for(self, merchant: str) -> BluePayClient:
        """A merchant account's gateway client (worker/merchants.py; KeyError: no such account), one per process
        (``default``: :attr:`gateway`, which a test may have replaced)."""
        if merchant == DEFAULT:
            return self.gateway
        if merchant not in self._gateways:
            self._gateways[merchant] = self._build_gateway(merchant)
        return self._gateways[merchant]

    def guard_for(self, merchant: str) -> RedisGuard | None:
        """A merchant account's guard (its own rate limit and breaker in Redis), or None: both off for it."""
        if merchant == DEFAULT:
            return self.guard
        if merchant not in self._guards:
            self._guards[merchant] = self._build_guard(merchant)
        return self._guards[merchant]

    def _build_gateway(self, merchant: str) -> BluePayClient:
        from worker.gateway import BluePayClient, RetryPolicy
        from worker.gateway.observe import NULL_OBSERVER
        from worker.ops.preflight import MisconfigurationReporter

        s, account = self.settings, self.settings.account(merchant)
        return BluePayClient(
            account_id=account.account_id,
            secret_key=account.secret_key,
            mode=account.mode,
            base_url=account.url,
            hash_type=account.hash_type,
            platform_merchant_id=account.platform_merchant_id,
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            retry_policy=RetryPolicy(max_attempts=s.retry_attempts, max_seconds=s.retry_seconds),
            on_failure=MisconfigurationReporter(s, merchant),
            guard=self.guard_for(merchant),
            observer=self.metrics.for_merchant(merchant) if self.metrics is not None else NULL_OBSERVER,
        )

    def _build_guard(self, merchant: str) -> RedisGuard | None:
        import dataclasses

        from worker.guard import RedisGuard

        s, account = self.settings, self.settings.account(merchant)
        if not account.guard.on:
            return None
        # the probe's place is kept for one attempt's timeouts: a probe whose process died frees it then
        settings = dataclasses.replace(account.guard, probe_lease=s.connect_timeout + s.read_timeout + 5)
        return RedisGuard(self.redis, prefix=s.key_prefix, merchant=merchant, settings=settings,
                          observer=self.metrics)

    @cached_property
    def metrics(self) -> WorkerMetrics | None:
        """This process's Prometheus observer (worker/ops/metrics.py), or None: metrics off, or not a worker."""
        from worker.ops.metrics import observer

        found = observer()
        if found is not None:
            found.known(self.settings.merchant_names)
        return found

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
        """The ``default`` merchant account's payment flow."""
        return self._build_flow(DEFAULT)

    def flow_for(self, merchant: str) -> PaymentFlow:
        """A merchant account's payment flow (its gateway; records it writes carry its name). KeyError: no such
        (``default``: :attr:`flow`, which a test may have replaced)."""
        if merchant == DEFAULT:
            return self.flow
        if merchant not in self._flows:
            self._flows[merchant] = self._build_flow(merchant)
        return self._flows[merchant]

    @cached_property
    def unknown_merchant_flow(self) -> PaymentFlow:
        """The ``default`` account's flow, counted under merchant ``unknown``: it refuses a message naming an account
        the workers do not know (whose name never becomes a metric label)."""
        from worker.ops.metrics import UNKNOWN_MERCHANT

        return self._build_flow(DEFAULT, label=UNKNOWN_MERCHANT) if self.metrics is not None else self.flow

    def _build_flow(self, merchant: str, *, label: str | None = None) -> PaymentFlow:
        from worker.payments.flow import NullFlowObserver, PaymentFlow

        s = self.settings
        return PaymentFlow(store=self.store, gateway=self.gateway_for(merchant), card_keys=self.card_keys,
                           lease_seconds=s.lease_seconds, commit_horizon=s.commit_horizon,
                           operation_budget=s.operation_budget, call_budget=s.call_budget,
                           expire_minutes=s.submit_expiry_minutes, skew_margin=s.clock_skew_margin,
                           policy=ChargePolicy(s.avs_policy, s.cvv2_policy), merchant=merchant,
                           observer=self.metrics.for_merchant(label or merchant) if self.metrics is not None
                           else NullFlowObserver())

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
