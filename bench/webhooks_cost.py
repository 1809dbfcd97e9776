"""What webhooks cost per payment, measured: ``python -m bench.webhooks_cost [--payments N]`` (REDIS_URL; a private
key prefix, deleted after).

N sales are approved through the store's own transition Lua (the payment path, unchanged), then one drain takes them
in as events and delivers them to a local receiver answering 204. Printed side by side: Redis round trips and
commands (INFO commandstats, Lua's inner calls included) of the payment path per payment and of the webhook side
per event, and the drain's wall time per event. Ends with one line of JSON."""
from __future__ import annotations

import argparse
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis
from redis.connection import Connection

from worker.store import ResultsStore
from worker.webhooks.deliverer import Deliverer
from worker.webhooks.settings import WebhookSettings
from worker.webhooks.signing import new_secret


class _Count:
    sends = 0


def _counted_send(original: Any) -> Any:
    def send(self: Connection, *args: Any, **kw: Any) -> Any:
        _Count.sends += 1
        return original(self, *args, **kw)
    return send


def _calls(client: redis.Redis) -> int:
    stats: Any = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info",))



class _Server(ThreadingHTTPServer):
    request_queue_size = 64  # the listen backlog: 5 (the default) drops concurrent connects (a 1 s SYN retry)
    daemon_threads = True

@contextmanager
def _receiver() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def measure(url: str, payments: int) -> dict[str, Any]:
    client = redis.Redis.from_url(url, decode_responses=True)
    prefix = f"bench:wh:{uuid.uuid4().hex[:8]}:"
    original = Connection.send_packed_command
    Connection.send_packed_command = _counted_send(original)  # type: ignore[method-assign]  # counting round trips
    try:
        with _receiver() as hook_url:
            secret = new_secret()
            d = Deliverer(client, WebhookSettings(url=hook_url, secrets=(secret,), drain_seconds=60.0), prefix=prefix)
            d.drain(seconds=0.5)  # the consumer group
            store = ResultsStore(client, prefix=prefix)
            sends, calls = _Count.sends, _calls(client)
            for i in range(payments):
                store.claim(f"p{i}", "sale", owner="w", lease_seconds=30, fields={"amount": "3.00"})
                store.transition(f"p{i}", "APPROVED", owner="w", sent=True, fields={"trans_id": f"T{i}"})
            pay_trips, pay_cmds = _Count.sends - sends, _calls(client) - calls - 1
            sends, calls = _Count.sends, _calls(client)
            started = time.perf_counter()
            report = d.drain(seconds=60.0)
            seconds = time.perf_counter() - started
            hook_trips, hook_cmds = _Count.sends - sends, _calls(client) - calls - 1
            memory = sum(int(client.memory_usage(k) or 0) for k in client.scan_iter(match=prefix + "wh:*"))
    finally:
        Connection.send_packed_command = original  # type: ignore[method-assign]
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()
    delivered = report.results.get("delivered", 0)
    return {"payments": payments, "events": report.events, "delivered": delivered,
            "payment_path_round_trips_per_payment": round(pay_trips / payments, 2),
            "payment_path_redis_cmds_per_payment": round(pay_cmds / payments, 2),
            "webhook_round_trips_per_event": round(hook_trips / max(1, delivered), 2),
            "webhook_redis_cmds_per_event": round(hook_cmds / max(1, delivered), 2),
            "webhook_ms_per_event": round(1000 * seconds / max(1, delivered), 3),
            "webhook_bytes_per_event": round(memory / max(1, delivered))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--payments", type=int, default=500)
    args = parser.parse_args()
    result = measure(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), args.payments)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
