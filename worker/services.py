"""The one place that wires dependencies: settings -> Redis, results store, gateway client, card vault.

Objects are built lazily, once per process (prefork children build their own after the fork, so no
socket is shared across processes), and reused by every payment the process runs.
"""
from __future__ import annotations

import os
from functools import cached_property

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from worker.config import Settings, get_settings


class Services:
    def __init__(self, settings: Settings):
        self.settings = settings

    @cached_property
    def redis(self) -> redis.Redis:
        # Ride out a Redis restart (about 30 s) instead of failing the payment mid-flight.
        return redis.Redis.from_url(
            self.settings.redis_url,
            decode_responses=True,
            socket_connect_timeout=2,
            socket_timeout=10,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=20),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )

    @cached_property
    def store(self):
        from worker.store import ResultsStore

        return ResultsStore(self.redis, prefix=self.settings.key_prefix)

    @cached_property
    def gateway(self):
        from worker.gateway import BluePayClient, RetryPolicy

        s = self.settings
        return BluePayClient(
            account_id=s.bluepay_account_id,
            secret_key=s.bluepay_secret_key,
            mode=s.bluepay_mode,
            base_url=s.bluepay_url,
            hash_type=s.bluepay_hash_type,
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            retry_policy=RetryPolicy(max_attempts=s.retry_attempts, max_seconds=s.retry_seconds),
            **({"observer": self.metrics} if self.metrics is not None else {}),
        )

    @cached_property
    def metrics(self):
        """This process's Prometheus observer (worker/metrics.py), or None: metrics off, or not a worker."""
        from worker.metrics import observer

        return observer()

    @cached_property
    def vault(self):
        from worker.vault import load_card_key

        return load_card_key(self.settings.card_key, self.settings.bluepay_mode)

    @cached_property
    def card_keys(self) -> list[str]:
        """The card keys (first seals), also keying the card fingerprints idempotency keys are bound to."""
        from worker.vault import DEVELOPMENT_KEY

        keys = [k.strip() for k in self.settings.card_key.split(",") if k.strip()]
        return keys or [DEVELOPMENT_KEY]

    @cached_property
    def flow(self):
        from worker.flow import PaymentFlow

        s = self.settings
        return PaymentFlow(store=self.store, gateway=self.gateway, card_keys=self.card_keys,
                           lease_seconds=s.lease_seconds, commit_horizon=s.commit_horizon,
                           operation_budget=s.operation_budget, call_budget=s.call_budget,
                           **({"observer": self.metrics} if self.metrics is not None else {}))


_by_pid: dict[int, Services] = {}


def services() -> Services:
    pid = os.getpid()
    found = _by_pid.get(pid)
    if found is None:
        _by_pid.clear()
        found = _by_pid[pid] = Services(get_settings())
    return found


def install(svc: Services | None) -> Services | None:
    """Make ``svc`` what :func:`services` returns in this process (None: built from the environment again on
    next use); returns what was installed before. Tests run the tasks over their own store and gateway this way."""
    pid = os.getpid()
    previous = _by_pid.get(pid)
    _by_pid.clear()
    if svc is not None:
        _by_pid[pid] = svc
    return previous
