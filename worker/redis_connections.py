"""Where Redis is: one node (``REDIS_URL``) or a Sentinel-managed group (``REDIS_SENTINELS``), for every user.

Every process finds Redis through this module: the results store, locks and the sweep (:func:`store_client`),
Celery's broker and result backend, so workers, beat, producers and Flower
(``worker.broker.celeryconfig.celery_settings``), and the CLI's one-try probe (:func:`probe_client`). Under
Sentinel each asks the sentinels for the current master on every (re)connect: redis-py's ``Sentinel.master_for``
for the store, kombu's ``sentinel://`` transport and Celery's Sentinel result backend for the rest, so a failover
needs no restart of anything that reconnects.

Replication is asynchronous: a write the primary acknowledged can vanish with it in a failover. Where money
depends on a write (the claim and the attempt journal before a gateway send, the outbox entry at publish),
:func:`write_durably` sends ``WAIT <replicas> <ms>`` on the same connection right after the write and raises
:class:`ReplicaAckTimeout` when fewer replicas acknowledged it in time.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis
import tenacity
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from worker.config import parse_sentinels

if TYPE_CHECKING:
    from worker.config import Settings
    from worker.store.lua import Function

__all__ = ["ReplicaAckTimeout", "NotEnoughReplicas", "SentinelConnection", "parse_sentinels",
           "uses_sentinel", "store_client", "probe_client", "describe", "write_durably",
           "run_script_durably", "retry_not_durable", "database"]


class ReplicaAckTimeout(redis.RedisError):
    """Fewer replicas than REDIS_MIN_REPLICAS_ACK acknowledged a write in time: a failover now could lose it.

    Nothing that depends on the write may happen (no gateway send); the caller parks and retries."""

    def __init__(self, what: str, wanted: int, acked: int, timeout_ms: int) -> None:
        super().__init__(f"{what}: {acked} of {wanted} replica(s) acknowledged within {timeout_ms} ms")
        self.what, self.wanted, self.acked = what, wanted, acked


class NotEnoughReplicas(redis.ConnectionError):
    """NOREPLICAS: the node refuses writes (``min-replicas-to-write``): a primary cut off from its replicas, or
    one whose replicas are still syncing after a failover. Retried as a lost connection: the reconnect asks the
    sentinels for the master again."""


class SentinelConnection(SentinelManagedConnection):
    """redis-py's Sentinel connection, which already turns READONLY from a demoted master into a ConnectionError
    (reconnect, ask the sentinels again), doing the same with NOREPLICAS: the store, kombu and the result backend
    then retry it as they retry a lost connection instead of failing the payment, the publish or the ack. And every
    reconnect asks the sentinels where the master is (redis-py's own skips that on a retried command)."""

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        # redis-py 8.1 reconnects a dropped connection through here (send_packed_command), not through connect():
        # without asking the sentinels, a command retried after READONLY/NOREPLICAS went back to the demoted
        # primary until its retries ran out (measured: ~35 s, then the sweep's lock failed). redis/redis-py#3874.
        if not self._sock and self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except redis.ResponseError as exc:
            if str(exc).startswith("NOREPLICAS") and self.connection_pool.is_master:
                self.disconnect()
                raise NotEnoughReplicas(str(exc)) from exc
            raise


def uses_sentinel(settings: Settings) -> bool:
    return bool(settings.redis_sentinels.strip())


def database(settings: Settings) -> int:
    """The database number: REDIS_URL's path (``/3``), also under Sentinel."""
    path = urlsplit(settings.redis_url).path.strip("/")
    return int(path) if path.isdigit() else 0


def describe(settings: Settings) -> str:
    """Where Redis is, for messages (never a password)."""
    if uses_sentinel(settings):
        return f"Sentinel master {settings.redis_master_name!r} via {settings.redis_sentinels.strip()}"
    parts = urlsplit(settings.redis_url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"


# ---- the store's client ---------------------------------------------------------------------------------
def _sentinel(settings: Settings, *, socket_timeout: float) -> Sentinel:
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": socket_timeout, "socket_connect_timeout": 2}
    if settings.redis_sentinel_password:
        sentinel_kwargs["password"] = settings.redis_sentinel_password
    return Sentinel(parse_sentinels(settings.redis_sentinels), sentinel_kwargs=sentinel_kwargs)


def store_client(settings: Settings) -> redis.Redis:
    """The results store's client (records, outbox, locks, the sweep): retries ride out a Redis restart or a
    failover (~35 s of exponential backoff); under Sentinel every reconnect asks the sentinels for the master."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": 2,
        "socket_timeout": 10,
        "health_check_interval": 30,
        "retry": Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=20),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    }
    if not uses_sentinel(settings):
        return redis.Redis.from_url(settings.redis_url, **options)
    client: redis.Redis = _sentinel(settings, socket_timeout=2).master_for(
        settings.redis_master_name, db=database(settings), password=settings.redis_password or None,
        connection_class=SentinelConnection, **options)
    return client


def probe_client(settings: Settings) -> redis.Redis:
    """One plain try, no retries (the CLI's "is Redis there")."""
    options: dict[str, Any] = {"socket_connect_timeout": 2, "socket_timeout": 5}
    if not uses_sentinel(settings):
        return redis.Redis.from_url(settings.redis_url, **options)
    client: redis.Redis = _sentinel(settings, socket_timeout=2).master_for(
        settings.redis_master_name, db=database(settings), password=settings.redis_password or None,
        connection_class=SentinelConnection, retry=Retry(ExponentialBackoff(), retries=0), **options)
    return client


# ---- Celery: broker, result backend (workers, beat, producers, Flower) -----------------------------------
# ---- durable writes ------------------------------------------------------------------------------------
def write_durably(client: redis.Redis, what: str, queue: Callable[[Any], None], *, replicas: int,
                  timeout: float) -> list[Any]:
    """Run the commands ``queue`` adds to a pipeline, then ``WAIT replicas timeout`` on the same connection
    (one round trip, no MULTI: WAIT counts the replicas that acknowledged this connection's writes). Returns the
    commands' replies; raises :class:`ReplicaAckTimeout` when fewer than ``replicas`` acknowledged in time.
    ``replicas`` 0: the commands alone, no WAIT."""
    pipe = client.pipeline(transaction=False)
    queue(pipe)
    if replicas <= 0:
        return list(pipe.execute())
    timeout_ms = max(1, int(timeout * 1000))
    pipe.execute_command("WAIT", replicas, timeout_ms)
    *replies, acked = pipe.execute()
    if int(acked) < replicas:
        raise ReplicaAckTimeout(what, replicas, int(acked), timeout_ms)
    return replies


def run_script_durably(client: redis.Redis, script: Function, keys: list[str], args: list[Any], *, what: str,
                       replicas: int, timeout: float, needed: Callable[[Any], bool] = lambda reply: True) -> Any:
    """``FCALL`` of a store function (``worker.store.lua``), then ``WAIT`` on the same connection (one round trip);
    its reply. Raises :class:`ReplicaAckTimeout` when fewer than ``replicas`` acknowledged in time and ``needed(reply)``
    says the caller depends on the write (a claim that took no lease moves no money). ``replicas`` 0: the plain
    script call."""
    if replicas <= 0:
        return script(keys=keys, args=args)
    timeout_ms = max(1, int(timeout * 1000))

    def run() -> list[Any]:
        pipe = client.pipeline(transaction=False)
        script.queue(pipe, keys, args)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        return list(pipe.execute())

    # (a new primary after a failover, or a restarted one, that has not got the library: loaded, then run again)
    reply, acked = script.functions.call(run)
    if int(acked) < replicas and needed(reply):
        raise ReplicaAckTimeout(what, replicas, int(acked), timeout_ms)
    return reply


def retry_not_durable(call: Callable[[], Any], policy: Mapping[str, Any]) -> Any:
    """``call()``, again while it raises :class:`ReplicaAckTimeout`, as a Celery publish retry policy says
    (``max_retries``, ``interval_start``, ``interval_step``, ``interval_max``); then the last error is raised."""
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(ReplicaAckTimeout),
        stop=tenacity.stop_after_attempt(int(policy.get("max_retries", 3)) + 1),
        wait=tenacity.wait_incrementing(start=float(policy.get("interval_start", 0)),
                                        increment=float(policy.get("interval_step", 0.2)),
                                        max=float(policy.get("interval_max", 1))),
        reraise=True)
    return retrying(call)
