"""``payments show`` and ``payments list``: stored payments, from Redis then the archive (worker/payments/lookup.py)."""
from __future__ import annotations

import json
import sys
from typing import Any

from worker.cli.common import ping_redis, services
from worker.cli.output import CommandError, format_outcome
from worker.merchants import valid_name


def find_record(svc: Any, payment_id: str) -> tuple[dict[str, Any] | None, str]:
    from worker.payments.lookup import ArchiveUnreadable
    from worker.payments.lookup import find_record as lookup

    try:
        return lookup(svc, payment_id)
    except ArchiveUnreadable as exc:
        raise CommandError(str(exc)) from None


def cmd_show(args: Any) -> int:
    svc = services()
    ping_redis(svc)
    record, where = find_record(svc, args.payment_id)
    if record is None:
        from worker.cards.numbers import mask_text

        raise CommandError(f"no payment with id {mask_text(args.payment_id)!r}")
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True))
        return 0
    print(f"payment {record['payment_id']} ({record.get('operation')}, {record.get('amount') or '-'})"
          + (" [archived]" if where == "archive" else ""))
    print(format_outcome(record))
    for key in ("order_id", "idempotency_key", "invoice_id", "target", "parent", "voided_by", "attempts",
                "created_at", "updated_at"):
        if record.get(key) not in (None, ""):
            print(f"{key}: {record[key]}")
    print("history:")
    for entry in record.get("history", []):
        print(f"  {entry.get('at')}  {entry.get('status'):<9} {entry.get('note', '')}")
    return 0


def cmd_list(args: Any) -> int:
    svc = services()
    ping_redis(svc)
    if args.merchant is not None and not valid_name(args.merchant):
        raise CommandError(f"--merchant: {args.merchant[:40]!r} is not a merchant account's name "
                           "(lower-case letters, digits, - and _)")
    records = list_records(svc, status=args.status, operation=args.operation, merchant=args.merchant,
                           limit=args.limit)
    if args.json:
        print(json.dumps(records, indent=2, sort_keys=True))
        return 0
    print(f"{'payment_id':<40} {'operation':<8} {'status':<9} {'amount':>9} {'trans_id':<12} message")
    for r in records:
        print(f"{r['payment_id']:<40} {r.get('operation', ''):<8} {r.get('status', ''):<9} "
              f"{r.get('amount') or '':>9} {r.get('trans_id') or '':<12} {r.get('message') or ''}")
    return 0


def list_records(svc: Any, *, status: str | None = None, operation: str | None = None, merchant: str | None = None,
                 limit: int = 50) -> list[dict[str, Any]]:
    from worker.payments.lookup import list_records as lookup

    return lookup(svc, status=status, operation=operation, merchant=merchant, limit=limit,
                  warn=lambda text: print(f"payments: warning: {text}", file=sys.stderr))


def add_parsers(sub: Any) -> None:
    """Reading stored payments."""
    p = sub.add_parser("show", help="print one stored payment record")
    p.add_argument("payment_id")
    p.add_argument("--json", action="store_true", help="the record as JSON")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("list", help="list stored payment records, newest first")
    p.add_argument("--status", help="only this status (APPROVED, DECLINED, ERROR, UNKNOWN, SKIPPED, VOIDED, ...)")
    p.add_argument("--operation", choices=("sale", "auth", "capture", "refund", "void"))
    p.add_argument("--merchant", metavar="NAME", help="only this merchant account's (default: the BLUEPAY_* one); "
                   "another account's are read from its own index, default's by filtering (docs/merchants.md)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
