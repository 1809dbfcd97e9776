"""``payments enqueue``: read the card without echo, check the input as the worker would
(worker/payments/checks.py), publish, print the outcomes."""
from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from worker.cli.common import ping_redis, services
from worker.cli.output import CommandError, format_outcome, release

CUSTOMER_OPTIONS = ("name1", "name2", "addr1", "addr2", "city", "state", "zipcode", "country")
#: What standard input may hold for ``payments enqueue sale|auth``: the card number, then the CVV2.
CARD_INPUT_MAX = 256


def read_card(stdin: Any = None) -> tuple[str | None, str | None]:
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


def check_input(op: str, *, amount: Any, card: Any = None, customer: Any = None, order_id: Any = None,
                trans_id: Any = None) -> None:
    """Refuse what the worker would refuse, before anything is enqueued (worker/payments/checks.py)."""
    from worker.gateway import InvalidInput
    from worker.payments.checks import check_before_enqueue

    try:
        check_before_enqueue(op, amount=amount, card=card, customer=customer, order_id=order_id, trans_id=trans_id)
    except InvalidInput as exc:
        raise CommandError(f"invalid input: {exc}") from None


def _refuse_card_options(args: Any) -> None:
    given = [name for name, value in (("--card-number", args.card_number), ("--cvv2", args.cvv2)) if value]
    if given:
        raise CommandError(f"{' and '.join(given)} is not accepted on the command line (the process list and shell "
                           "history would keep it): type it at the prompt or pipe it on standard input, "
                           "card number on the first line, CVV2 on the second")


def _publish(op: str, args: Any) -> Any:
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


def _print_outcomes(result: Any, op: str, args: Any) -> None:
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


def cmd_enqueue(args: Any) -> int:
    op = args.operation
    _refuse_card_options(args)
    if args.then_void and op not in ("sale", "auth"):
        raise CommandError("--then-void follows a sale or an auth")
    svc = services()
    ping_redis(svc)
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


def add_parsers(sub: Any) -> None:
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
