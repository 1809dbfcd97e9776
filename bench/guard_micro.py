"""What the gateway guard (worker/guard/) costs per payment: ``python -m bench.guard_micro`` (REDIS_URL; a private
key prefix, deleted afterwards).

One approved sale is one HTTP attempt: the client admits it and settles it as "up". Measured per payment, guard off
(nothing is asked), rate limit only, breaker only (asked on every attempt with GATEWAY_BREAKER_RECHECK=0, then the
default: a closed breaker trusted for a second), both, the in-flight cap only, all three: Redis round trips
(commands this client sent, from the client's side), wall time and CPU of this process (the Lua script's time in
Redis is in the wall time). The rate and the cap are set high enough never to hold: this is the cost of asking, not
of waiting.
"""
import dataclasses
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from worker.gateway.guarding import UP  # noqa: E402
from worker.guard import GuardSettings, RedisGuard  # noqa: E402


class Counting:
    """Counts what the guard sends to Redis (scripts are registered once; each call is one EVALSHA round trip)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.calls = 0

    def register_script(self, text: str):
        script = self.client.register_script(text)

        def call(keys, args):
            self.calls += 1
            return script(keys=keys, args=args)

        return call


def one_payment(guard: RedisGuard | None) -> None:
    if guard is not None:
        guard.settle(guard.admit("pay"), UP)


def measure(name: str, client: redis.Redis, prefix: str, settings: GuardSettings | None, n: int) -> dict:
    counting = Counting(client)
    guard = None if settings is None else RedisGuard(counting, prefix=prefix, merchant="bench", settings=settings)
    for _ in range(200):
        one_payment(guard)
    counting.calls = 0
    walls, cpus = [], []
    for _ in range(5):
        w, c = time.perf_counter(), time.process_time()
        for _ in range(n):
            one_payment(guard)
        walls.append((time.perf_counter() - w) / n * 1e6)
        cpus.append((time.process_time() - c) / n * 1e6)
    return {"name": name, "round_trips": counting.calls / (5 * n), "wall_us": statistics.median(walls),
            "cpu_us": statistics.median(cpus)}


def main() -> int:
    client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    prefix = f"bench:guard:{uuid.uuid4().hex[:8]}:"
    n = int(os.environ.get("GUARD_BENCH_N", "2000"))
    limit = GuardSettings(rate=1e6, look_rate=1e5, burst=10**6)
    rows = [measure("off", client, prefix, None, n),
            measure("rate limit", client, prefix, dataclasses.replace(limit, breaker_failures=0), n),
            # the breaker asked on every attempt (GATEWAY_BREAKER_RECHECK=0), and by default (trusted for 1 s)
            measure("breaker/0", client, prefix, GuardSettings(recheck=0.0), n),
            measure("breaker", client, prefix, GuardSettings(), n),
            measure("both", client, prefix, limit, n),
            # the bulkhead (GATEWAY_MAX_IN_FLIGHT): the settle frees the place after every attempt
            measure("cap", client, prefix, GuardSettings(max_in_flight=10**6, breaker_failures=0), n),
            measure("all three", client, prefix, dataclasses.replace(limit, max_in_flight=10**6), n)]
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    print(f"{'guard':<12}{'round trips':>12}{'wall us':>10}{'cpu us':>9}   per payment, median of 5 x {n}")
    for r in rows:
        print(f"{r['name']:<12}{r['round_trips']:>12.4f}{r['wall_us']:>10.1f}{r['cpu_us']:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
