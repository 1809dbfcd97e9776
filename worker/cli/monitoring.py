"""``payments metrics`` and ``payments status``: the exporter (worker/ops/exporter.py) and the status screen
(worker/ops/status.py)."""
from __future__ import annotations

import json
from typing import Any

from worker.cli.common import ping_redis, services


def cmd_metrics(args: Any) -> int:
    from worker.broker.app import app
    from worker.ops import exporter

    svc = services()
    if args.recount:
        ping_redis(svc)
        print(json.dumps(svc.store.health.recount(), sort_keys=True))
        return 0
    if args.once:
        ping_redis(svc)
        print(exporter.exposition(svc, app), end="")
        return 0
    # Serving goes on while Redis is away: the scrape says so (payments_exporter_redis_up 0).
    return exporter.serve(svc, app, port=args.port, host=args.host)


def cmd_status(args: Any) -> int:
    from worker.broker.app import app
    from worker.ops.status import main as status_main

    svc = services()
    ping_redis(svc)
    return status_main(svc, app, as_json=args.json, ping_timeout=args.ping_timeout)


def add_parsers(sub: Any) -> None:
    """Monitoring: the exporter and the status screen."""
    p = sub.add_parser("metrics", help="serve the store's and the broker's gauges for Prometheus",
                       description="Prometheus exporter of the results store and the broker (records by status, "
                                   "UNKNOWN and its age, outbox, queue, sweep); the workers serve their own "
                                   "counters on WORKER_METRICS_PORT.")
    p.add_argument("--port", type=int, default=9108, help="default 9108")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--once", action="store_true", help="print one scrape's text and exit")
    p.add_argument("--recount", action="store_true",
                   help="rebuild records by status and the UNKNOWN/RETRYING/needs_human indexes from the records "
                        "(once, after upgrading from a version without them; workers stopped), print the counts")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("status", help="one screen: workers, queue, money in doubt, outbox, sweep, gateway",
                       description="Exit status 1 when something needs a human (the conditions the alert rules "
                                   "page on), 0 when all is well, 2 when Redis cannot be reached.")
    p.add_argument("--json", action="store_true")
    p.add_argument("--ping-timeout", type=float, default=1.0, help="seconds to wait for workers' pings (default 1)")
    p.set_defaults(func=cmd_status)
