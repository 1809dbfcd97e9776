"""The ``payments`` command: demo, sandbox, show, list, sweep, reconcile, resolve, archive, enqueue, metrics,
status, bench.

Errors a user can act on (Redis down, gateway unreachable, bad arguments) end in one line on stderr
and exit status 2, not a traceback (``worker.cli.output``).
"""
from __future__ import annotations

import argparse
import functools
import getpass
import json
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import redis

from worker.cli.output import EXIT_USAGE, OUTCOME_LINES, CommandError, format_outcome, release
from worker.cli.webhooks import add_webhooks_commands

__all__ = ["EXIT_USAGE", "OUTCOME_LINES", "CommandError", "format_outcome", "build_parser", "main"]

CUSTOMER_OPTIONS = ("name1", "name2", "addr1", "addr2", "city", "state", "zipcode", "country")
#: What standard input may hold for ``payments enqueue sale|auth``: the card number, then the CVV2.
CARD_INPUT_MAX = 256


def _services():
    from worker.services import services

    return services()


def _ping_redis(svc):
    # One plain try: the services' client retries for ~35 s to ride out a Redis restart, too long for a person.
    from worker.redis_connections import describe, probe_client

    probe = probe_client(svc.settings)
    try:
        probe.ping()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise CommandError(f"cannot reach Redis at {describe(svc.settings)}: {exc}") from None
    finally:
        probe.close()


def find_record(svc, payment_id: str) -> tuple[dict | None, str]:
    from worker.payments.lookup import ArchiveUnreadable
    from worker.payments.lookup import find_record as lookup

    try:
        return lookup(svc, payment_id)
    except ArchiveUnreadable as exc:
        raise CommandError(str(exc)) from None


def cmd_show(args) -> int:
    svc = _services()
    _ping_redis(svc)
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


def cmd_list(args) -> int:
    svc = _services()
    _ping_redis(svc)
    records = list_records(svc, status=args.status, operation=args.operation, limit=args.limit)
    if args.json:
        print(json.dumps(records, indent=2, sort_keys=True))
        return 0
    print(f"{'payment_id':<40} {'operation':<8} {'status':<9} {'amount':>9} {'trans_id':<12} message")
    for r in records:
        print(f"{r['payment_id']:<40} {r.get('operation', ''):<8} {r.get('status', ''):<9} "
              f"{r.get('amount') or '':>9} {r.get('trans_id') or '':<12} {r.get('message') or ''}")
    return 0


def list_records(svc, *, status=None, operation=None, limit: int = 50) -> list[dict]:
    from worker.payments.lookup import list_records as lookup

    return lookup(svc, status=status, operation=operation, limit=limit,
                  warn=lambda text: print(f"payments: warning: {text}", file=sys.stderr))


def cmd_archive(args) -> int:
    from worker.archive import ArchiveUnavailable
    from worker.config import MIN_RETENTION

    svc = _services()
    settings, archive = svc.settings, svc.archive
    try:
        if args.migrate:
            print(f"archive {archive.where}: schema at revision {archive.migrate()}")
            if args.before is None and not args.restore_keys:
                return 0
        _ping_redis(svc)
        if args.restore_keys:
            print(json.dumps(restore_keys(svc.store, archive, settings.key_retention), sort_keys=True))
            return 0
        store = svc.store
        now = store.now()
        if args.before is not None:
            cutoff = parse_date(args.before)
        elif settings.retention:
            cutoff = now - settings.retention
        else:
            raise CommandError("PAYMENTS_RETENTION is 0 (off): say which records with --before DATE")
        if cutoff > now - MIN_RETENTION:
            raise CommandError(f"--before must be at least {MIN_RETENTION / 86400:g} day(s) ago: a message delivered "
                               "again after its record left Redis would be taken for a new operation")
        counts = _archive_in_rounds(store, archive, cutoff, settings)
    except ArchiveUnavailable as exc:
        raise CommandError(f"{exc}; nothing more archived or deleted (the records stay in Redis)") from None
    print(json.dumps({"before": _iso(cutoff), **counts}, sort_keys=True))
    return 0


