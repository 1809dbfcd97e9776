"""The daily report over real HTTP: BluePayClient.report against the sandbox's bpdailyreport2 (both modes, console
bookings and voids, settlement), the wire format read without project code, and the faults a report can meet."""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import hmac
import io
import uuid
from decimal import Decimal

import pytest
import requests

from tests.support.sandbox import running_sandbox
from worker.gateway import BluePayClient, MalformedReport, Rejected, ReportIncomplete, RetryPolicy

CARD = {"number": "4111111111111111", "expire": "1230", "cvv2": "123"}


@pytest.fixture(scope="module")
def sandbox():
    with running_sandbox(duplicate_window=0) as sb:
        yield sb


@pytest.fixture()
def sb(sandbox):
    sandbox.reset()
    yield sandbox
    sandbox.set_faults({})


def client(sb, secret=None, **kw) -> BluePayClient:
    kw.setdefault("retry_policy", RetryPolicy(max_attempts=4, max_seconds=30, initial_wait=0.01, max_wait=0.05))
    return BluePayClient(account_id=sb.account_id, secret_key=secret or sb.secret_key, mode="TEST",
                         base_url=sb.interfaces_url, read_timeout=10, **kw)


def today() -> dt.date:
    return dt.date.today()  # the sandbox's days are its local days, as stq's


def day_report(c: BluePayClient, settled: bool = False) -> list:
    return list(c.report(today(), today() + dt.timedelta(days=1), settled=settled))


def oid() -> str:
    return "op-" + uuid.uuid4().hex[:12]


def test_a_day_holds_our_sales_console_bookings_and_voids_read_by_name() -> None:
    with running_sandbox(duplicate_window=0) as sb:
        c = client(sb)
        ours, console = oid(), oid()
        sale = c.sale("3.00", CARD, order_id=ours)
        declined = c.sale("4.00", CARD, order_id=oid())
        booked = sb.book("5.00", order_id=console, invoice_id="INV-9")
        void = sb.console_void(sale.trans_id)
        rows = {r.trans_id: r for r in day_report(c)}
        assert set(rows) == {sale.trans_id, declined.trans_id, booked["id"], void["id"]}
        mine = rows[sale.trans_id]
        assert (mine.order_id, mine.trans_type, mine.amount, mine.status, mine.voided) == (
            ours, "SALE", Decimal("3.00"), "1", True)
        assert mine.masked_account == "xxxxxxxxxxxx1111" and not mine.settled
        assert rows[declined.trans_id].status == "0"
        assert (rows[booked["id"]].order_id, rows[booked["id"]].invoice_id) == (console, "INV-9")
        v = rows[void["id"]]
        assert (v.trans_type, v.master_id, v.order_id, v.amount) == ("VOID", sale.trans_id, "", Decimal("3.00"))


def test_settled_mode_reports_only_what_settled(sb) -> None:
    c = client(sb)
    a = c.sale("3.00", CARD, order_id=oid())
    c.sale("5.00", CARD, order_id=oid())
    assert sb.settle([a.trans_id]) == [a.trans_id]
    (row,) = day_report(c, settled=True)
    assert row.trans_id == a.trans_id and row.settled
    assert {r.settled for r in day_report(c)} == {True, False}


def test_days_outside_the_range_and_the_other_mode_are_not_reported(sb) -> None:
    c = client(sb)
    yesterday = dt.datetime.combine(today() - dt.timedelta(days=1), dt.time(12)).timestamp()
    sb.book("7.00", order_id=oid(), created_at=yesterday)
    sb.book("9.00", order_id=oid(), mode="LIVE")
    assert day_report(c) == []
    (row,) = list(c.report(today() - dt.timedelta(days=1), today()))
    assert row.amount == Decimal("7.00")


