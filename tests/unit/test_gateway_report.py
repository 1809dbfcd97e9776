"""The daily report: request fields and seal, the CSV parser (by header name, strict about every row), and
BluePayClient.report over a fake streaming transport (retry of the header, refusals, a body cut mid-way)."""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from datetime import date
from decimal import Decimal

import pytest

from worker.gateway import (
    BluePayClient,
    InvalidInput,
    MalformedReport,
    NotSent,
    OutcomeUnknown,
    Rejected,
    ReportIncomplete,
    RetryPolicy,
)
from worker.gateway.report import REQUIRED_COLUMNS, iter_lines, parse_report, report_request

ACCOUNT, SECRET = "100000000001", "SANDBOXSECRETKEY0000000000000000"
HEADER = ("id,payment_type,trans_type,amount,card_type,payment_account,order_id,invoice_id,master_id,status,"
          "f_void,message,issue_date,settle_date,auth_code")
ROW_SALE = ("100000000101,CREDIT,SALE,3.00,VISA,xxxxxxxxxxxx1111,op-1,ORD-1,,1,,Approved Sale,"
            "2026-11-28 10:00:00,,4F2K1Q")
ROW_VOID = ("100000000102,CREDIT,VOID,3.00,VISA,xxxxxxxxxxxx1111,op-1:void,,100000000101,1,,Approved Void,"
            "2026-11-28 10:00:05,,ABC123")


def rows_of(text: str) -> list:
    return list(parse_report(text.splitlines(keepends=True)))


# ------------------------------------------------------------------ request


def test_request_fields_are_the_ones_bluepays_library_sends_and_the_seal_covers_account_and_dates() -> None:
    fields = report_request(account_id=ACCOUNT, secret_key=SECRET, mode="test", hash_type="HMAC_SHA256",
                            start=date(2026, 11, 28), end=date(2026, 11, 29), settled=False)
    assert fields["REPORT_START_DATE"] == "2026-11-28" and fields["REPORT_END_DATE"] == "2026-11-29"
    assert fields["QUERY_BY_SETTLEMENT"] == "0" and fields["EXCLUDE_ERRORS"] == "1"
    assert fields["QUERY_BY_HIERARCHY"] == "0" and fields["MODE"] == "TEST"
    assert "DO_NOT_ESCAPE" not in fields  # escaped commas (the text's default) keep a value with a comma whole
    expected = hmac.new(SECRET.encode(), f"{ACCOUNT}2026-11-282026-11-29".encode(), hashlib.sha256).hexdigest()
    assert fields["TAMPER_PROOF_SEAL"] == expected and fields["TPS_HASH_TYPE"] == "HMAC_SHA256"
    settled = report_request(account_id=ACCOUNT, secret_key=SECRET, mode="TEST", hash_type=None,
                             start=date(2026, 11, 28), end=date(2026, 11, 29), settled=True)
    assert settled["QUERY_BY_SETTLEMENT"] == "1"


def test_request_refuses_an_empty_or_backwards_date_range() -> None:
    with pytest.raises(InvalidInput, match="end must be after start"):
        report_request(account_id=ACCOUNT, secret_key=SECRET, mode="TEST", hash_type=None,
                       start=date(2026, 11, 28), end=date(2026, 11, 28), settled=False)


# ------------------------------------------------------------------ parser


def test_rows_are_read_by_header_name() -> None:
    sale, void = rows_of(f"{HEADER}\n{ROW_SALE}\n{ROW_VOID}\n")
    assert (sale.trans_id, sale.trans_type, sale.amount, sale.status, sale.order_id) == (
        "100000000101", "SALE", Decimal("3.00"), "1", "op-1")
    assert sale.approved and not sale.voided and not sale.settled and sale.master_id == ""
    assert sale.masked_account == "xxxxxxxxxxxx1111" and sale.line == 2
    assert (void.trans_type, void.master_id, void.line) == ("VOID", "100000000101", 3)


def test_reordered_and_extra_columns_give_the_same_rows() -> None:
    names = HEADER.split(",")
    values = ROW_SALE.split(",")
    order = list(reversed(range(len(names))))
    text = (",".join(["custom_id2", *(names[i] for i in order), "rebid"]) + "\n"
            + ",".join(["X", *(values[i] for i in order), "77"]) + "\n")
    (row,) = rows_of(text)
    (plain,) = rows_of(f"{HEADER}\n{ROW_SALE}\n")
    assert row == plain


