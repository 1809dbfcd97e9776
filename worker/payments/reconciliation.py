"""Settlement reconciliation: the results store against the gateway's own daily report (``bpdailyreport2``).

The store says what the worker believes; the report says what happened. For one day D (UTC, the gateway's
report day D..D+1) every report row is matched to a record by ``ORDER_ID`` (our operation id: the flow sends
the payment id as ORDER_ID) and trans id, the day's settlement report (``QUERY_BY_SETTLEMENT=1``) is read for
what settled although recorded VOIDED, then every record created on D that the report did not show is looked
for. Each difference is sorted into one :class:`Kind`:

==================  ==========================================================================================
gateway_only        an approved transaction we have no record of (or a second one under our ORDER_ID):
                    charged, unknown to us: page someone
ours_only           recorded APPROVED (or later VOIDED, CAPTURED, REFUNDED), absent at the gateway (also asked
                    through stq by ORDER_ID, any day, before it is said)
status_mismatch     the gateway's status is not ours (approved vs declined/error, a second transaction type, a
                    record we closed as not charged that the gateway charged, VOIDED here but live there)
amount_mismatch     same transaction, another amount
settled_but_voided  recorded VOIDED, but the gateway settled it: the money moved
voided_at_gateway   recorded APPROVED, voided at the gateway (in its console, or a void we never recorded)
adopted             UNKNOWN (or parked) in the store, final at the gateway: finalised from the report, audited
==================  ==========================================================================================

Only records that are not final are ever changed (``adopted``: through the store's claim, as the sweep's stq
reconciliation does, with an audit entry naming the report's day); everything else is reported for a human.

Pure decisions (:func:`classify`, :func:`expected_status`) take a row and a record and return findings; the
:class:`Reconciler` does the I/O at the edges: the report streams in, records are read in batches, and only the
findings, the ids seen and a few adoption candidates are held (a 100,000-row day never sits in memory whole).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Protocol

from worker.gateway import GatewayError, ReportRow, Response
from worker.gateway.scrub import scrub
from worker.merchants import DEFAULT as DEFAULT_MERCHANT
from worker.payments.leases import new_owner
from worker.payments.record import PaymentRecord, decode
from worker.states import FOLLOW_UPS, NON_FINAL, Status

log = logging.getLogger("payments.reconcile")

__all__ = ["Kind", "Finding", "DayResult", "Reconciler", "ReconcileError", "classify", "expected_status",
           "row_from_query", "day_bounds", "days", "DIFFERENCES"]


class Kind(StrEnum):
    GATEWAY_ONLY = "gateway_only"
    OURS_ONLY = "ours_only"
    STATUS_MISMATCH = "status_mismatch"
    AMOUNT_MISMATCH = "amount_mismatch"
    SETTLED_BUT_VOIDED = "settled_but_voided"
    VOIDED_AT_GATEWAY = "voided_at_gateway"
    ADOPTED = "adopted"


#: What is left for a human (``adopted`` was corrected, audited).
DIFFERENCES: frozenset[Kind] = frozenset(Kind) - {Kind.ADOPTED}

#: What each difference asks of a person (docs/reconciliation.md, the table's footer).
ACTIONS: dict[Kind, str] = {
    Kind.GATEWAY_ONLY: "find who charged it (console? another system? a second send?); refund it, or record it",
    Kind.OURS_ONLY: "look the ORDER_ID up in the console; if it never existed, resolve the record",
    Kind.STATUS_MISMATCH: "the gateway is right about money: correct the record (payments resolve) or the charge",
    Kind.AMOUNT_MISMATCH: "compare the amounts in the console; refund or charge the difference",
    Kind.SETTLED_BUT_VOIDED: "the void did not stop the money: refund the settled transaction",
    Kind.VOIDED_AT_GATEWAY: "someone voided it outside the worker: tell the order's owner; no money moved",
    Kind.ADOPTED: "nothing: the record was finalised from the report (audited)",
}

# Our record's statuses that mean "the gateway approved this operation's own transaction".
_APPROVED_FAMILY = frozenset({Status.APPROVED, Status.CAPTURED, Status.REFUNDED, Status.PARTIALLY_REFUNDED})
_TRANS_TYPE = {"sale": ("SALE",), "auth": ("AUTH",), "capture": ("CAPTURE",), "refund": ("REFUND", "VOID"),
               "void": ("VOID",)}
_GATEWAY_WORD = {"1": "APPROVED", "0": "DECLINED", "E": "ERROR"}


class ReconcileError(Exception):
    """No verdict for a day: the report could not be had or read whole (nothing was changed)."""


@dataclass(frozen=True)
class Finding:
    kind: Kind
    payment_id: str  # "" when the transaction is unknown to us
    trans_id: str
    detail: str
    ours: str = ""  # our status (and amount)
    gateway: str = ""  # the gateway's status (and amount, voided/settled)
    row: ReportRow | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, object]:
        # detail may quote an ORDER_ID typed in the console: anything card-like in it is masked
        out: dict[str, object] = {"kind": self.kind.value, "payment_id": self.payment_id, "trans_id": self.trans_id,
                               "detail": scrub(self.detail), "ours": self.ours, "gateway": self.gateway}
        if self.row is not None:
            out["row"] = self.row.as_dict()
        return out


@dataclass(frozen=True)
class Adopt:
    """A non-final record the report can finalise (done by the Reconciler, after the whole report was read)."""

    payment_id: str
    row: ReportRow


Verdict = Finding | Adopt | None


# --------------------------------------------------------------------------- pure decisions


def _money(value: str) -> Decimal | None:
    try:
        return Decimal(value).quantize(Decimal("0.01"))
    except (InvalidOperation, ValueError):
        return None


def gateway_says(row: ReportRow) -> str:
    flags = [w for w, on in (("voided", row.voided), ("settled", row.settled)) if on]
    return f"{_GATEWAY_WORD[row.status]} {row.trans_type} {row.amount_text}" + (f" ({', '.join(flags)})" if flags
                                                                                else "")


def _typed(record: Mapping[str, object] | PaymentRecord) -> PaymentRecord:
    return record if isinstance(record, PaymentRecord) else decode(record)


def we_say(record: Mapping[str, object] | PaymentRecord) -> str:
    ours = _typed(record)
    status = ours.status or ours.fields.get("status")
    return f"{status} {ours.operation or None}" + (f" {ours.amount}" if ours.amount else "")


def expected_status(record: Mapping[str, object] | PaymentRecord) -> str | None:
    """The gateway status ("1", "0") the record's own transaction should have; None: no transaction expected
    (ERROR, SKIPPED, a void answered "Already Voided" without a transaction of its own)."""
    ours = _typed(record)
    if ours.status in _APPROVED_FAMILY or ours.status == Status.VOIDED:
        if not ours.trans_id and ours.message.startswith("Already Voided"):
            return None
        return "1"
    if ours.status == Status.DECLINED:
        return "0"
    return None


def classify(row: ReportRow, record: Mapping[str, object] | PaymentRecord | None, *,
             origin: Mapping[str, object] | PaymentRecord | None = None) -> Verdict:
    """What one report row says about our records. ``record``: the record whose payment id is the row's ORDER_ID
    (None: no such record); ``origin``: for a VOID/REFUND row unknown to us, our record of the transaction it
    refers to (``master_id``). None: no difference."""
    if record is None:
        return _unknown_to_us(row, _typed(origin) if origin is not None else None)
    return _ours(row, _typed(record))


def _unknown_to_us(row: ReportRow, origin: PaymentRecord | None) -> Verdict:
    """A row under no ORDER_ID of ours: a void of one of ours made elsewhere, or money we know nothing of."""
    if row.approved and origin is not None and row.trans_type == "VOID":
        if origin.status == Status.VOIDED:
            return None  # our void of it, recorded under another id (or already reconciled)
        return Finding(Kind.VOIDED_AT_GATEWAY, origin.payment_id, origin.trans_id,
                       f"voided at the gateway by {row.trans_id} (no ORDER_ID of ours: the console?)",
                       we_say(origin), gateway_says(row), row)
    if row.approved:
        what = f"refund of our {row.master_id}" if origin is not None else "unknown to us"
        return Finding(Kind.GATEWAY_ONLY, "", row.trans_id,
                       f"approved {row.trans_type} {row.amount_text} under ORDER_ID {row.order_id or '-'}: {what}",
                       "", gateway_says(row), row)
    return None  # a decline or error we do not know of moved no money


def _ours(row: ReportRow, record: PaymentRecord) -> Verdict:
    """A row under the ORDER_ID of ``record``."""
    pid, ours_trans, status = record.payment_id, record.trans_id, record.status
    if ours_trans and row.trans_id != ours_trans:
        if not row.approved:
            return None
        return Finding(Kind.GATEWAY_ONLY, pid, row.trans_id,
                       f"a second transaction under our ORDER_ID (ours is {ours_trans}): charged twice?",
                       we_say(record), gateway_says(row), row)
    if status in NON_FINAL:
        return _not_final_yet(row, record)
    expected = expected_status(record)
    if row.trans_type not in _TRANS_TYPE.get(record.operation, ()):
        return Finding(Kind.STATUS_MISMATCH, pid, row.trans_id,
                       f"the gateway's {row.trans_type} under the ORDER_ID of our {record.operation}",
                       we_say(record), gateway_says(row), row)
    if expected != row.status:
        if expected is None and not row.approved:
            return None  # we recorded an error; the gateway's row moved no money either
        note = "closed as not charged, but charged" if record.not_charged and row.approved else (
            f"recorded {status}, the gateway says {_GATEWAY_WORD[row.status]}")
        return Finding(Kind.STATUS_MISMATCH, pid, row.trans_id, note, we_say(record), gateway_says(row), row)
    return _final_agrees(row, record)


def _not_final_yet(row: ReportRow, record: PaymentRecord) -> Verdict:
    """A row of an operation the store has not finished: adopted when it is the operation's own kind."""
    pid, status = record.payment_id, record.status
    if row.voided:
        return Finding(Kind.VOIDED_AT_GATEWAY, pid, row.trans_id, f"{status} here, approved then voided there",
                       we_say(record), gateway_says(row), row)
    if row.status in ("1", "0") and row.trans_type in _TRANS_TYPE.get(record.operation, ()):
        return Adopt(pid, row)
    return Finding(Kind.STATUS_MISMATCH, pid, row.trans_id, f"{status} here; the gateway has this row",
                   we_say(record), gateway_says(row), row)


