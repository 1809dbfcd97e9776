"""The ``payments`` command: demo, sandbox, show, list, sweep, enqueue, bench.

Errors a user can act on (Redis down, gateway unreachable, bad arguments) end in one line on stderr
and exit status 2, not a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys

import redis

EXIT_USAGE = 2

OUTCOME_LINES = (
    ("Transaction Status", "status"),
    ("Transaction Message", "message"),
    ("Transaction ID", "trans_id"),
    ("Transaction AVS Result", "avs"),
    ("Transaction CVV2 Result", "cvv2"),
    ("Masked Payment Account", "masked_account"),
    ("Card Type", "card_type"),
    ("Transaction Auth Code", "auth_code"),
)


class CommandError(Exception):
    """A failure to report in one line."""


def format_outcome(outcome: dict) -> str:
    return "\n".join(f"{label}: {outcome.get(key) or ''}" for label, key in OUTCOME_LINES)


def _services():
    from worker.services import services

    return services()


def _ping_redis(svc):
    # One plain try: the services' client retries for ~35 s to ride out a Redis restart, too long for a person.
    probe = redis.Redis.from_url(svc.settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        probe.ping()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise CommandError(f"cannot reach Redis at {svc.settings.redis_url}: {exc}") from None
    finally:
        probe.close()


def cmd_show(args) -> int:
    svc = _services()
    _ping_redis(svc)
    record = svc.store.get(args.payment_id)
    if record is None:
        raise CommandError(f"no payment with id {args.payment_id!r}")
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True))
        return 0
    print(f"payment {record['payment_id']} ({record.get('operation')}, {record.get('amount') or '-'})")
    print(format_outcome(record))
    for key in ("order_id", "target", "parent", "voided_by", "attempts", "created_at", "updated_at"):
        if record.get(key) not in (None, ""):
            print(f"{key}: {record[key]}")
    print("history:")
    for entry in record.get("history", []):
        print(f"  {entry.get('at')}  {entry.get('status'):<9} {entry.get('note', '')}")
    return 0


def cmd_list(args) -> int:
    svc = _services()
    _ping_redis(svc)
    records = svc.store.list(status=args.status, operation=args.operation, limit=args.limit)
    if args.json:
        print(json.dumps(records, indent=2, sort_keys=True))
        return 0
    print(f"{'payment_id':<40} {'operation':<8} {'status':<9} {'amount':>9} {'trans_id':<12} message")
    for r in records:
        print(f"{r['payment_id']:<40} {r.get('operation', ''):<8} {r.get('status', ''):<9} "
              f"{r.get('amount') or '':>9} {r.get('trans_id') or '':<12} {r.get('message') or ''}")
    return 0


def cmd_sweep(args) -> int:
    from worker.sweep import run_sweep

    svc = _services()
    _ping_redis(svc)
    done = [0]

    def progress():
        done[0] += 1
        if done[0] % 50 == 0:
            print(f"... {done[0]} handled", file=sys.stderr)

    print(json.dumps(run_sweep(svc, progress=progress), sort_keys=True))
    return 0


def cmd_enqueue(args) -> int:
    svc = _services()
    _ping_redis(svc)
    import tasks

    op = args.operation
    if op in ("sale", "auth"):
        card = {"number": args.card_number, "expire": args.expire}
        if args.cvv2:
            card["cvv2"] = args.cvv2
        customer = {k: getattr(args, k) for k in ("name1", "name2", "addr1", "addr2", "city", "state", "zipcode",
                                                     "country") if getattr(args, k)}
        sig = getattr(tasks, op).s(amount=args.amount, card=card, customer=customer or None,
                                   order_id=args.order_id, idempotency_key=args.idempotency_key)
        result = (sig | tasks.void.s()).delay() if args.then_void else sig.delay()
    elif op == "void":
        result = tasks.void.delay(args.trans_id, idempotency_key=args.idempotency_key)
    else:
        result = getattr(tasks, op).delay(args.trans_id, amount=args.amount, idempotency_key=args.idempotency_key)
    print(f"enqueued {op} task {result.id}", file=sys.stderr)
    if not args.wait:
        print(result.id)
        return 0
    from celery.exceptions import TimeoutError as CeleryTimeout

    try:
        steps = []
        node = result
        while node is not None:
            steps.append(node)
            node = node.parent
        for step in reversed(steps):
            outcome = step.get(timeout=args.timeout)
            print(f"== {outcome.get('operation', op)} {outcome.get('payment_id')}")
            print(json.dumps(outcome, indent=2, sort_keys=True) if args.json else format_outcome(outcome))
    except CeleryTimeout:
        raise CommandError(f"no outcome within {args.timeout:g}s: is a worker running? (task {result.id})") from None
    return 0


def cmd_sandbox(args) -> int:
    from worker.sandbox.server import main as sandbox_main

    return sandbox_main(args.sandbox_args) or 0


def cmd_demo(args) -> int:
    from worker.demo import run_demo

    return run_demo(timeout=args.timeout, start_worker=args.start_worker)


def cmd_bench(args) -> int:
    from bench.run import main as bench_main

    return bench_main(args.bench_args) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="payments", description="Payments worker: BluePay jobs on Celery.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the seed scenario (3.00 sale + void, 4.00 sale + skipped void)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each outcome")
    p.add_argument("--start-worker", choices=("auto", "always", "never"), default="auto",
                   help="start a local worker (auto: only when none answers a ping)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sandbox", help="run the BluePay-compatible sandbox gateway", add_help=False)
    p.add_argument("sandbox_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_sandbox)

    p = sub.add_parser("show", help="print one stored payment record")
    p.add_argument("payment_id")
    p.add_argument("--json", action="store_true", help="the record as JSON")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("list", help="list stored payment records, newest first")
    p.add_argument("--status", help="only this status (APPROVED, DECLINED, ERROR, UNKNOWN, SKIPPED, VOIDED, ...)")
    p.add_argument("--operation", choices=("sale", "auth", "capture", "refund", "void"))
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("sweep", help="run the sweep now: stale auths, unknown outcomes, due chain voids")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("enqueue", help="enqueue one operation and print its outcome")
    p.add_argument("operation", choices=("sale", "auth", "capture", "refund", "void"))
    p.add_argument("--amount")
    p.add_argument("--card-number")
    p.add_argument("--expire", help="MMYY")
    p.add_argument("--cvv2")
    for field in ("name1", "name2", "addr1", "addr2", "city", "state", "zipcode", "country"):
        p.add_argument(f"--{field}")
    p.add_argument("--trans-id", help="the earlier transaction (capture/refund/void)")
    p.add_argument("--order-id", help="your order reference (sent as INVOICE_ID)")
    p.add_argument("--idempotency-key")
    p.add_argument("--then-void", action="store_true", help="chain a void after the sale")
    p.add_argument("--no-wait", dest="wait", action="store_false", help="print the task id and return")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_enqueue)

    p = sub.add_parser("bench", help="benchmark ours against a bare Celery baseline", add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    return parser


# Subcommands whose arguments belong to another parser. argparse's REMAINDER does not take arguments that
# start with "-" ("payments sandbox --port 8001" failed), so they are handed over untouched.
PASS_THROUGH = {"sandbox": "sandbox_args", "bench": "bench_args"}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv and argv[0] in PASS_THROUGH:
        args = parser.parse_args(argv[:1])
        setattr(args, PASS_THROUGH[argv[0]], argv[1:])
    else:
        args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CommandError as exc:
        print(f"payments: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        print(f"payments: error: cannot reach Redis: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