def restore_keys(store, archive, key_retention: float, *, batch: int = 500) -> dict[str, int]:
    """Give every archived record changed within ``key_retention`` its key index entry back, unless Redis holds a
    record or an entry under its key (``store.retention.remember``): the upgrade step for records archived before
    the key index existed (issue 24). Idempotent; the newest operation under a key is the one its key answers."""
    since = store.now() - key_retention
    looked = restored = 0
    while True:
        page = archive.changed_since(since, limit=batch, offset=looked)
        if not page:
            return {"archived_looked_at": looked, "keys_restored": restored}
        looked += len(page)
        restored += len(store.retention.remember(page, key_retention=key_retention))


def _archive_in_rounds(store, archive, cutoff: float, settings) -> Counter:
    """Archive until done, in rounds that each hold the sweep's lock for at most twice the sweep's own time (a run
    killed mid-way blocks the sweeps no longer than that); a sweep that takes the lock between rounds goes on."""
    from worker.archive.retention import archive_older_than
    from worker.payments.sweep import LOCK_NAME

    ttl = 2 * max(60.0, settings.sweep_interval)
    total: Counter = Counter()
    while True:
        token = store.locks.acquire(LOCK_NAME, ttl_seconds=ttl)
        if token is None:
            if not total:
                raise CommandError("a sweep is running (it holds the sweep lock): try again when it is done")
            print("a sweep took the lock between rounds: it archives the rest", file=sys.stderr)
            return total
        try:
            counts = archive_older_than(store, archive, cutoff, batch=settings.archive_batch,
                                        deadline=time.monotonic() + ttl / 2, key_retention=settings.key_retention,
                                        progress=functools.partial(_archived, before=total["archived"]))
        finally:
            store.locks.release(LOCK_NAME, token)
        more = counts.pop("deadline", 0)
        total.update(counts)
        if not more:
            return total


def _archived(count: int, *, before: int = 0) -> None:
    if count:
        print(f"... {before + count} archived", file=sys.stderr)