def _final_agrees(row: ReportRow, record: PaymentRecord) -> Verdict:
    """A final record whose status the row confirms: voided/settled and the amount still to compare."""
    pid, status = record.payment_id, record.status
    if status == Status.VOIDED and not row.voided:
        if row.settled:
            return Finding(Kind.SETTLED_BUT_VOIDED, pid, row.trans_id, "recorded VOIDED, but it settled",
                           we_say(record), gateway_says(row), row)
        return Finding(Kind.STATUS_MISMATCH, pid, row.trans_id, "recorded VOIDED, live at the gateway",
                       we_say(record), gateway_says(row), row)
    if status in _APPROVED_FAMILY and row.voided:
        return Finding(Kind.VOIDED_AT_GATEWAY, pid, row.trans_id, f"recorded {status}, voided at the gateway",
                       we_say(record), gateway_says(row), row)
    ours_amount = _money(record.amount)
    if ours_amount is not None and ours_amount != row.amount:
        return Finding(Kind.AMOUNT_MISMATCH, pid, row.trans_id, f"ours {ours_amount}, the gateway's {row.amount_text}",
                       we_say(record), gateway_says(row), row)
    return None


def row_from_query(found: Response, order_id: str) -> ReportRow:
    """An stq answer as a report row (a transaction of ours on another day than the report's)."""
    status = {"APPROVED": "1", "DECLINED": "0"}.get(found.status, "E")
    amount = _money(found.amount or "0") or Decimal("0.00")
    return ReportRow(line=0, trans_id=found.trans_id, trans_type=(found.trans_type or "").upper(), amount=amount,
                     status=status, order_id=found.order_id or order_id, master_id=str(found.raw.get("master_id", "")),
                     voided=bool(found.voided), issue_date=str(found.raw.get("issue_date", "")),
                     settle_date="settled" if found.settled else "", message=found.message,
                     masked_account=found.masked_account)


