"""Reconciliation's decisions as tables, and one day reconciled over the in-memory store and a fake report
(no Redis, no HTTP): adoption audited, stq confirmations, console voids, nothing changed without a whole report."""
from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from tests.support.fake_gateway import reply
from tests.support.redis_store import new_store
from worker.gateway import MalformedReport, ReportIncomplete, ReportRow
from worker.payments.reconciliation import (
    Adopt,
    Finding,
    Kind,
    ReconcileError,
    Reconciler,
    classify,
    contradiction,
    day_bounds,
    days,
)
from worker.store.reconciliations import Reconciliations

DAY = date(2025, 6, 15)  # the tests' clock's default time is 2025-06-15 15:06:40 UTC
T1, T2, T3 = "100000000001", "100000000002", "100000000003"


def row(trans_id=T1, trans_type="SALE", amount="3.00", status="1", order_id="p1", master_id="", voided=False,
        settled=False) -> ReportRow:
    return ReportRow(line=2, trans_id=trans_id, trans_type=trans_type, amount=Decimal(amount), status=status,
                     order_id=order_id, master_id=master_id, voided=voided, issue_date="2025-06-15 10:00:00",
                     settle_date="2025-06-15 23:00:00" if settled else "", message="Approved Sale",
                     masked_account="xxxxxxxxxxxx1111")


def rec(status="APPROVED", operation="sale", trans_id=T1, amount="3.00", pid="p1", **extra) -> dict:
    return {"payment_id": pid, "operation": operation, "status": status, "trans_id": trans_id, "amount": amount,
            **extra}


CASES = [
    # (name, row, record, expected: a Kind, "adopt" or None)
    ("same", row(), rec(), None),
    ("declined both", row(status="0"), rec("DECLINED"), None),
    ("unknown to us, approved", row(order_id="x"), None, Kind.GATEWAY_ONLY),
    ("unknown to us, declined: no money", row(order_id="x", status="0"), None, None),
    ("second charge under our ORDER_ID", row(trans_id=T2), rec(), Kind.GATEWAY_ONLY),
    ("second attempt declined", row(trans_id=T2, status="0"), rec(), None),
    ("approved there, declined here", row(), rec("DECLINED"), Kind.STATUS_MISMATCH),
    ("declined there, approved here", row(status="0"), rec(), Kind.STATUS_MISMATCH),
    ("closed as not charged, but charged", row(), rec("ERROR", trans_id="", not_charged="1"), Kind.STATUS_MISMATCH),
    ("needs_human error, charged", row(), rec("ERROR", trans_id="", needs_human="1"), Kind.STATUS_MISMATCH),
    ("error here, error row", row(status="E"), rec("ERROR", trans_id=""), None),
    ("amount differs", row(amount="5.00"), rec(), Kind.AMOUNT_MISMATCH),
    ("no amount on our void", row(trans_type="VOID", amount="3.00"), rec(operation="void", amount=""), None),
    ("voided both", row(voided=True), rec("VOIDED"), None),
    ("voided here, settled there", row(settled=True), rec("VOIDED"), Kind.SETTLED_BUT_VOIDED),
    ("voided here, live there", row(), rec("VOIDED"), Kind.STATUS_MISMATCH),
    ("approved here, voided there", row(voided=True), rec(), Kind.VOIDED_AT_GATEWAY),
    ("captured auth, voided there", row(trans_type="AUTH", voided=True), rec("CAPTURED", "auth"),
     Kind.VOIDED_AT_GATEWAY),
    ("refunded sale stays approved", row(), rec("REFUNDED"), None),
    ("refund answered as VOID", row(trans_type="VOID"), rec(operation="refund"), None),
    ("another type under our ORDER_ID", row(trans_type="AUTH"), rec(), Kind.STATUS_MISMATCH),
    ("unknown here, approved there", row(), rec("UNKNOWN", trans_id=""), "adopt"),
    ("unknown here, declined there", row(status="0"), rec("UNKNOWN", trans_id=""), "adopt"),
    ("pending with expired lease", row(), rec("PENDING", trans_id=""), "adopt"),
    ("unknown here, voided there", row(voided=True), rec("UNKNOWN", trans_id=""), Kind.VOIDED_AT_GATEWAY),
    ("unknown sale, an AUTH there", row(trans_type="AUTH"), rec("UNKNOWN", trans_id=""), Kind.STATUS_MISMATCH),
    ("unknown here, error row", row(status="E"), rec("UNKNOWN", trans_id=""), Kind.STATUS_MISMATCH),
]


