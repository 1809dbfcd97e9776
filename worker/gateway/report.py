"""The daily transaction report (``bpdailyreport2``): request builder and a streaming CSV parser. Pure: no I/O.

BluePay answers a header line of lower-case column names, then one line per transaction, and warns that
columns may be added or reordered: rows are read by header name (``csv.DictReader``), extra columns are
ignored, and a report without one of :data:`REQUIRED_COLUMNS` is refused as a whole.

Nothing here yields a row it is not sure of: a row that does not fit the header (too few or too many fields:
a truncated or garbled body), a trans id that is not 12 digits, an amount that is not a two-decimal number, an
unknown status, an unreadable date, or bytes that are not text raise :class:`MalformedReport` naming the line.
Card data: only the masked account is kept (a ``payment_account`` that is not masked is refused).
"""

from __future__ import annotations

import codecs
import csv
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Protocol, runtime_checkable

from . import protocol
from .errors import GatewayError, InvalidInput, MalformedReport, OutcomeUnknown, Rejected, ReportIncomplete
from .scrub import scrub
from .seal import normalize_hash_type, query_seal_message, seal

__all__ = ["ReportRow", "Report", "ByteStream", "StreamingTransport", "REQUIRED_COLUMNS", "report_request",
           "start_report", "parse_report", "iter_lines"]

logger = logging.getLogger("payments.gateway")

#: What a verdict is built from: without any of these the report is refused.
REQUIRED_COLUMNS = ("id", "trans_type", "amount", "status", "order_id", "master_id", "f_void", "issue_date",
                    "settle_date")
STATUSES = ("1", "0", "E")
_TRANS_ID = re.compile(r"\d{12}")
_AMOUNT = re.compile(r"-?\d{1,12}(?:\.\d{1,2})?")
_TRANS_TYPE = re.compile(r"[A-Z_]{2,20}")
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?")
_NO_DATE = frozenset({"", "NULL", "NONE", "0000-00-00", "0000-00-00 00:00:00"})
_TRUE = frozenset({"1", "Y", "YES", "T", "TRUE"})
_FALSE = frozenset({"", "0", "N", "NO", "F", "FALSE"})
# A masked account as BluePay shows it: x's then at most the last four digits (ACH: a bank account's last four).
_MASKED = re.compile(r"[xX*]*\d{0,4}")


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One transaction of the report, checked."""

    line: int
    trans_id: str
    trans_type: str
    amount: Decimal
    status: str  # "1" approved, "0" declined, "E" error
    order_id: str
    master_id: str  # the transaction a CAPTURE/REFUND/VOID refers to ("" for SALE/AUTH)
    voided: bool
    issue_date: str
    settle_date: str  # "" when not settled
    message: str = ""
    invoice_id: str = ""
    payment_type: str = ""
    card_type: str = ""
    masked_account: str = ""
    auth_code: str = ""

    @property
    def approved(self) -> bool:
        return self.status == "1"

    @property
    def settled(self) -> bool:
        return bool(self.settle_date)

    @property
    def amount_text(self) -> str:
        return f"{self.amount:.2f}"

    def as_dict(self) -> dict[str, str]:
        """JSON-safe, what a kept reconciliation shows of the row. No card data: the masked account only, and free
        text (an ORDER_ID or message typed in the console) with anything card-like masked."""
        return {"trans_id": self.trans_id, "trans_type": self.trans_type, "amount": self.amount_text,
                "status": self.status, "order_id": scrub(self.order_id), "master_id": self.master_id,
                "voided": "1" if self.voided else "", "issue_date": self.issue_date,
                "settle_date": self.settle_date, "message": scrub(self.message), "masked_account": self.masked_account}


def report_request(*, account_id: str, secret_key: str, mode: str, hash_type: str | None, start: date, end: date,
                   settled: bool, platform_merchant_id: str | None = None) -> dict[str, str]:
    """The sealed form fields of a bpdailyreport2 request (``end`` exclusive: day D is D..D+1).

    Field names as BluePay's Python library sends them; errors are excluded (they moved no money) and
    sub-accounts are not searched (one merchant account)."""
    if not isinstance(account_id, str) or not account_id.strip():
        raise InvalidInput("account_id", "required")
    if not isinstance(secret_key, str) or not secret_key:
        raise InvalidInput("secret_key", "required")
    mode_ = (mode or "").strip().upper()
    if mode_ not in ("TEST", "LIVE"):
        raise InvalidInput("mode", "must be TEST or LIVE")
    if not isinstance(start, date) or not isinstance(end, date):
        raise InvalidInput("report_dates", "start and end must be dates")
    if end <= start:
        raise InvalidInput("report_dates", "end must be after start (end is exclusive)")
    ht = normalize_hash_type(hash_type)
    fields = {
        "ACCOUNT_ID": account_id.strip(),
        **protocol.platform_fields(platform_merchant_id),
        "MODE": mode_,
        "REPORT_START_DATE": start.isoformat(),
        "REPORT_END_DATE": end.isoformat(),
        "QUERY_BY_SETTLEMENT": "1" if settled else "0",
        "QUERY_BY_HIERARCHY": "0",
        "EXCLUDE_ERRORS": "1",
        "TPS_HASH_TYPE": ht,
    }
    fields["TAMPER_PROOF_SEAL"] = seal(secret_key, query_seal_message(fields), ht)
    return fields


def iter_lines(chunks: Iterable[bytes], *, first_line: int = 1) -> Iterator[str]:
    """Decode UTF-8 chunks and split them into lines (each keeping its line end, as ``csv`` wants)."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    pending = ""
    line = first_line
    try:
        for chunk in chunks:
            pending += decoder.decode(chunk)
            if "\n" not in pending:
                continue
            *whole, pending = pending.split("\n")
            for text in whole:
                yield text + "\n"
                line += 1
        pending += decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise MalformedReport(line, "not UTF-8 text (garbage instead of a report)") from None
    if pending:
        yield pending


