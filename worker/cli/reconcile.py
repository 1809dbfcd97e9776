"""``payments reconcile`` and ``payments resolve``: the settlement reconciliation's commands (worker/cli/main.py wires
them; the daily beat task in tasks/reconciliation.py runs the same reconciliation, worker/payments/reconciliation.py).

``reconcile`` prints a table (or ``--json``) and exits 0 only when no difference is left; ``resolve`` records an
operator's decision on a ``needs_human`` record, refused when the gateway's kept report says otherwise.
"""
from __future__ import annotations

import getpass
import json
import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any

from worker.cli.output import CommandError
from worker.gateway.scrub import scrub
from worker.payments import reconciliation
from worker.payments.reconciliation import (
    ACTIONS,
    DIFFERENCES,
    DayResult,
    Kind,
    ReconcileError,
    contradiction,
    reconcile_days,
)

log = logging.getLogger("payments.reconcile")

EXIT_DIFFERENCES = 1


def parse_day(text: str) -> date:
    """``YYYY-MM-DD``, ``today`` or ``yesterday`` (UTC), or a CommandError."""
    try:
        return reconciliation.parse_day(text)
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
    if (end - start).days >= 31:
        raise CommandError("at most 31 days at a time")
    try:
        results = reconcile_days(svc, start, end, progress=None if args.json else print_day)
    except ReconcileError as exc:
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
    from worker.gateway import InvalidInput, validation
    from worker.store.reconciliations import RESOLVE_STATUSES, Reconciliations, ResolveRefused

    status = args.status.strip().upper()
    if status not in RESOLVE_STATUSES:
        raise CommandError(f"--status must be one of {', '.join(RESOLVE_STATUSES)}")
    reason = (args.reason or "").strip()
    if not reason:
        raise CommandError("--reason is required: say why (it is kept in the history and the audit stream)")
    record = svc.store.get(args.payment_id)
    if record is None:
        raise CommandError(f"no payment with id {args.payment_id!r}")
    if record.get("needs_human") != "1":
        raise CommandError(f"refused: {args.payment_id} does not need a human (status {record.get('status')}); "
                           "only records marked needs_human are resolved by hand")
    trans_id = ""
    if args.trans_id:
        try:
            trans_id = validation.trans_id(args.trans_id)
        except InvalidInput as exc:
            raise CommandError(f"invalid input: {exc}") from None
    if record.get("trans_id") and trans_id and trans_id != record["trans_id"]:
        raise CommandError(f"refused: the record already has trans id {record['trans_id']}")
    effective = trans_id or str(record.get("trans_id") or "")
    if status in ("APPROVED", "VOIDED") and not effective:
        raise CommandError(f"--trans-id is required for {status}: the gateway's transaction")
    recon = Reconciliations(svc.store)
    rows, checked = kept_rows(recon, record)
    why = contradiction(status, effective, rows)
    if why is not None:
        raise CommandError(f"refused: it would contradict {checked}: {why}")
    who = getpass.getuser()
    try:
        done = recon.resolve(args.payment_id, status, who=who, reason=reason, trans_id=trans_id,
                             checked=f"checked against {checked}" if rows is not None else "no report kept")
    except ResolveRefused as exc:
        raise CommandError(f"refused: {exc.reason.replace('_', ' ')}") from None
    log.warning("resolve %s: %s by %s: %s", args.payment_id, status, who, reason)
    print(f"{args.payment_id}: {record.get('status')} -> {done.get('status')} "
          f"(trans {done.get('trans_id') or '-'}) by {who} at {done.get('resolved_at')}"
          + ("" if rows is not None else "; no report of its day is kept: run payments reconcile for it"))
    return 0


def kept_rows(recon: Any, record: dict[str, Any]) -> tuple[list[dict[str, str]] | None, str]:
    """The kept reports' rows under the record's ORDER_ID on its creation day and the next (a transaction issued
    after midnight), and which reports they are; None when neither report looked at it."""
    created = datetime.fromtimestamp(float(record.get("created_ts") or 0), UTC).date()
    found: list[dict[str, str]] | None = None
    looked: list[str] = []
    for day in (created, created + timedelta(days=1)):
        rows = recon.kept_rows(day.isoformat(), record["payment_id"])
        if rows is not None:
            looked.append(day.isoformat())
            found = (found or []) + rows
    return found, "the gateway's report of " + " and ".join(looked) if looked else "no report"