@pytest.mark.parametrize(("name", "r", "record", "expected"), CASES, ids=[c[0] for c in CASES])
def test_classification(name, r, record, expected) -> None:
    verdict = classify(r, record)
    if expected is None:
        assert verdict is None
    elif expected == "adopt":
        assert isinstance(verdict, Adopt) and verdict.payment_id == "p1" and verdict.row == r
    else:
        assert isinstance(verdict, Finding) and verdict.kind == expected
        assert verdict.trans_id == r.trans_id
        assert verdict.payment_id == ("" if record is None else "p1")


def test_a_console_void_of_ours_is_voided_at_gateway_on_our_record() -> None:
    void_row = row(trans_id=T2, trans_type="VOID", order_id="", master_id=T1)
    verdict = classify(void_row, None, origin=rec())
    assert isinstance(verdict, Finding) and verdict.kind == Kind.VOIDED_AT_GATEWAY
    assert (verdict.payment_id, verdict.trans_id) == ("p1", T1)
    assert classify(void_row, None, origin=rec("VOIDED")) is None
    refund_row = row(trans_id=T2, trans_type="REFUND", order_id="", master_id=T1)
    refund = classify(refund_row, None, origin=rec())
    assert isinstance(refund, Finding) and refund.kind == Kind.GATEWAY_ONLY and "refund of our" in refund.detail


@pytest.mark.parametrize(("status", "trans_id", "rows", "refused"), [
    ("APPROVED", T1, None, False),                                           # no report kept: nothing to contradict
    ("APPROVED", T1, [{"trans_id": T1, "status": "1", "voided": ""}], False),
    ("APPROVED", T2, [{"trans_id": T1, "status": "1", "voided": ""}], True),  # another transaction
    ("APPROVED", T1, [{"trans_id": T1, "status": "1", "voided": "1"}], True),  # voided there
    ("APPROVED", T1, [], True),                                              # the report has nothing
    ("VOIDED", T1, [{"trans_id": T1, "status": "1", "voided": "1"}], False),
    ("VOIDED", T1, [{"trans_id": T1, "status": "1", "voided": ""}], True),
    ("DECLINED", "", [{"trans_id": T1, "status": "0", "voided": ""}], False),
    ("DECLINED", "", [], True),
    ("DECLINED", "", [{"trans_id": T1, "status": "1", "voided": ""}], True),
    ("ERROR", "", [], False),
    ("ERROR", "", [{"trans_id": T1, "status": "0", "voided": ""}], False),
    ("ERROR", "", [{"trans_id": T1, "status": "1", "voided": ""}], True),     # it was charged
])
def test_resolve_contradicting_the_report(status, trans_id, rows, refused) -> None:
    assert (contradiction(status, trans_id, rows) is not None) == refused


def test_days_and_bounds() -> None:
    assert days(date(2025, 6, 14), date(2025, 6, 16)) == [date(2025, 6, 14), date(2025, 6, 15), date(2025, 6, 16)]
    start, end = day_bounds(DAY)
    assert datetime.fromtimestamp(start, UTC) == datetime(2025, 6, 15, tzinfo=UTC) and end - start == 86400
    with pytest.raises(ValueError):
        days(date(2025, 6, 16), date(2025, 6, 15))


# --------------------------------------------------------------------------- one day, end to end on fakes


class FakeReportGateway:
    """``report`` yields its rows (or fails after some); ``query`` answers from a dict by ORDER_ID."""

    def __init__(self, rows, stq=None, fail_after: int | None = None, failure: Exception | None = None,
                 settled_rows=()):
        self.rows = rows
        self.settled_rows = list(settled_rows)
        self.stq = stq or {}
        self.fail_after, self.failure = fail_after, failure
        self.reports: list = []
        self.queries: list = []

    def report(self, start, end, settled=False) -> Iterator[ReportRow]:
        self.reports.append((start, end, settled))
        for i, r in enumerate(self.settled_rows if settled else self.rows):
            if self.fail_after is not None and i >= self.fail_after:
                raise self.failure or ReportIncomplete("cut")
            yield r

    def query(self, *, trans_id=None, order_id=None, days_back=30):
        self.queries.append(order_id)
        found = self.stq.get(order_id)
        if isinstance(found, Exception):
            raise found
        return found