def test_quoted_fields_and_flags_and_settlement() -> None:
    text = (f"{HEADER}\n"
            '100000000103,CREDIT,SALE,1234.50,VISA,xxxxxxxxxxxx1111,"op,2",,,1,1,"Approved, then voided",'
            '2026-11-28 10:00:00,2026-11-28 23:00:00,X\n')
    (row,) = rows_of(text)
    assert row.order_id == "op,2" and row.message == "Approved, then voided"
    assert row.voided and row.settled and row.amount == Decimal("1234.50")


@pytest.mark.parametrize("missing", REQUIRED_COLUMNS)
def test_a_report_without_a_required_column_is_refused(missing: str) -> None:
    names = HEADER.split(",")
    values = ROW_SALE.split(",")
    keep = [i for i, n in enumerate(names) if n != missing]
    text = ",".join(names[i] for i in keep) + "\n" + ",".join(values[i] for i in keep) + "\n"
    with pytest.raises(MalformedReport, match=f"missing required columns: {missing}"):
        rows_of(text)


@pytest.mark.parametrize(("row", "reason"), [
    (ROW_SALE.rsplit(",", 3)[0], "fewer fields than the header"),          # truncated mid-row
    (ROW_SALE + ",extra", "more fields than the header"),
    (ROW_SALE.replace("3.00", "3.0O"), "amount is not a two-decimal number"),
    (ROW_SALE.replace("3.00", "3.001"), "amount is not a two-decimal number"),
    (ROW_SALE.replace("3.00", ""), "amount is not a two-decimal number"),
    (ROW_SALE.replace("3.00", "1e3"), "amount is not a two-decimal number"),
    (ROW_SALE.replace("100000000101", "10000000010"), "id is not a 12-digit transaction id"),
    (ROW_SALE.replace(",1,,Approved", ",7,,Approved"), "status is not 1, 0 or E"),
    (ROW_SALE.replace(",1,,Approved", ",1,maybe,Approved"), "f_void is not a flag"),
    (ROW_SALE.replace("2026-11-28 10:00:00", "yesterday"), "issue_date is not a date"),
    (ROW_SALE.replace("2026-11-28 10:00:00", "2026-02-30 10:00:00"), "issue_date is not a date"),
    (ROW_SALE.replace("xxxxxxxxxxxx1111", "4111111111111111"), "payment_account is not masked"),
])
def test_a_bad_row_is_an_error_naming_its_line_never_a_row(row: str, reason: str) -> None:
    with pytest.raises(MalformedReport, match=f"line 3: {reason}") as caught:
        rows_of(f"{HEADER}\n{ROW_VOID}\n{row}\n")
    assert "4111111111111111" not in str(caught.value)


def test_rows_before_a_bad_row_were_whole_but_the_bad_one_stops_the_report() -> None:
    parsed = parse_report(f"{HEADER}\n{ROW_SALE}\n{ROW_SALE[:40]}\n".splitlines(keepends=True))
    first = next(parsed)
    assert first.trans_id == "100000000101"
    with pytest.raises(MalformedReport, match="line 3"):
        next(parsed)


@pytest.mark.parametrize(("body", "reason"), [
    (b"", "empty body"),
    (b"\x00\xff\xfe<html><body>gateway hiccup", "not UTF-8"),
    (b"<html><body>502 Bad Gateway</body></html>\n", "missing required columns"),
    (b"id,id,trans_type,amount,status,order_id,master_id,f_void,issue_date,settle_date\n", "appears twice"),
])
def test_garbage_is_refused_before_any_row(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedReport, match=reason):
        list(parse_report(iter_lines([body])))


def test_lines_split_across_chunks_and_multibyte_characters_survive() -> None:
    text = f"{HEADER}\n{ROW_SALE.replace('Approved Sale', 'Approved Zürich')}\n".encode()
    chunks = [text[i:i + 7] for i in range(0, len(text), 7)]
    (row,) = parse_report(iter_lines(chunks))
    assert row.message == "Approved Zürich"