def parse_date(text: str) -> float:
    """``2026-10-01`` or an ISO-8601 time (``2026-10-01T12:00:00Z``; without an offset: UTC) -> epoch seconds."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CommandError(f"--before: {text!r} is not a date (YYYY-MM-DD) or an ISO-8601 time") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def cmd_sweep(args) -> int:
    from worker.broker.app import default_app
    from worker.broker.outbox import AppPublisher
    from worker.payments.sweep import run_sweep

    svc = _services()
    _ping_redis(svc)
    done = [0]

    def progress():
        done[0] += 1
        if done[0] % 50 == 0:
            print(f"... {done[0]} handled", file=sys.stderr)

    print(json.dumps(run_sweep(svc, publisher=AppPublisher(default_app()), progress=progress), sort_keys=True))
    return 0


def cmd_reconcile(args) -> int:
    from worker.cli.reconcile import cmd_reconcile as reconcile

    svc = _services()
    _ping_redis(svc)
    return reconcile(svc, args)


def cmd_resolve(args) -> int:
    from worker.cli.reconcile import cmd_resolve as resolve

    svc = _services()
    _ping_redis(svc)
    return resolve(svc, args)


def read_card(stdin=None) -> tuple[str | None, str | None]:
    """The card number and CVV2, never from argv (the process list and shell history would keep them).

    A terminal gets two prompts without echo (getpass); otherwise standard input holds the number on
    its first line and, optionally, the CVV2 on its second. Empty means not given."""
    stdin = sys.stdin if stdin is None else stdin
    if stdin is not None and stdin.isatty():
        try:
            number = getpass.getpass("Card number: ")
            cvv2 = getpass.getpass("CVV2 (Enter for none): ")
        except EOFError:
            number, cvv2 = "", ""
    else:
        lines = (stdin.read(CARD_INPUT_MAX) if stdin is not None else "").splitlines()
        number = lines[0] if lines else ""
        cvv2 = lines[1] if len(lines) > 1 else ""
    return (number.strip() or None), (cvv2.strip() or None)


def check_input(op: str, *, amount, card=None, customer=None, order_id=None, trans_id=None) -> None:
    """Refuse what the worker would refuse, before anything is enqueued, with the message it would record
    (``invalid input: FIELD: ...``): the worker's own validation (worker/gateway/validation.py), called in
    the order the flow calls it (worker/payments/flow.py: card, amount, customer, order id; trans id, amount)."""
    from worker.gateway import InvalidInput, validation

    try:
        if op in ("sale", "auth"):
            validation.card(card)
            validation.amount(amount, allow_zero=(op == "auth"))
            validation.customer(customer)
            if order_id is not None:
                validation.invoice_id(order_id)
        else:
            validation.trans_id(trans_id)
            if op != "void" and amount is not None:
                validation.amount(amount)
    except InvalidInput as exc:
        raise CommandError(f"invalid input: {exc}") from None


def _refuse_card_options(args) -> None:
    given = [name for name, value in (("--card-number", args.card_number), ("--cvv2", args.cvv2)) if value]
    if given:
        raise CommandError(f"{' and '.join(given)} is not accepted on the command line (the process list and shell "
                           "history would keep it): type it at the prompt or pipe it on standard input, "
                           "card number on the first line, CVV2 on the second")


def _publish(op: str, args):
    """Validate, then enqueue; returns the AsyncResult (the void's, chained after the sale, with --then-void)."""
    from worker import tasks

    if op in ("sale", "auth"):
        number, cvv2 = read_card()
        card = {"number": number, "expire": args.expire}
        if cvv2:
            card["cvv2"] = cvv2
        customer = {k: getattr(args, k) for k in CUSTOMER_OPTIONS if getattr(args, k)} or None
        check_input(op, amount=args.amount, card=card, customer=customer, order_id=args.order_id)
        sig = getattr(tasks, op).s(amount=args.amount, card=card, customer=customer,
                                   order_id=args.order_id, idempotency_key=args.idempotency_key)
        return (sig | tasks.void.s()).delay() if args.then_void else sig.delay()
    check_input(op, amount=args.amount, trans_id=args.trans_id)
    if op == "void":
        return tasks.void.delay(args.trans_id, idempotency_key=args.idempotency_key)
    return getattr(tasks, op).delay(args.trans_id, amount=args.amount, idempotency_key=args.idempotency_key)


def _print_outcomes(result, op: str, args) -> None:
    from celery.exceptions import TimeoutError as CeleryTimeout

    steps = []
    node = result
    while node is not None:
        steps.append(node)
        node = node.parent
    try:
        for step in reversed(steps):
            outcome = step.get(timeout=args.timeout)
            print(f"== {outcome.get('operation', op)} {outcome.get('payment_id')}")
            print(json.dumps(outcome, indent=2, sort_keys=True) if args.json else format_outcome(outcome))
    except CeleryTimeout:
        raise CommandError(f"no outcome within {args.timeout:g}s: is a worker running? (task {result.id})") from None


def cmd_enqueue(args) -> int:
    op = args.operation
    _refuse_card_options(args)
    if args.then_void and op not in ("sale", "auth"):
        raise CommandError("--then-void follows a sale or an auth")
    svc = _services()
    _ping_redis(svc)
    from worker.cards.numbers import CardDataRefused

    try:
        result = _publish(op, args)
    except CardDataRefused as exc:  # card-like data outside the card: the producer refuses to publish it
        raise CommandError(str(exc)) from None
    try:
        print(f"enqueued {op} task {result.id}", file=sys.stderr)
        if not args.wait:
            print(result.id)
            return 0
        _print_outcomes(result, op, args)
        return 0
    finally:
        release(result)


def cmd_sandbox(args) -> int:
    from worker.sandbox.server import main as sandbox_main

    return sandbox_main(args.sandbox_args) or 0


def cmd_demo(args) -> int:
    from worker.cli.demo import run_demo

    return run_demo(timeout=args.timeout, start_worker=args.start_worker)


def cmd_bench(args) -> int:
    from bench.run import main as bench_main

    return bench_main(args.bench_args) or 0


def cmd_flower(args) -> int:
    """Flower, locked by the package (worker/ops/flower.py), on 127.0.0.1 unless an address or socket is given."""
    from worker.broker.app import app
    from worker.ops import flower

    flower.install()
    argv = list(args.flower_args)
    if not any(arg.lstrip("-").replace("-", "_").startswith(("address", "unix_socket")) for arg in argv):
        argv.append("--address=127.0.0.1")
    return app.start(["flower", *argv]) or 0


def cmd_metrics(args) -> int:
    from worker.broker.app import app
    from worker.ops import exporter

    svc = _services()
    if args.recount:
        _ping_redis(svc)
        print(json.dumps(svc.store.health.recount(), sort_keys=True))
        return 0
    if args.once:
        _ping_redis(svc)
        print(exporter.exposition(svc, app), end="")
        return 0
    # Serving goes on while Redis is away: the scrape says so (payments_exporter_redis_up 0).
    return exporter.serve(svc, app, port=args.port, host=args.host)


def cmd_status(args) -> int:
    from worker.broker.app import app
    from worker.ops.status import main as status_main

    svc = _services()
    _ping_redis(svc)
    return status_main(svc, app, as_json=args.json, ping_timeout=args.ping_timeout)


def _add_local_commands(sub: Any) -> None:
    """The demo, the sandbox and the benchmark."""
    p = sub.add_parser("demo", help="run the seed scenario (3.00 sale + void, 4.00 sale + skipped void)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each outcome")
    p.add_argument("--start-worker", choices=("auto", "always", "never"), default="auto",
                   help="start a local worker (auto: only when none answers a ping)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sandbox", help="run the BluePay-compatible sandbox gateway", add_help=False)
    p.add_argument("sandbox_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_sandbox)

    p = sub.add_parser("bench", help="benchmark ours against a bare Celery baseline", add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("flower", help="Flower, read-only and behind authentication (FLOWER_BASIC_AUTH), on 127.0.0.1 "
                       "unless --address is given; takes Flower's options", add_help=False)
    p.add_argument("flower_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_flower)


def _add_record_commands(sub: Any) -> None:
    """Reading stored payments."""
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


def _add_operator_commands(sub: Any) -> None:
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
    p.set_defaults(func=cmd_archive)

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


def _add_enqueue_command(sub: Any) -> None:
    """Enqueueing one operation."""
    p = sub.add_parser(
        "enqueue", help="enqueue one operation and print its outcome",
        description="Enqueue one operation and print its outcome. For sale and auth the card number and CVV2 "
                    "are read without echo from a prompt, or from standard input (number on the first line, "
                    "CVV2 on the second), never from the command line. Input the worker would refuse is "
                    "refused here, before anything is enqueued.",
        epilog="example: printf '4111111111111111\\n123\\n' | payments enqueue sale --amount 3.00 --expire 1230")
    p.add_argument("operation", choices=("sale", "auth", "capture", "refund", "void"))
    p.add_argument("--amount")
    p.add_argument("--expire", help="MMYY (sale, auth)")
    # Refused with a message: a card on argv lands in the process list and the shell history.
    p.add_argument("--card-number", help=argparse.SUPPRESS)
    p.add_argument("--cvv2", help=argparse.SUPPRESS)
    for field in CUSTOMER_OPTIONS:
        p.add_argument(f"--{field}")
    p.add_argument("--trans-id", help="the earlier transaction (capture/refund/void)")
    p.add_argument("--order-id", help="your order reference (sent as INVOICE_ID)")
    p.add_argument("--idempotency-key")
    p.add_argument("--then-void", action="store_true", help="chain a void after the sale")
    p.add_argument("--no-wait", dest="wait", action="store_false", help="print the task id and return")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_enqueue)


def _add_monitoring_commands(sub: Any) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="payments", description="Payments worker: BluePay jobs on Celery.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_local_commands(sub)
    _add_record_commands(sub)
    _add_operator_commands(sub)
    _add_enqueue_command(sub)
    _add_monitoring_commands(sub)
    add_webhooks_commands(sub)
    __import__("worker.cli.console", fromlist=["add_parser"]).add_parser(sub)
    return parser


# Subcommands whose arguments belong to another parser. argparse's REMAINDER does not take arguments that
# start with "-" ("payments sandbox --port 8001" failed), so they are handed over untouched.
PASS_THROUGH = {"sandbox": "sandbox_args", "bench": "bench_args", "flower": "flower_args"}


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
