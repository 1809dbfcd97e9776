"""What every ``payments`` command group shares: the services of this process and a Redis that answers now."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis

from worker.cli.output import CommandError


def services() -> Any:
    from worker.services import services as current

    return current()


def ping_redis(svc: Any) -> None:
    """One plain try: the services' client retries for ~35 s to ride out a Redis restart, too long for a person."""
    from worker.redis_connections import describe, probe_client

    probe = probe_client(svc.settings)
    try:
        probe.ping()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise CommandError(f"cannot reach Redis at {describe(svc.settings)}: {exc}") from None
    finally:
        probe.close()


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