def day_bounds(day: date) -> tuple[float, float]:
    """Day D in UTC as epoch seconds [start, end): what a record's ``created_ts`` is compared with."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
    return start, start + 86400.0


def days(start: date, end: date) -> list[date]:
    """``start`` .. ``end`` inclusive."""
    if end < start:
        raise ValueError("the end date is before the start date")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


# --------------------------------------------------------------------------- the run


class ReportSource(Protocol):
    """What the reconciler asks of the gateway: ``worker.gateway.BluePayClient`` and the test fakes."""

    def report(self, start: date, end: date, settled: bool = False) -> Iterable[ReportRow]: ...

    def query(self, *, trans_id: Any = None, order_id: str | None = None, days_back: int = 30) -> Response | None: ...


class RecordsStore(Protocol):
    """The store's side: the flow's claim/transition (adoption) and ``worker.store.reconciliations``' reads."""

    def claim(self, payment_id: str, operation: str, *, owner: str, lease_seconds: float,
              mode: str = "run") -> Any: ...

    def transition(self, payment_id: str, status: str, *, fields: Mapping[str, object] | None = None,
                   expect: Iterable[str] | str | None = None, owner: str | None = None, note: str = "",
                   sent: bool | None = None, reflect: bool = False) -> dict[str, object] | None: ...


