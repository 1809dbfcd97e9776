"""``payments sweep``, ``reconcile`` and ``resolve``: what operators run by hand (the sweep is worker/payments/sweep.py;
reconciliation worker/cli/reconcile.py over worker/payments/decisions.py)."""
from __future__ import annotations

import json
import sys
from typing import Any

from worker.cli import archive
from worker.cli.common import ping_redis, services


def cmd_sweep(args: Any) -> int:
    from worker.broker.app import default_app
    from worker.broker.outbox import AppPublisher
    from worker.payments.sweep import run_sweep

    svc = services()
    ping_redis(svc)
    done = [0]

    def progress() -> None:
        done[0] += 1
        if done[0] % 50 == 0:
            print(f"... {done[0]} handled", file=sys.stderr)

    print(json.dumps(run_sweep(svc, publisher=AppPublisher(default_app()), progress=progress), sort_keys=True))
    return 0


def cmd_reconcile(args: Any) -> int:
    from worker.cli.reconcile import cmd_reconcile as reconcile

    svc = services()
    ping_redis(svc)
    return reconcile(svc, args)


def cmd_resolve(args: Any) -> int:
    from worker.cli.reconcile import cmd_resolve as resolve

    svc = services()
    ping_redis(svc)
    return resolve(svc, args)


def add_parsers(sub: Any) -> None:
    """What operators run: the sweep, the archive, reconciliation and their decisions."""
    p = sub.add_parser("sweep", help="run the sweep now: stale auths, unknown outcomes, due chain voids")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "archive", help="move final records older than PAYMENTS_RETENTION (or --before) from Redis to the archive",
        description="Copy final records (with their history) last changed before the cutoff, and the audit "
                    "entries before it, to the archive (PAYMENTS_ARCHIVE_URL), then remove them from Redis; what "
                    "must stay (not final, open auths, needs_human, chains not finished) stays. The sweep does the "
                    "same in bounded batches; this runs until done, under the sweep's lock.")
    p.add_argument("--before", metavar="DATE", help="cutoff: YYYY-MM-DD or an ISO-8601 time, UTC (default: now "
                                                    "minus PAYMENTS_RETENTION); at least a day ago")
    p.add_argument("--migrate", action="store_true",
                   help="create or upgrade the archive's schema (Alembic) and stop, unless --before is given too")
    p.add_argument("--restore-keys", action="store_true",
                   help="give archived records changed within PAYMENTS_KEY_RETENTION their key index entry back "
                        "(records archived before the key index existed: run once after upgrading), and stop")
    p.set_defaults(func=archive.cmd_archive)

    p = sub.add_parser(
        "reconcile", help="compare the store with the gateway's daily report (exit 0: no difference left)",
        description="Pull the gateway's daily report (bpdailyreport2) for each day (UTC), match it with the store "
                    "by ORDER_ID and trans id, finalise operations the store did not know the end of (audited), and "
                    "list every other difference for a human. The day's reconciliation is kept in the store. Exit "
                    "status: 0 no difference left, 1 differences, 2 no verdict (gateway, Redis or arguments).")
    p.add_argument("--date", help="one day: YYYY-MM-DD, today or yesterday")
    p.add_argument("--from", dest="start", help="first day of a range")
    p.add_argument("--to", dest="end", help="last day of a range (inclusive)")
    p.add_argument("--json", action="store_true", help="the days' summaries and findings as JSON")
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser(
        "resolve", help="record an operator's decision on a needs_human payment",
        description="Finalise a payment marked needs_human as STATUS, with your user name, the time and REASON in "
                    "its history and the audit stream. Refused for any other record, and when the gateway's kept "
                    "report (payments reconcile) says otherwise.")
    p.add_argument("payment_id")
    p.add_argument("--status", required=True, help="APPROVED, DECLINED, ERROR (nothing charged) or VOIDED")
    p.add_argument("--reason", required=True, help="why: what you checked (kept in the audit stream)")
    p.add_argument("--trans-id", help="the gateway's transaction (APPROVED, VOIDED)")
    p.set_defaults(func=cmd_resolve)
