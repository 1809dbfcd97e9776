"""kombu's ``sentinel://`` transport and Celery's Sentinel result backend over our Sentinel connection.

Both are the libraries' own classes; only their Redis connection class changes to
:class:`worker.redis_connections.SentinelConnection`, which turns NOREPLICAS (a primary cut off from its replicas,
or one whose replicas are still syncing after a failover) into a connection error, as redis-py already does with
READONLY from a demoted master: kombu reconnects through the sentinels and retries the publish, the consumer
restarts, the result backend retries. ``worker.broker.celeryconfig.celery_settings`` installs the transport as what
``sentinel://`` means (:func:`install`) and names the backend in celeryconfig.
"""
from __future__ import annotations

from typing import Any

import kombu.transport
from celery.backends import redis as celery_redis
from kombu.transport import redis as kombu_redis

from worker.redis_connections import SentinelConnection

__all__ = ["SentinelTransport", "SentinelBackend", "install"]


class SentinelChannel(kombu_redis.SentinelChannel):
    connection_class = SentinelConnection


class SentinelTransport(kombu_redis.SentinelTransport):
    """What ``sentinel://`` broker URLs mean once :func:`install` ran."""

    Channel = SentinelChannel


class SentinelBackend(celery_redis.SentinelBackend):
    """celeryconfig's ``result_backend`` class under Sentinel (``worker.broker.sentinel:SentinelBackend+sentinel://``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connparams["connection_class"] = SentinelConnection


def install() -> None:
    """Make ``sentinel://`` mean :class:`SentinelTransport` in this process, in kombu's own table of transport
    names. (Not ``broker_transport``: when a connection fails over to the next ``sentinel://`` URL, kombu resolves
    that URL's scheme again, which fell back to its stock transport; and Flower picks its broker page by the
    scheme.)"""
    kombu.transport.TRANSPORT_ALIASES["sentinel"] = f"{__name__}:SentinelTransport"
