"""``payments reconcile`` and ``payments resolve``: the settlement reconciliation's commands (worker/cli/main.py wires
them; the daily beat task in tasks/reconciliation.py runs the same :func:`reconcile_days`).

``reconcile`` prints a table (or ``--json``) and exits 0 only when no difference is left; ``resolve`` records an
operator's decision on a ``needs_human`` record, refused when the gateway's kept report says otherwise.
"""
from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from worker.cli.output import CommandError
from worker.gateway.scrub import scrub
from worker.payments import reconciliation
from worker.payments.decisions import DecisionRefused, kept_rows, reconcile_days, reconciler, resolve
from worker.payments.reconciliation import ACTIONS, DIFFERENCES, DayResult, Kind, ReconcileError

# Shared with the operator console (worker/payments/decisions.py); named here for existing callers.
__all__ = ["cmd_reconcile", "cmd_resolve", "kept_rows", "parse_day", "reconcile_days", "reconciler"]

EXIT_DIFFERENCES = 1


def parse_day(text: str, *, today: Callable[[], date] = lambda: datetime.now(UTC).date()) -> date:
    """``YYYY-MM-DD``, ``today`` or ``yesterday`` (UTC), or a CommandError."""
    try:
        return reconciliation.parse_day(text, today=today)
    except reconciliation.NotADay as exc:
        raise CommandError(str(exc)) from None


def cmd_reconcile(svc: Any, args: Any) -> int:
    if args.date and (args.start or args.end):
        raise CommandError("give --date, or --from and --to, not both")
    if args.date:
        start = end = parse_day(args.date)
    elif args.start and args.end:
        start, end = parse_day(args.start), parse_day(args.end)
    else:
        raise CommandError("give --date D, or --from A --to B")
    if end < start:
        raise CommandError("--to is before --from")
    try:
        results = reconcile_days(svc, start, end, progress=None if args.json else print_day)
    except (ReconcileError, DecisionRefused) as exc:
        raise CommandError(str(exc)) from None
    left = sum(len(r.differences) for r in results)
    if args.json:
        print(json.dumps({"differences": left, "days": [r.summary() for r in results]}, indent=2, sort_keys=True))
    else:
        print_actions(results)
        plural = "s" if len(results) > 1 else ""
        print(f"{left} difference{'s' if left != 1 else ''} left over {len(results)} day{plural}")
    return EXIT_DIFFERENCES if left else 0


def print_day(result: DayResult) -> None:
    adopted = result.counts.get(Kind.ADOPTED, 0)
    print(f"{result.day}: {result.rows} report rows, {result.records} records, {len(result.differences)} "
          f"differences, {adopted} adopted, {result.still_non_final} still not final, "
          f"{result.confirmed_by_stq} asked through stq")
    if not result.findings:
        return
    print(f"  {'kind':<19} {'payment_id':<40} {'trans_id':<12} {'ours':<28} {'gateway':<34} detail")
    for f in result.findings:
        print(f"  {f.kind.value:<19} {f.payment_id or '-':<40} {f.trans_id or '-':<12} {f.ours or '-':<28} "
              f"{f.gateway or '-':<34} {scrub(f.detail)}")


def print_actions(results: list[DayResult]) -> None:
    kinds = sorted({f.kind for r in results for f in r.findings if f.kind in DIFFERENCES})
    for kind in kinds:
        print(f"{kind.value}: {ACTIONS[kind]}")


def cmd_resolve(svc: Any, args: Any) -> int:
    from worker.store.reconciliations import RESOLVE_STATUSES

    if args.status.strip().upper() not in RESOLVE_STATUSES:
        raise CommandError(f"--status must be one of {', '.join(RESOLVE_STATUSES)}")
    if not (args.reason or "").strip():
        raise CommandError("--reason is required: say why (it is kept in the history and the audit stream)")
    try:
        done = resolve(svc, args.payment_id, args.status, reason=args.reason, who=getpass.getuser(),
                       trans_id=args.trans_id or "")
    except DecisionRefused as exc:
        raise CommandError(str(exc)) from None
    print(done.line())
    return 0