def test_the_wire_format_read_without_project_code(sb) -> None:
    sb.book("3.00", order_id="has,comma")
    start, end = today().isoformat(), (today() + dt.timedelta(days=1)).isoformat()
    fields = {"ACCOUNT_ID": sb.account_id, "REPORT_START_DATE": start, "REPORT_END_DATE": end, "MODE": "TEST",
              "QUERY_BY_SETTLEMENT": "0", "TPS_HASH_TYPE": "SHA256",
              "TAMPER_PROOF_SEAL": hashlib.sha256(f"{sb.secret_key}{sb.account_id}{start}{end}".encode()).hexdigest()}
    r = requests.post(sb.interfaces_url + "bpdailyreport2", data=fields, timeout=10)
    assert r.status_code == 200 and r.headers["Transfer-Encoding"] == "chunked"
    assert "has\\,comma" in r.text  # the text: "',' becomes '\\,'"
    (row,) = list(csv.DictReader(io.StringIO(r.text), escapechar="\\"))
    for column in ("id", "payment_type", "trans_type", "amount", "card_type", "payment_account", "order_id",
                   "invoice_id", "master_id", "status", "f_void", "message", "issue_date", "settle_date", "auth_code"):
        assert column in row
    assert row["order_id"] == "has,comma" and row["amount"] == "3.00" and row["status"] == "1"
    plain = requests.post(sb.interfaces_url + "bpdailyreport2", data=dict(fields, DO_NOT_ESCAPE="1"), timeout=10)
    assert "hascomma" in plain.text and '"' not in plain.text
    bad = dict(fields, TAMPER_PROOF_SEAL=hmac.new(b"wrong", b"x", hashlib.sha256).hexdigest())
    refused = requests.post(sb.interfaces_url + "bpdailyreport2", data=bad, timeout=10)
    assert refused.status_code == 400 and refused.text.strip() == "SECURITY ERROR"  # the text: a single line


def test_a_wrong_secret_is_refused_not_retried(sb) -> None:
    with pytest.raises(Rejected, match="SECURITY ERROR"):
        day_report(client(sb, secret="X" * 32))
    assert sb.stats()["requests"]["bpdailyreport2"] == 1


@pytest.mark.parametrize("fault", ["refuse", "http_502", "http_503", "drop_after_commit", "http_500_after_commit",
                                   "garbled", "truncated"])
def test_a_fault_before_the_rows_is_retried_and_the_report_comes_whole(sb, fault: str) -> None:
    ids = set(sb.book_many([{"amount": "3.00", "order_id": oid()} for _ in range(20)]))
    sb.set_faults({"endpoints": ["bpdailyreport2"], "sequence": [fault, fault]})
    assert {r.trans_id for r in day_report(client(sb))} == ids
    assert sb.stats()["requests"]["bpdailyreport2"] == 3


def test_a_fault_that_outlasts_the_retries_is_an_error_never_a_short_report(sb) -> None:
    sb.book_many([{"amount": "3.00", "order_id": oid()} for _ in range(5)])
    sb.set_faults({"endpoints": ["bpdailyreport2"], "probabilities": {"garbled": 1.0}})
    with pytest.raises(MalformedReport, match="not UTF-8"):
        day_report(client(sb))


def test_a_report_cut_after_its_first_rows_ends_in_report_incomplete(sb) -> None:
    sb.book_many([{"amount": "3.00", "order_id": oid()} for _ in range(3000)])  # several 64 KiB chunks
    sb.set_faults({"endpoints": ["bpdailyreport2"], "probabilities": {"truncated": 1.0}})
    report = client(sb).report(today(), today() + dt.timedelta(days=1))
    seen = 0
    with pytest.raises(ReportIncomplete):
        for _ in report:
            seen += 1
    assert 0 < seen < 3000


def test_console_bookings_and_voids_follow_the_gateways_rules(sb) -> None:
    c = client(sb)
    sale = c.sale("3.00", CARD, order_id=oid())
    sb.settle([sale.trans_id])
    with pytest.raises(requests.HTTPError):
        sb.console_void(sale.trans_id)  # Cannot VOID a settled transaction.
    with pytest.raises(requests.HTTPError):
        sb.book("3.001")
    with pytest.raises(requests.HTTPError):
        sb.book("3.00", payment_account="4111111111111111")