@pytest.fixture
def world():
    store = new_store()
    return store, Reconciliations(store)


def make(store, pid, status="APPROVED", op="sale", trans_id="", amount="3.00", **fields):
    store.claim(pid, op, owner="w1", lease_seconds=30, fields={"amount": amount, "order_id": pid})
    if status == "UNKNOWN":
        store.transition(pid, "UNKNOWN", expect={"PENDING"}, owner="w1", note="parked", sent=True)
    elif status != "PENDING":
        store.transition(pid, status, fields={"trans_id": trans_id, "message": status.title(), **fields},
                         expect={"PENDING"}, owner="w1", note="done", reflect=op in ("capture", "refund", "void"))


def run(world, gateway):
    store, recon = world
    return Reconciler(store=store, kept=recon, gateway=gateway, today=lambda: DAY).run_day(DAY)


def test_a_clean_day_has_no_difference_and_is_kept(world) -> None:
    store, recon = world
    make(store, "p1", trans_id=T1)
    make(store, "p2", status="DECLINED", trans_id=T2, amount="4.00")
    gateway = FakeReportGateway([row(), row(trans_id=T2, order_id="p2", status="0", amount="4.00")])
    result = run(world, gateway)
    assert result.differences == [] and result.rows == 2 and result.records == 2
    assert gateway.reports == [(DAY, date(2025, 6, 16), False), (DAY, date(2025, 6, 16), True)]
    assert gateway.queries == []
    kept = recon.kept("2025-06-15")
    assert kept["differences"] == 0 and kept["report_rows"] == 2 and kept["by_kind"]["gateway_only"] == 0


def test_an_unknown_operation_is_adopted_from_the_report_with_an_audit_entry(world) -> None:
    store, recon = world
    make(store, "p1", status="UNKNOWN")
    result = run(world, FakeReportGateway([row()]))
    assert [f.kind for f in result.findings] == [Kind.ADOPTED] and result.differences == []
    record = store.get("p1")
    assert record["status"] == "APPROVED" and record["trans_id"] == T1 and record["reconciled"] == "report:2025-06-15"
    audit = store.audit(count=100)[-1]
    assert audit["to"] == "APPROVED" and "report of 2025-06-15" in audit["note"]
    assert recon.kept_rows("2025-06-15", "p1")[0]["trans_id"] == T1  # kept: it was not final when read


def test_an_adopted_void_is_reflected_on_its_sale(world) -> None:
    store, _ = world
    make(store, "s", trans_id=T1)
    store.claim("s:void", "void", owner="w1", lease_seconds=30, fields={"target": T1, "parent": "s",
                                                                         "order_id": "s:void"})
    store.transition("s:void", "UNKNOWN", expect={"PENDING"}, owner="w1", sent=True)
    result = run(world, FakeReportGateway([row(order_id="s", voided=True),
                                           row(trans_id=T2, trans_type="VOID", order_id="s:void", master_id=T1)]))
    assert [f.kind for f in result.findings] == [Kind.ADOPTED]
    assert store.get("s")["status"] == "VOIDED" and store.get("s:void")["status"] == "APPROVED"


def test_only_records_that_are_not_final_change(world) -> None:
    store, _ = world
    make(store, "p1", status="DECLINED", trans_id=T1)
    make(store, "p2", status="ERROR", needs_human="1")
    before = (store.get("p1"), store.get("p2"))
    result = run(world, FakeReportGateway([row(), row(trans_id=T2, order_id="p2")]))
    assert sorted(f.kind for f in result.findings) == [Kind.STATUS_MISMATCH, Kind.STATUS_MISMATCH]
    assert (store.get("p1"), store.get("p2")) == before