class KeptReports(Protocol):
    def records(self, payment_ids: Sequence[str]) -> dict[str, dict[str, object]]: ...

    def payment_ids_for_trans(self, trans_ids: Sequence[str]) -> dict[str, str]: ...

    def created_between(self, start_ts: float, end_ts: float, *, batch: int = 1000) -> Iterator[list[str]]: ...

    def keep(self, day: str, summary: Mapping[str, object], rows: Mapping[str, list[dict[str, str]]]) -> None: ...


@dataclass
class DayResult:
    day: date
    #: whose account's report this is (worker/merchants.py)
    merchant: str = DEFAULT_MERCHANT
    rows: int = 0
    records: int = 0
    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    confirmed_by_stq: int = 0
    busy: int = 0
    still_non_final: int = 0
    noted: set[tuple[str, str, str]] = field(default_factory=set, repr=False)

    @property
    def differences(self) -> list[Finding]:
        return [f for f in self.findings if f.kind in DIFFERENCES]

    def summary(self) -> dict[str, Any]:  # JSON: kept in the store and printed
        by_kind = {k.value: 0 for k in Kind}
        for f in self.findings:
            by_kind[f.kind.value] += 1
        merchant = {"merchant": self.merchant} if self.merchant != DEFAULT_MERCHANT else {}
        return {"day": self.day.isoformat(), **merchant, "report_rows": self.rows, "records": self.records,
                "differences": len(self.differences), "by_kind": by_kind, "confirmed_by_stq": self.confirmed_by_stq,
                "adoptions_skipped_busy": self.busy, "still_non_final": self.still_non_final,
                "findings": [f.as_dict() for f in self.findings[:MAX_KEPT_FINDINGS]],
                "findings_truncated": max(0, len(self.findings) - MAX_KEPT_FINDINGS)}


#: Records read per round trip, and report rows classified per batch.
BATCH = 500
#: At most this many records missing from a report are asked about through stq (each one round trip); beyond
#: that they are reported ours_only unconfirmed (a gateway that lost that many transactions is an incident).
MAX_STQ_CONFIRMATIONS = 200
#: Findings kept in the store's per-day report (all are counted; the rest are in the command's output).
MAX_KEPT_FINDINGS = 10_000