def test_the_parser_is_lazy_a_big_report_is_never_held_whole() -> None:
    produced = 0

    def lines() -> Iterator[str]:
        nonlocal produced
        yield HEADER + "\n"
        for i in range(100_000):
            produced += 1
            yield ROW_SALE.replace("100000000101", f"{200000000000 + i}") + "\n"

    rows = parse_report(lines())
    for _ in range(3):
        next(rows)
    assert produced <= 4


# ------------------------------------------------------------------ client


class FakeStream:
    def __init__(self, status: int, chunks: list, fail_after: int | None = None):
        self.status_code = status
        self._chunks = chunks
        self.fail_after = fail_after
        self.closed = False

    def chunks(self) -> Iterator[bytes]:
        for i, chunk in enumerate(self._chunks):
            if self.fail_after is not None and i >= self.fail_after:
                raise OutcomeUnknown("ChunkedEncodingError reading")
            yield chunk

    def read(self, limit: int = 65536) -> bytes:
        return b"".join(self._chunks)[:limit]

    def close(self) -> None:
        self.closed = True


class FakeStreamingTransport:
    def __init__(self, *script):
        self.script = list(script)
        self.calls: list = []

    def post(self, url, data):
        raise AssertionError("the report streams")

    def stream(self, url, data):
        self.calls.append((url, dict(data)))
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item


def client(*script) -> tuple[BluePayClient, FakeStreamingTransport]:
    transport = FakeStreamingTransport(*script)
    return BluePayClient(account_id=ACCOUNT, secret_key=SECRET, transport=transport, sleep=lambda s: None,
                         retry_policy=RetryPolicy(max_attempts=3, max_seconds=60)), transport


def body(*lines: str) -> list[bytes]:
    return [("\n".join(lines) + "\n").encode()]


def test_report_posts_to_bpdailyreport2_and_streams_rows() -> None:
    stream = FakeStream(200, body(HEADER, ROW_SALE, ROW_VOID))
    c, t = client(stream)
    report = c.report(date(2026, 11, 28), date(2026, 11, 29))
    assert [r.trans_id for r in report] == ["100000000101", "100000000102"]
    assert report.count == 2 and stream.closed
    url, fields = t.calls[0]
    assert url.endswith("/interfaces/bpdailyreport2") and fields["QUERY_BY_SETTLEMENT"] == "0"


def test_the_request_and_the_header_are_retried_like_stq() -> None:
    garbled = FakeStream(200, [b"\x00\xff\xfe<html>"])
    c, t = client(NotSent("refused"), FakeStream(502, [b"Bad Gateway"]), FakeStream(200, body(HEADER, ROW_SALE)))
    assert [r.order_id for r in c.report(date(2026, 11, 28), date(2026, 11, 29), settled=True)] == ["op-1"]
    assert len(t.calls) == 3 and t.calls[0][1]["QUERY_BY_SETTLEMENT"] == "1"
    c, t = client(garbled, garbled, garbled)
    with pytest.raises(MalformedReport, match="not UTF-8"):
        c.report(date(2026, 11, 28), date(2026, 11, 29))
    assert len(t.calls) == 3 and garbled.closed


def test_a_refused_request_is_final() -> None:
    c, t = client(FakeStream(400, [b"STATUS=E&MESSAGE=SECURITY+ERROR"]))
    with pytest.raises(Rejected, match="SECURITY ERROR"):
        c.report(date(2026, 11, 28), date(2026, 11, 29))
    assert len(t.calls) == 1


def test_a_body_cut_mid_way_ends_in_report_incomplete_after_the_whole_rows() -> None:
    text = (HEADER + "\n" + ROW_SALE + "\n" + ROW_VOID + "\n").encode()
    cut = len(HEADER) + len(ROW_SALE) + 2 + 10
    stream = FakeStream(200, [text[:cut], text[cut:]], fail_after=1)
    c, _ = client(stream)
    seen = []
    with pytest.raises(ReportIncomplete, match="stopped after 1 rows"):
        for row in c.report(date(2026, 11, 28), date(2026, 11, 29)):
            seen.append(row.trans_id)
    assert seen == ["100000000101"] and stream.closed


def test_a_transport_without_streaming_is_refused() -> None:
    class PostOnly:
        def post(self, url, data):
            raise AssertionError

    c = BluePayClient(account_id=ACCOUNT, secret_key=SECRET, transport=PostOnly())
    with pytest.raises(InvalidInput, match="streams"):
        c.report(date(2026, 11, 28), date(2026, 11, 29))