def _date(line: int, column: str, value: str, *, required: bool) -> str:
    text = value.strip()
    if text.upper() in _NO_DATE:
        if required:
            raise MalformedReport(line, f"{column} is empty")
        return ""
    match = _DATE.fullmatch(text)
    if not match:
        raise MalformedReport(line, f"{column} is not a date ({_show(text)})")
    try:
        date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        raise MalformedReport(line, f"{column} is not a date ({_show(text)})") from None
    return text


def _show(value: str, limit: int = 24) -> str:
    """A bad value quoted in an error: short, and digits-only runs masked (it could be a card number)."""
    shown = re.sub(r"\d{7,}", lambda m: "#" * len(m.group()), value)
    return repr(shown if len(shown) <= limit else shown[:limit] + "...")


def _fields(line: int, raw: dict[str | None, str | list[str] | None]) -> dict[str, str]:
    """A CSV row's fields by name, exactly as many as the header names."""
    if None in raw:  # DictReader's restkey: more fields than the header
        raise MalformedReport(line, "more fields than the header (garbled row)")
    values: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(value, str):  # DictReader's restval: fewer fields than the header
            raise MalformedReport(line, "fewer fields than the header (truncated or garbled row)")
        values[key or ""] = value
    return values


def _amount(line: int, text: str) -> Decimal:
    amount_text = text.strip()
    if not _AMOUNT.fullmatch(amount_text):
        raise MalformedReport(line, f"amount is not a two-decimal number ({_show(amount_text)})")
    try:
        return Decimal(amount_text).quantize(Decimal("0.01"))
    except InvalidOperation:  # pragma: no cover - the pattern guards it
        raise MalformedReport(line, f"amount is not a number ({_show(amount_text)})") from None


def _row(line: int, raw: dict[str | None, str | list[str] | None]) -> ReportRow:
    values = _fields(line, raw)
    trans_id = values["id"].strip()
    if not _TRANS_ID.fullmatch(trans_id):
        raise MalformedReport(line, f"id is not a 12-digit transaction id ({_show(trans_id)})")
    trans_type = values["trans_type"].strip().upper()
    if not _TRANS_TYPE.fullmatch(trans_type):
        raise MalformedReport(line, f"trans_type is not a transaction type ({_show(trans_type)})")
    amount = _amount(line, values["amount"])
    status = values["status"].strip().upper()
    if status not in STATUSES:
        raise MalformedReport(line, f"status is not 1, 0 or E ({_show(status)})")
    void_flag = values["f_void"].strip().upper()
    if void_flag not in _TRUE and void_flag not in _FALSE:
        raise MalformedReport(line, f"f_void is not a flag ({_show(void_flag)})")
    master_id = values["master_id"].strip()
    if master_id in ("0", "NULL"):
        master_id = ""
    if master_id and not _TRANS_ID.fullmatch(master_id):
        raise MalformedReport(line, f"master_id is not a 12-digit transaction id ({_show(master_id)})")
    masked = values.get("payment_account", "").strip()
    if masked and not _MASKED.fullmatch(masked):
        raise MalformedReport(line, "payment_account is not masked")
    return ReportRow(
        line=line, trans_id=trans_id, trans_type=trans_type, amount=amount, status=status,
        order_id=values["order_id"].strip(), master_id=master_id, voided=void_flag in _TRUE,
        issue_date=_date(line, "issue_date", values["issue_date"], required=True),
        settle_date=_date(line, "settle_date", values["settle_date"], required=False),
        message=values.get("message", "").strip(), invoice_id=values.get("invoice_id", "").strip(),
        payment_type=values.get("payment_type", "").strip().upper(), card_type=values.get("card_type", "").strip(),
        masked_account=masked, auth_code=values.get("auth_code", "").strip(),
    )