def test_a_live_worker_keeps_its_operation(world) -> None:
    store, _ = world
    make(store, "p1", status="PENDING")  # lease held by w1 for 30 s
    result = run(world, FakeReportGateway([row()]))
    assert result.findings == [] and result.busy == 1 and store.get("p1")["status"] == "PENDING"


def test_missing_records_are_asked_about_through_stq_before_they_are_ours_only(world) -> None:
    store, recon = world
    make(store, "late", trans_id=T1)       # its transaction was issued after midnight: stq finds it
    make(store, "gone", trans_id=T2)       # nowhere at the gateway
    make(store, "cannot", trans_id=T3)     # stq fails
    make(store, "err", status="ERROR", needs_human="1")
    make(store, "park", status="UNKNOWN")
    gateway = FakeReportGateway([], stq={"late": reply(trans_id=T1, order_id="late"), "gone": None,
                                         "cannot": ConnectionError("down")})
    result = run(world, gateway)
    assert sorted(gateway.queries) == ["cannot", "gone", "late"]
    ours_only = {f.payment_id: f.detail for f in result.findings if f.kind == Kind.OURS_ONLY}
    assert set(ours_only) == {"gone", "cannot"} and "could not confirm" in ours_only["cannot"]
    assert result.still_non_final == 1 and result.confirmed_by_stq == 2
    assert recon.kept_rows("2025-06-15", "err") == []  # what resolve checks against: nothing under it


def test_a_booking_under_our_order_id_and_a_console_void_are_reported(world) -> None:
    store, _ = world
    make(store, "p1", trans_id=T1)
    make(store, "p2", trans_id=T2)
    rows = [row(), row(trans_id=T3, order_id="p1"),                               # a second charge
            row(trans_id=T2, order_id="p2", voided=True),                         # voided in the console...
            row(trans_id="100000000004", trans_type="VOID", order_id="", master_id=T2),  # ...by this VOID
            row(trans_id="100000000005", order_id="elsewhere")]
    result = run(world, FakeReportGateway(rows))
    kinds = sorted((f.kind.value, f.payment_id) for f in result.findings)
    assert kinds == [("gateway_only", ""), ("gateway_only", "p1"), ("voided_at_gateway", "p2")]


def test_no_verdict_and_no_change_from_a_report_that_did_not_end(world) -> None:
    store, recon = world
    make(store, "p1", status="UNKNOWN")
    for failure in (ReportIncomplete("cut after 1 rows"), MalformedReport(3, "amount is not a two-decimal number")):
        gateway = FakeReportGateway([row(), row(trans_id=T2, order_id="x")], fail_after=1, failure=failure)
        with pytest.raises(ReconcileError, match="no verdict"):
            run(world, gateway)
        assert store.get("p1")["status"] == "UNKNOWN" and recon.kept("2025-06-15") is None


def test_a_card_number_typed_as_an_order_id_in_the_console_is_kept_masked(world) -> None:
    _, recon = world
    result = run(world, FakeReportGateway([row(order_id="4111111111111111")]))
    (finding,) = result.findings
    assert finding.kind == Kind.GATEWAY_ONLY
    kept = json.dumps(recon.kept("2025-06-15"))
    assert "4111111111111111" not in kept and "xxxxxxxxxxxx1111" in kept


def test_a_void_of_an_earlier_day_that_settled_all_the_same_is_found_in_the_settlement_report(world) -> None:
    store, _ = world
    store.clock.advance(-3 * 86400)
    make(store, "old", status="VOIDED", trans_id=T1)          # issued days before: not in the day's report
    store.clock.advance(3 * 86400)
    make(store, "fine", status="APPROVED", trans_id=T2)
    settled = [row(order_id="old", settled=True), row(trans_id=T2, order_id="fine", settled=True)]
    gateway = FakeReportGateway([row(trans_id=T2, order_id="fine", settled=True)], settled_rows=settled)
    result = run(world, gateway)
    assert [(f.kind, f.payment_id) for f in result.findings] == [(Kind.SETTLED_BUT_VOIDED, "old")]
    assert gateway.queries == []
    gateway.rows.append(row(order_id="old", settled=True))    # seen from both reports: said once
    assert [(f.kind, f.payment_id) for f in run(world, gateway).findings] == [(Kind.SETTLED_BUT_VOIDED, "old")]