@dataclass
class Reconciler:
    store: RecordsStore
    kept: KeptReports
    gateway: ReportSource
    lease_seconds: float = 30.0
    today: Callable[[], date] = field(default=lambda: datetime.now(UTC).date())
    #: the merchant account whose report ``gateway`` fetches: only its records are compared with it
    merchant: str = DEFAULT_MERCHANT

    def run_day(self, day: date) -> DayResult:
        result = DayResult(day, self.merchant)
        seen: set[str] = set()  # payment ids the report showed (a day's ids: ~100 bytes each)
        adopt: dict[str, Adopt | None] = {}  # None: several rows under one ORDER_ID (a human decides)
        kept_rows: dict[str, list[dict[str, str]]] = {}
        try:
            batch: list[ReportRow] = []
            for row in self.gateway.report(day, day + timedelta(days=1)):
                result.rows += 1
                batch.append(row)
                if len(batch) >= BATCH:
                    self._classify_batch(batch, result, seen, adopt, kept_rows)
                    batch = []
            self._classify_batch(batch, result, seen, adopt, kept_rows)
            self._settled_that_day(day, result, kept_rows)
        except GatewayError as exc:
            raise ReconcileError(f"{day}: no verdict: the gateway's report could not be fetched and read whole: "
                                 f"{type(exc).__name__}: {exc}") from None
        self._missing_from_report(day, result, seen, kept_rows)
        self._adopt(day, adopt, result)
        self.kept.keep(kept_day(day, self.merchant), result.summary(), kept_rows)
        log.info("reconcile %s: %d rows, %d records, %d differences, %d adopted", day, result.rows, result.records,
                 len(result.differences), result.counts.get(Kind.ADOPTED, 0))
        return result

    # ---- the report's rows, a batch at a time
    def _classify_batch(self, batch: list[ReportRow], result: DayResult, seen: set[str],
                        adopt: dict[str, Adopt | None], kept_rows: dict[str, list[dict[str, str]]]) -> None:
        if not batch:
            return
        records = self.kept.records(sorted({r.order_id for r in batch if r.order_id}))
        unknown_follow_ups = [r.master_id for r in batch if r.order_id not in records and r.master_id]
        origins: dict[str, dict[str, object]] = {}
        if unknown_follow_ups:
            by_trans = self.kept.payment_ids_for_trans(sorted(set(unknown_follow_ups)))
            found = self.kept.records(sorted(set(by_trans.values())))
            origins = {t: found[p] for t, p in by_trans.items() if p in found}
        for row in batch:
            stored = records.get(row.order_id) if row.order_id else None
            record = decode(stored) if stored is not None else None
            if record is not None:
                seen.add(row.order_id)
                if record.needs_human or record.status in NON_FINAL:
                    kept_rows.setdefault(row.order_id, []).append(row.as_dict())
            verdict = classify(row, record, origin=origins.get(row.master_id) if row.master_id else None)
            if isinstance(verdict, Adopt):
                adopt[verdict.payment_id] = None if verdict.payment_id in adopt else verdict
            elif verdict is not None:
                self._note(result, verdict, kept_rows)

    def _note(self, result: DayResult, finding: Finding, kept_rows: dict[str, list[dict[str, str]]]) -> None:
        key = (finding.kind.value, finding.payment_id, finding.trans_id)
        if finding.payment_id and key in result.noted:
            return  # the same void seen from its VOID row and from the original's f_void
        result.noted.add(key)
        result.findings.append(finding)
        result.counts[finding.kind] = result.counts.get(finding.kind, 0) + 1
        if finding.payment_id and finding.row is not None:
            rows = kept_rows.setdefault(finding.payment_id, [])
            shown = finding.row.as_dict()
            if shown not in rows:
                rows.append(shown)

    # ---- what settled that day, whenever it was issued
    def _settled_that_day(self, day: date, result: DayResult, kept_rows: dict[str, list[dict[str, str]]]) -> None:
        """The settlement report of the day (QUERY_BY_SETTLEMENT=1): a transaction issued days before, voided here
        since, may have settled that night all the same."""
        batch: list[ReportRow] = []

        def check() -> None:
            records = self.kept.records(sorted({r.order_id for r in batch if r.order_id}))
            for row in batch:
                found = records.get(row.order_id)
                record = decode(found) if found is not None else None
                if (record is not None and record.status == Status.VOIDED and row.trans_id == record.trans_id
                        and row.settled and not row.voided):
                    self._note(result, Finding(Kind.SETTLED_BUT_VOIDED, row.order_id, row.trans_id,
                                               "recorded VOIDED, but it settled", we_say(record), gateway_says(row),
                                               row), kept_rows)
            batch.clear()

        for row in self.gateway.report(day, day + timedelta(days=1), settled=True):
            batch.append(row)
            if len(batch) >= BATCH:
                check()
        check()

    # ---- records of the day the report did not show
    def _missing_from_report(self, day: date, result: DayResult, seen: set[str],
                             kept_rows: dict[str, list[dict[str, str]]]) -> None:
        start, end = day_bounds(day)
        asked = 0
        days_back = max(1, (self.today() - day).days + 2)
        for ids in self.kept.created_between(start, end, batch=BATCH):
            missing = [pid for pid in ids if pid not in seen]
            result.records += len(ids) - len(missing)
            if not missing:
                continue
            for pid, found in self.kept.records(missing).items():
                if str(found.get("merchant") or DEFAULT_MERCHANT) != self.merchant:
                    continue  # another merchant account's: its own report has it
                result.records += 1
                record = decode(found)
                if record.status in NON_FINAL:
                    result.still_non_final += 1  # the sweep's (stq) to settle; shown, not a difference yet
                    kept_rows.setdefault(pid, [])
                    continue
                expected = expected_status(record)
                if record.needs_human:
                    kept_rows.setdefault(pid, [])  # the report has nothing under it: what resolve checks against
                if expected != "1":
                    continue
                if asked >= MAX_STQ_CONFIRMATIONS:
                    self._note(result, Finding(Kind.OURS_ONLY, pid, record.trans_id,
                                               "not in the report (not confirmed with stq: too many)",
                                               we_say(record), "absent"), kept_rows)
                    continue
                asked += 1
                self._confirm(pid, record, days_back, result, kept_rows)

    def _confirm(self, pid: str, record: PaymentRecord, days_back: int, result: DayResult,
                 kept_rows: dict[str, list[dict[str, str]]]) -> None:
        """A record the day's report did not show: stq by ORDER_ID (its transaction may sit on the next day)."""
        try:
            found = self.gateway.query(order_id=pid, days_back=days_back)
        except Exception as exc:  # cannot tell: still reported, saying so
            self._note(result, Finding(Kind.OURS_ONLY, pid, record.trans_id,
                                       f"not in the report; stq could not confirm ({type(exc).__name__})",
                                       we_say(record), "absent"), kept_rows)
            return
        result.confirmed_by_stq += 1
        if found is None:
            self._note(result, Finding(Kind.OURS_ONLY, pid, record.trans_id,
                                       "not in the report, and stq finds no transaction under its ORDER_ID",
                                       we_say(record), "absent"), kept_rows)
            return
        verdict = classify(row_from_query(found, pid), record)
        if isinstance(verdict, Finding):
            self._note(result, verdict, kept_rows)

    # ---- adoption: the only automatic change
    def _adopt(self, day: date, adopt: dict[str, Adopt | None], result: DayResult) -> None:
        for pid, candidate in adopt.items():
            if candidate is None:
                self._note(result, Finding(Kind.STATUS_MISMATCH, pid, "",
                                           "not final here; several transactions under its ORDER_ID at the gateway"),
                           {})
                continue
            verdict = self._adopt_one(day, candidate, result)
            if verdict is not None:
                self._note(result, verdict, {})
        if result.counts.get(Kind.ADOPTED):
            self._recheck_voids(result)

    def _recheck_voids(self, result: DayResult) -> None:
        """An adopted void (or refund answered as a VOID) made its sale VOIDED: the sale's voided row read
        earlier is no longer a difference."""
        voided = [f for f in result.findings if f.kind == Kind.VOIDED_AT_GATEWAY and f.payment_id]
        now = self.kept.records(sorted({f.payment_id for f in voided}))
        gone = {id(f) for f in voided if decode(now.get(f.payment_id, {})).status == Status.VOIDED}
        if gone:
            result.findings = [f for f in result.findings if id(f) not in gone]
            result.counts[Kind.VOIDED_AT_GATEWAY] -= len(gone)

    def _adopt_one(self, day: date, candidate: Adopt, result: DayResult) -> Finding | None:
        row, pid = candidate.row, candidate.payment_id
        current = self.kept.records([pid]).get(pid)
        if current is None:
            return None
        operation = decode(current).operation
        owner = new_owner()
        claim = self.store.claim(pid, operation, owner=owner, lease_seconds=self.lease_seconds, mode="reconcile")
        if claim.kind == "busy":
            result.busy += 1
            log.info("reconcile %s: %s is being worked on; not adopted", day, pid)
            return None
        if claim.kind != "resumed":  # final meanwhile: judge what it became
            verdict = classify(row, claim.record)
            return verdict if isinstance(verdict, Finding) else None
        status = Status.APPROVED if row.approved else Status.DECLINED
        fields = {"trans_id": row.trans_id, "trans_type": row.trans_type, "message": row.message or status.title(),
                  "auth_code": row.auth_code, "card_type": row.card_type, "reconciled": f"report:{day.isoformat()}"}
        if row.masked_account:
            fields["masked_account"] = row.masked_account
        note = f"adopted from the gateway's report of {day.isoformat()}: {gateway_says(row)} (trans {row.trans_id})"
        written = self.store.transition(pid, status, fields=fields, expect=(Status.PENDING,), owner=owner,
                                        sent=True, reflect=operation in FOLLOW_UPS, note=note)
        if written is None:
            return None
        log.warning("reconcile %s: %s", pid, note)
        return Finding(Kind.ADOPTED, pid, row.trans_id, note, f"{claim.previous_status} {operation}", gateway_says(row),
                       row)


