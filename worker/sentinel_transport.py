"""kombu's ``sentinel://`` transport and Celery's Sentinel result backend over our Sentinel connection.

Both are the libraries' own classes; only their Redis connection class changes to
:class:`worker.redis_connections.SentinelConnection`, which turns NOREPLICAS (a primary cut off from its replicas,
or one whose replicas are still syncing after a failover) into a connection error, as redis-py already does with
READONLY from a demoted master: kombu reconnects through the sentinels and retries the publish, the consumer
restarts, the result backend retries. ``worker.redis_connections.celery_settings`` names them in celeryconfig.
"""
from __future__ import annotations

from typing import Any

from celery.backends import redis as celery_redis
from kombu.transport import redis as kombu_redis

from worker.redis_connections import SentinelConnection

__all__ = ["SentinelTransport", "SentinelBackend"]


class SentinelChannel(kombu_redis.SentinelChannel):
    connection_class = SentinelConnection


class SentinelTransport(kombu_redis.SentinelTransport):
    """celeryconfig's ``broker_transport`` under Sentinel."""

    Channel = SentinelChannel


class SentinelBackend(celery_redis.SentinelBackend):
    """celeryconfig's ``result_backend`` class under Sentinel (``worker.sentinel_transport:SentinelBackend+sentinel://``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connparams["connection_class"] = SentinelConnection