def parse_report(lines: Iterable[str]) -> Iterator[ReportRow]:
    """Rows of a report, one at a time (never the whole report in memory).

    The header is read at once (so a report without one of :data:`REQUIRED_COLUMNS`, or garbage, fails here,
    before any row is asked for); rows are read as they are iterated. Any order of columns, extra columns
    ignored, blank lines skipped (csv does). Raises :class:`MalformedReport` at the first thing that is not a
    report row."""
    source = iter(lines)
    # bpdailyreport2's text escapes a comma inside a value with a backslash ("\,"); quoted CSV is read too.
    reader = csv.reader(source, escapechar="\\")
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise MalformedReport(1, f"unreadable header ({exc})") from None
    if header is None:
        raise MalformedReport(0, "empty body: no header line")
    names = [name.strip().lower() for name in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise MalformedReport(1, "missing required columns: " + ", ".join(missing))
    if len(set(names)) != len(names):
        raise MalformedReport(1, "a column name appears twice")
    return _rows(csv.DictReader(source, fieldnames=names, escapechar="\\"), reader.line_num)


def _rows(rows: csv.DictReader[str], header_lines: int) -> Iterator[ReportRow]:
    while True:
        try:
            raw = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            raise MalformedReport(header_lines + rows.line_num + 1, f"unreadable CSV ({exc})") from None
        yield _row(header_lines + rows.line_num, raw)


class ByteStream(Protocol):
    """A reply whose body arrives in chunks (``worker.gateway.transport.HttpStream``)."""

    status_code: int

    def chunks(self) -> Iterator[bytes]: ...

    def read(self, limit: int = ...) -> bytes: ...

    def close(self) -> None: ...


@runtime_checkable
class StreamingTransport(Protocol):
    """A transport that can hand over a reply's body as it arrives (the daily report)."""

    def stream(self, url: str, data: Mapping[str, str]) -> ByteStream: ...


def start_report(stream: ByteStream) -> Iterator[ReportRow]:
    """Check the reply and read its header (both inside the client's retry); the rows follow as iterated.

    A refusal (HTTP 400: the text's single line naming the reason, or STATUS=E pairs) is :class:`Rejected`;
    any other non-200 reply :class:`OutcomeUnknown` (read-only: retried)."""
    try:
        if stream.status_code != 200:
            text = stream.read(4096).decode("utf-8", "replace")
            pairs = protocol.parse_pairs(text)
            lower = {k.lower(): v for k, v in pairs.items()}
            if stream.status_code == 400 and (lower.get("status") or "").strip().upper() == "E":
                raise Rejected(protocol.Response(status="ERROR", message=lower.get("message", "")))
            line = text.strip().splitlines()[0].strip() if text.strip() else ""
            if stream.status_code == 400 and line and "=" not in line:
                raise Rejected(protocol.Response(status="ERROR", message=scrub(line)[:200]))
            raise OutcomeUnknown(f"bpdailyreport2 answered HTTP {stream.status_code}", status_code=stream.status_code)
        return parse_report(iter_lines(stream.chunks()))
    except BaseException:
        stream.close()
        raise


class Report:
    """The rows of one daily report as they arrive: iterate it once; ``close()`` (or ``with``) ends it early.

    A failure while the body is read ends the iteration with :class:`ReportIncomplete`: every row yielded
    before was whole and checked, but whatever consumed them must not conclude anything from a report that
    did not end."""

    def __init__(self, stream: ByteStream, rows: Iterator[ReportRow], *, start: date, end: date, settled: bool,
                 attempts: int) -> None:
        self._stream = stream
        self._rows = rows
        self.start, self.end, self.settled, self.attempts = start, end, settled, attempts
        self.count = 0

    def __iter__(self) -> Iterator[ReportRow]:
        try:
            for row in self._rows:
                self.count += 1
                yield row
        except MalformedReport:
            raise
        except GatewayError as exc:
            raise ReportIncomplete(f"the report stopped after {self.count} rows: {exc}") from None
        finally:
            self._stream.close()
        logger.info("gateway REPORT %s..%s settled=%s: %d rows", self.start, self.end, self.settled, self.count)

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> Report:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