# --------------------------------------------------------------------------- payments resolve


def contradiction(status: str, trans_id: str, rows: Sequence[Mapping[str, str]] | None) -> str | None:
    """Why an operator's ``status`` (and ``trans_id``) would contradict the gateway's kept report, or None.

    ``rows``: the kept report's rows under the record's ORDER_ID ([] the report had none; None: no report kept
    that looked at it, so nothing to contradict)."""
    if rows is None:
        return None
    approved = [r for r in rows if r.get("status") == "1"]
    live = [r for r in approved if r.get("voided") != "1"]
    voided = [r for r in approved if r.get("voided") == "1"]
    shown = ", ".join(f"{r.get('trans_id')} {_GATEWAY_WORD.get(r.get('status', ''), '?')}"
                      + (" voided" if r.get("voided") == "1" else "") for r in rows) or "no transaction"
    if status == Status.APPROVED:
        if not any(r.get("trans_id") == trans_id for r in live):
            return f"the gateway's report shows {shown}, not an approved, unvoided {trans_id or 'transaction'}"
    elif status == Status.VOIDED:
        if not any(r.get("trans_id") == trans_id for r in voided):
            return f"the gateway's report shows {shown}, not a voided {trans_id or 'transaction'}"
    elif status == Status.DECLINED:
        if approved or not rows:
            return f"the gateway's report shows {shown}, not a decline"
    elif approved:  # ERROR: nothing charged
        return f"the gateway's report shows {shown}: it was charged"
    return None


# ---- the day a run is asked for (the CLI and the daily beat task) -------------------------------------------------
class NotADay(ValueError):
    """A day that is neither ``YYYY-MM-DD`` nor ``today``/``yesterday``."""


def kept_day(day: date, merchant: str = DEFAULT_MERCHANT) -> str:
    """The name a day's kept report goes by: the day, and the merchant account when it is not ``default``."""
    return day.isoformat() if merchant == DEFAULT_MERCHANT else f"{day.isoformat()}:{merchant}"


def parse_day(text: str, *, today: Callable[[], date] = lambda: datetime.now(UTC).date()) -> date:
    """``YYYY-MM-DD``, ``today`` or ``yesterday`` (UTC)."""
    word = text.strip().lower()
    if word == "today":
        return today()
    if word == "yesterday":
        return today() - timedelta(days=1)
    try:
        return date.fromisoformat(word)
    except ValueError:
        raise NotADay(f"not a date (YYYY-MM-DD, today, yesterday): {text!r}") from None
