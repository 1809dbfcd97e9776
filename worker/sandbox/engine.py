"""The sandbox's gateway logic: TEST-mode rules, the in-memory ledger, stq lookups.

Pure Python, no HTTP: ``Engine.bp10emu(fields)`` and ``Engine.stq(fields)`` take the
decoded form fields and return reply pairs. One lock guards the ledger.

The ledger never stores a full card number or a CVV2: only the masked account
(``xxxxxxxxxxxx`` + last four), the card type, the expiry and a salted HMAC of the
number (per-process random salt) used for duplicate scrubbing.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from . import seal as _seal
from .dialect import Dialect

DEFAULT_ACCOUNT_ID = "100000000001"
DEFAULT_SECRET_KEY = "SANDBOXSECRETKEY0000000000000000"
DEFAULT_DUPLICATE_WINDOW = 120.0

# The stamp definition of stq rows in the dialect that stamps them (stq_stamp=on). BluePay documents no stq
# stamp: this exists only so that a client can be tested against a gateway that sends one anyway.
STQ_STAMP_DEF = "id trans_type amount status message order_id f_void settle_date"

#: The stq output fields of BluePay's stq text (2013-05-17), in its order: a row names no others.
STQ_FIELDS = ("id", "payment_type", "trans_type", "amount", "card_type", "payment_account", "order_id",
              "invoice_id", "custom_id", "custom_id2", "master_id", "status", "f_void", "message", "origin",
              "issue_date", "settle_date", "rebilling_id", "settlement_id", "card_expire", "bank_name", "addr1",
              "addr2", "city", "state", "zip", "phone", "email", "auth_code", "name1", "name2", "company_name",
              "memo", "backend_id", "remote_ip", "avs_result", "cvv_result", "merchdata", "card_present")

_AMOUNT_RE = re.compile(r"^\d{1,9}(?:\.\d{1,2})?$")
_CVV_RE = re.compile(r"^\d{3,4}$")
_EXP_RE = re.compile(r"^(\d{2})(\d{2})$")
# stq's text writes its dates YYYY-MM-DD HH:MM:SS, the daily report's YYYY-MM-DD: both are read.
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(?: \d{2}:\d{2}:\d{2})?$")

SUPPORTED_TYPES = ("SALE", "AUTH", "CREDIT", "CAPTURE", "REFUND", "VOID", "UPDATE")
# TRANS_SUBMIT_TIMESTAMP is US Central time (bp10emu text, TRANSACTION TIMESTAMP); TRANS_EXPIRE_PERIOD "N MINUTES".
_CENTRAL = ZoneInfo("America/Chicago")
_SUBMIT_FORMAT = "%Y-%m-%d %H:%M:%S"
_PERIOD_RE = re.compile(r"^\s*(\d{1,6})\s*MINUTES?\s*$", re.IGNORECASE)
TOO_OLD = "TRANSACTION TOO OLD"
_ZERO = Decimal("0.00")

# stq search fields (request name, lower-case) -> ledger attribute
_STQ_FILTERS = {
    "id": "id", "order_id": "order_id", "invoice_id": "invoice_id",
    "custom_id": "custom_id", "custom_id2": "custom_id2", "trans_type": "trans_type",
    "amount": "amount", "payment_type": "payment_type", "name1": "name1", "name2": "name2",
}


def now_str(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def luhn_ok(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_type(number: str) -> str:
    n = number
    if n.startswith("4"):
        return "VISA"
    if n[:2] in ("34", "37"):
        return "AMEX"
    p2, p4, p6 = int(n[:2] or 0), int(n[:4] or 0), int(n[:6] or 0)
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return "MC"
    if n.startswith("6011") or n.startswith("65") or 644 <= int(n[:3] or 0) <= 649 or 622126 <= p6 <= 622925:
        return "DISC"
    if 3528 <= p4 <= 3589:
        return "JCB"
    if n[:2] in ("36", "38") or 300 <= int(n[:3] or 0) <= 305:
        return "DC"
    return "UNKN"


def mask(number: str) -> str:
    return "xxxxxxxxxxxx" + number[-4:]


def parse_amount(text: str) -> Decimal | None:
    if not _AMOUNT_RE.match(text):
        return None
    try:
        return Decimal(text).quantize(Decimal("0.01"))
    except InvalidOperation:  # pragma: no cover - regex guards it
        return None


def fmt(amount: Decimal) -> str:
    return f"{amount:.2f}"


#: Ends a bp10emu request: sets Result, STATUS and MESSAGE (and extra fields), stamps the reply, returns it.
#: A follow-up refused: (Result, MESSAGE, extra reply fields).
Refused = tuple[str, str, dict[str, str]]
Finish = Callable[..., dict[str, str]]


@dataclass
class Entry:
    """One ledger row: an approved or declined transaction (errors are not kept)."""

    id: str
    account: str
    trans_type: str
    amount: Decimal
    status: str  # "1" approved, "0" declined
    result: str  # APPROVED / DECLINED
    message: str
    mode: str
    created_at: float
    issue_date: str
    payment_type: str = "CREDIT"
    order_id: str = ""
    invoice_id: str = ""
    custom_id: str = ""
    custom_id2: str = ""
    name1: str = ""
    name2: str = ""
    payment_account: str = ""
    card_type: str = ""
    card_expire: str = ""
    card_hash: str = ""
    auth_code: str = ""
    avs: str = ""
    cvv2: str = ""
    origin: str = ""  # the RRNO a follow-up (CAPTURE/REFUND/VOID) refers to
    settled: bool = False
    settle_date: str = ""
    settled_at: float = 0.0
    voided: bool = False
    voided_by: str = ""
    captured: bool = False
    captured_by: str = ""
    refunded: Decimal = _ZERO
    refunds: list[str] = field(default_factory=list)  # the refunds' transaction ids
    base_type: str = ""  # an UPDATE: the type of what it updated (SALE, AUTH): the update stands in for it
    updated_by: str = ""  # the UPDATE that replaced this transaction (void/refund/capture the update instead)
    cust_token: str = ""  # CUST_TOKEN used, or NEW_CUST_TOKEN established
    stored_indicator: str = ""  # STORED_INDICATOR / STORED_TYPE / STORED_ID as received (STORED_ID: as answered)
    stored_type: str = ""
    stored_id_sent: str = ""  # the STORED_ID the request carried (for tests: what the client sent)
    stored_id: str = ""
    platform_merchant_id: str = ""  # the sub-merchant a platform charged for (PLATFORM_MERCHANT_ID), if any

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "account": self.account, "trans_type": self.trans_type, "amount": fmt(self.amount),
            "status": self.status, "result": self.result, "message": self.message,
            "order_id": self.order_id, "invoice_id": self.invoice_id,
            "rrno": self.origin, "origin": self.origin,
            "payment_account": self.payment_account, "card_type": self.card_type,
            "card_expire": self.card_expire, "auth_code": self.auth_code,
            "mode": self.mode, "created_at": self.created_at, "issue_date": self.issue_date,
            "settled": self.settled, "settle_date": self.settle_date,
            "voided": self.voided, "voided_by": self.voided_by,
            "captured": self.captured, "captured_by": self.captured_by,
            "refunded": fmt(self.refunded), "refunds": list(self.refunds),
            "base_type": self.base_type, "updated_by": self.updated_by,
            "cust_token": self.cust_token, "stored_indicator": self.stored_indicator,
            "stored_type": self.stored_type, "stored_id": self.stored_id, "stored_id_sent": self.stored_id_sent,
            "platform_merchant_id": self.platform_merchant_id,
        }

    def settleable(self) -> bool:
        return (self.status == "1" and not self.settled and not self.voided and not self.updated_by
                and (self.base_type or self.trans_type) in ("SALE", "CAPTURE", "REFUND", "CREDIT"))


class Engine:
    """Ledger plus rules. Thread-safe: every ledger read and write holds ``self.lock``."""

    def __init__(self, account_id: str = DEFAULT_ACCOUNT_ID, secret_key: str = DEFAULT_SECRET_KEY,
                 duplicate_window: float = DEFAULT_DUPLICATE_WINDOW, clock: Callable[[], float] = time.time,
                 dialect: Dialect | None = None, clock_offset: float = 0.0,
                 platform_merchant_ids: tuple[str, ...] = (), accounts: Mapping[str, str] | None = None) -> None:
        #: the merchant accounts this sandbox serves, id -> secret: the first one's, and ``accounts`` (several merchant
        #: accounts at one gateway). A request is served as the account it names (MERCHANT / ACCOUNT_ID): its seal
        #: checked and its reply stamped with that account's secret, its ledger rows, tokens and stq its own.
        self._secrets = {account_id: secret_key, **dict(accounts or {})}
        self._primary = account_id
        self._serving = threading.local()
        #: the sub-merchants this account is the platform of (a PLATFORM_MERCHANT_ID not among them: SECURITY ERROR,
        #: the sandbox's own answer: no source says what BluePay answers for one it does not know)
        self.platform_merchant_ids = frozenset(platform_merchant_ids)
        self.dialect = dialect or Dialect()
        self.duplicate_window = float(duplicate_window or 0)
        self.clock = clock
        #: seconds added to the clock when a TRANS_SUBMIT_TIMESTAMP is judged (a gateway clock ahead of ours)
        self.clock_offset = float(clock_offset)
        self.lock = threading.Lock()
        self._salt = os.urandom(16)
        self._rng = random.Random()
        # 12-digit ids, unique and never reused within the process (reset keeps counting);
        # the start is derived from the clock so a restarted sandbox does not hand out an
        # id an earlier run used (unless the earlier run issued > 1000 ids/s on average).
        self._next_id = 100000000000 + int(time.time() * 1000) % 800000000000
        self._entries: dict[str, Entry] = {}
        self._order: list[Entry] = []  # insertion order == creation order
        self._by_order_id: dict[str, list[Entry]] = {}
        self._dup: dict[tuple[str, str, str, str, Decimal, str], Entry] = {}
        #: customer tokens (NEW_CUST_TOKEN) -> the transaction that stored the card
        self._customer_tokens: dict[tuple[str, str, str], Entry] = {}
        #: UPDATE, VOID, CAPTURE, REFUND of an original: each returns the entry it made or why it refused
        self._follow_up_verbs: dict[str, Callable[[Mapping[str, str], Entry, Decimal | None, str, float,
                                                   dict[str, str]], Entry | Refused]] = {
            "UPDATE": self._update, "VOID": self._void, "CAPTURE": self._capture, "REFUND": self._refund}

    # ---------------------------------------------------------------- ledger admin
    def reset(self) -> None:
        with self.lock:
            self._entries.clear()
            self._order.clear()
            self._by_order_id.clear()
            self._dup.clear()
            self._customer_tokens.clear()

    def ledger(self, order_id: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            rows = self._by_order_id.get(order_id, []) if order_id is not None else self._order
            return [e.to_json() for e in rows]

    def count(self) -> int:
        with self.lock:
            return len(self._order)

    def orders(self, order_id: str | None = None) -> dict[str, dict[str, Any]]:
        """Ledger entries counted per ORDER_ID (all orders, or the one given).

        ``{order_id: {"entries": n, "approved": {TYPE: n}, "declined": {TYPE: n},
        "voided": {TYPE: n}}}``; ``approved`` counts every approved entry of that type,
        voided or not (``voided`` says how many of them were voided since).
        """
        with self.lock:
            rows = self._by_order_id.get(order_id, []) if order_id is not None else self._order
            out: dict[str, dict[str, Any]] = {}
            for e in rows:
                o = out.setdefault(e.order_id, {"entries": 0, "approved": {}, "declined": {}, "voided": {}})
                o["entries"] += 1
                bucket = o["approved"] if e.status == "1" else o["declined"]
                bucket[e.trans_type] = bucket.get(e.trans_type, 0) + 1
                if e.voided:
                    o["voided"][e.trans_type] = o["voided"].get(e.trans_type, 0) + 1
            return out

    def set_dialect(self, dialect: Dialect) -> Dialect:
        """Answer the questions the sources leave open another way from now on (see dialect.py)."""
        with self.lock:
            self.dialect = dialect
            return dialect

    def set_duplicate_window(self, seconds: float) -> float:
        """Change the duplicate window at run time (0 disables scrubbing). Earlier entries
        still count when it is switched back on: the window is judged at each request."""
        with self.lock:
            self.duplicate_window = float(seconds or 0)
            return self.duplicate_window

    def settle(self, ids: Iterable[str] | None = None, older_than: float | None = None) -> list[str]:
        """Settle approved SALE/CAPTURE/REFUND entries (all eligible when ``ids`` is None)."""
        now = self.clock()
        done = []
        with self.lock:
            if ids is None:
                candidates = list(self._order)
            else:
                candidates = [self._entries[i] for i in map(str, ids) if i in self._entries]
            for e in candidates:
                if older_than is not None and now - e.created_at < older_than:
                    continue
                if e.settleable():
                    e.settled, e.settle_date, e.settled_at = True, now_str(now), now
                    done.append(e.id)
        return done

    # ---------------------------------------------------------------- the merchant's console
    def book(self, spec: Mapping[str, Any]) -> Entry:
        """Book a SALE or AUTH directly, as a person in BluePay's console would: no seal, no card number, no
        duplicate scrubbing. ``spec``: ``amount`` (required), ``trans_type`` (SALE), ``order_id``, ``invoice_id``,
        ``status`` ("1" approved, "0" declined; default "1"), ``mode`` (TEST), ``payment_account``
        (xxxxxxxxxxxx1111), ``card_type`` (VISA), ``created_at`` (epoch seconds; default now), ``settled``.
        Raises ValueError naming what is wrong."""
        ttype, amount, status, mode, masked = self._booking_fields(spec)
        created = spec.get("created_at")
        if created is None:
            created = self.clock()
        if isinstance(created, bool) or not isinstance(created, (int, float)):
            raise ValueError("created_at must be epoch seconds")
        approved = status == "1"
        word = "Approved " if approved else "Declined "
        with self.lock:
            e = Entry(
                id=self._new_id(), account=self.account_id, trans_type=ttype, amount=amount, status=status,
                result="APPROVED" if approved else "DECLINED",
                message=str(spec.get("message") or word + ttype.capitalize()), mode=mode,
                created_at=float(created), issue_date=now_str(float(created)),
                order_id=str(spec.get("order_id") or ""), invoice_id=str(spec.get("invoice_id") or ""),
                payment_account=masked, card_type=str(spec.get("card_type") or "VISA"),
                auth_code=self._auth_code() if approved else "", avs="_", cvv2="_", origin="",
            )
            self._add(e)
            if spec.get("settled") and e.settleable():
                e.settled, e.settle_date, e.settled_at = True, now_str(float(created)), float(created)
            return e

    @staticmethod
    def _booking_fields(spec: Mapping[str, Any]) -> tuple[str, Decimal, str, str, str]:
        """A booking's trans type, amount, status, mode and masked account, checked (ValueError naming the field)."""
        if not isinstance(spec, Mapping):
            raise ValueError("a booking is a JSON object")
        unknown = set(spec) - {"amount", "trans_type", "order_id", "invoice_id", "status", "mode", "payment_account",
                               "card_type", "created_at", "settled", "message"}
        if unknown:
            raise ValueError(f"unknown booking fields {sorted(unknown)}")
        ttype = str(spec.get("trans_type") or "SALE").upper()
        if ttype not in ("SALE", "AUTH"):
            raise ValueError("trans_type must be SALE or AUTH (void with /sandbox/void)")
        amount = parse_amount(str(spec.get("amount") or ""))
        if amount is None or (amount == _ZERO and ttype == "SALE"):
            raise ValueError("amount must be a positive amount with at most two decimals")
        status = str(spec.get("status", "1"))
        if status not in ("1", "0"):
            raise ValueError('status must be "1" (approved) or "0" (declined)')
        mode = str(spec.get("mode") or "TEST").upper()
        if mode not in ("TEST", "LIVE"):
            raise ValueError("mode must be TEST or LIVE")
        masked = str(spec.get("payment_account") or "xxxxxxxxxxxx1111")
        if not re.fullmatch(r"x{12}\d{4}", masked):
            raise ValueError("payment_account must be masked (xxxxxxxxxxxx + last four)")
        return ttype, amount, status, mode, masked

    def console_void(self, trans_id: str) -> Entry:
        """Void a transaction in the console: the gateway's void rules apply; the VOID carries no ORDER_ID (a
        person typed it, not our worker). Raises ValueError with the gateway's refusal."""
        with self.lock:
            o = self._entries.get(str(trans_id))
            if o is None:
                raise ValueError("COULD NOT LOCATE ORIGINAL TRANSACTION")
            err = self._void_error(o, None)
            if err:
                raise ValueError(err)
            now = self.clock()
            e = self._record({}, o, "VOID", o.amount, "Approved Void", o.mode, now, {"ISSUE_DATE": now_str(now)})
            self._apply_void(o, e)
            return e

    # ---------------------------------------------------------------- helpers
    def _new_id(self) -> str:
        self._next_id += 1
        return str(self._next_id)

    def _card_hash(self, number: str) -> str:
        return hmac.new(self._salt, number.encode(), hashlib.sha256).hexdigest()

    def _add(self, e: Entry) -> None:
        self._entries[e.id] = e
        self._order.append(e)
        self._by_order_id.setdefault(e.order_id, []).append(e)

    def _auth_code(self) -> str:
        return "".join(self._rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(6))

    # ---------------------------------------------------------------- bp10emu
    @property
    def account_id(self) -> str:
        """The account the request being served names (when it is one of ours), else the first account."""
        named = getattr(self._serving, "account", None)
        return named if named is not None else self._primary

    @property
    def secret_key(self) -> str:
        return self._secrets[self.account_id]

    @property
    def account_ids(self) -> list[str]:
        return list(self._secrets)

    @contextmanager
    def _as_account(self, named: str) -> Iterator[None]:
        """Serve one request as the account it names; an account not ours is served as the first (SECURITY ERROR)."""
        self._serving.account = named if named in self._secrets else None
        try:
            yield
        finally:
            self._serving.account = None

    def bp10emu(self, f: Mapping[str, str]) -> dict[str, str]:
        """Process one bp10emu request (as the account its MERCHANT names); return the reply pairs (stamped)."""
        with self._as_account(f.get("MERCHANT", "")):
            return self._bp10emu(f)

    def stq(self, f: Mapping[str, str]) -> tuple[int, str | None]:
        """Single Transaction Query (as the account its ACCOUNT_ID names): see :meth:`_stq`."""
        with self._as_account(f.get("ACCOUNT_ID", "")):
            return self._stq(f)

    def report(self, f: Mapping[str, str]) -> tuple[int, dict[str, str] | None, list[Entry]]:
        """The daily report (as the account its ACCOUNT_ID names): see :meth:`_report`."""
        with self._as_account(f.get("ACCOUNT_ID", "")):
            return self._report(f)

    def _bp10emu(self, f: Mapping[str, str]) -> dict[str, str]:
        """Process one bp10emu request; return the reply pairs (stamped)."""
        now = self.clock()
        hash_type = _seal.effective_hash_type(f.get("TPS_HASH_TYPE"))
        ttype = (f.get("TRANSACTION_TYPE") or "SALE").strip().upper()
        mode = (f.get("MODE") or "TEST").strip().upper()
        reply: dict[str, str] = {
            "MERCHANT": f.get("MERCHANT", ""),
            "TRANS_TYPE": ttype,
            "AMOUNT": f.get("AMOUNT", ""),
            "ORDER_ID": f.get("ORDER_ID", ""),
            "INVOICE_ID": f.get("INVOICE_ID", ""),
            "MODE": mode,
            "ISSUE_DATE": now_str(now),
        }
        stamp_def = (f.get("BP_STAMP_DEF") or "").strip() or self.dialect.bp10emu_stamp_def

        def finish(result: str, message: str, **extra: str) -> dict[str, str]:
            reply["Result"] = result
            reply["STATUS"] = {"APPROVED": "1", "DECLINED": "0"}.get(result, "E")
            reply["MESSAGE"] = message
            reply.update(extra)
            reply["TPS_HASH_TYPE"] = hash_type
            reply["BP_STAMP_DEF"] = stamp_def
            reply["BP_STAMP"] = _seal.stamp(self.secret_key, reply, stamp_def, hash_type)
            return reply

        if f.get("MERCHANT", "") != self.account_id or not self._known_platform_merchant(f) or not _seal.verify_seal(
                self.secret_key, f, _seal.BP10EMU_SEAL_FIELDS):
            return finish("ERROR", "SECURITY ERROR")
        if mode not in ("TEST", "LIVE"):
            return finish("ERROR", "INVALID MODE")
        expired = self._submit_window_error(f, now + self.clock_offset)
        if expired:  # an ERROR: nothing is saved (bp10emu text)
            return finish("ERROR", expired)
        if ttype not in SUPPORTED_TYPES:
            return finish("ERROR", "INVALID TRANSACTION TYPE")
        if (f.get("PAYMENT_TYPE") or "").strip().upper() == "ACH" and ttype in ("SALE", "AUTH"):
            return finish("ERROR", "ACH not supported by the sandbox")

        amount_text = (f.get("AMOUNT") or "").strip()
        amount: Decimal | None = None
        if amount_text:
            amount = parse_amount(amount_text)
            if amount is None:
                return finish("ERROR", "INVALID AMOUNT FORMAT")
            reply["AMOUNT"] = fmt(amount)

        if ttype in ("SALE", "AUTH", "CREDIT"):  # CREDIT: money to a card, no original (docs/tokens.md)
            return self._sale_or_auth(f, ttype, mode, amount, now, reply, finish)
        return self._follow_up(f, ttype, mode, amount, now, reply, finish)

    @staticmethod
    def _submit_window_error(f: Mapping[str, str], now: float) -> str | None:
        """TRANSACTION TOO OLD when ``now`` is past TRANS_SUBMIT_TIMESTAMP (US Central) + TRANS_EXPIRE_PERIOD.

        Ours where the text is silent: a stamp without a period never expires; a malformed stamp or period is an
        ERROR; a stamp in the hour repeated when daylight saving ends is read as the earlier instant; the age is
        compared to the second."""
        stamp = (f.get("TRANS_SUBMIT_TIMESTAMP") or "").strip()
        period = (f.get("TRANS_EXPIRE_PERIOD") or "").strip()
        if not stamp or not period:
            return None
        match = _PERIOD_RE.match(period)
        if not match:
            return "INVALID TRANS_EXPIRE_PERIOD"
        try:
            submitted = _dt.datetime.strptime(stamp, _SUBMIT_FORMAT).replace(tzinfo=_CENTRAL, fold=0)
        except ValueError:
            return "INVALID TRANS_SUBMIT_TIMESTAMP"
        if now > submitted.timestamp() + int(match.group(1)) * 60:
            return TOO_OLD
        return None

    def _sale_or_auth(self, f: Mapping[str, str], ttype: str, mode: str, amount: Decimal | None, now: float,
                      reply: dict[str, str], finish: Finish) -> dict[str, str]:
        if amount is None:
            return finish("MISSING", "Missing AMOUNT", MISSING="AMOUNT")
        if amount == _ZERO and ttype in ("SALE", "CREDIT"):
            return finish("ERROR", "Amount may not be zero.")
        # CC_NUM "required unless ... you include an RRNO" (bp10emu text); a card given beside a token is charged
        stored_card = (f.get("RRNO") or "").strip() or (f.get("CUST_TOKEN") or "").strip()
        if stored_card and not (f.get("CC_NUM") or "").strip() and ttype != "CREDIT":
            return self._token_charge(f, ttype, mode, amount, now, reply, finish)
        number = re.sub(r"[\s-]", "", f.get("CC_NUM") or "")
        if not number:
            return finish("MISSING", "Missing CC_NUM", MISSING="CC_NUM")
        if not number.isdigit() or not 12 <= len(number) <= 19 or not luhn_ok(number):
            return finish("ERROR", "CARD ACCOUNT NOT VALID")
        expires = (f.get("CC_EXPIRES") or "").strip()
        if not expires:
            return finish("MISSING", "Expiration date required for CREDIT", MISSING="CC_EXPIRES")
        m = _EXP_RE.match(expires)
        if not m or not 1 <= int(m.group(1)) <= 12:
            return finish("ERROR", "INVALID EXPIRATION DATE")
        today = _dt.date.fromtimestamp(now)
        if (2000 + int(m.group(2)), int(m.group(1))) < (today.year, today.month):
            return finish("ERROR", "Card Expired")
        cvv = (f.get("CVCCVV2") or "").strip()
        if cvv and not _CVV_RE.match(cvv):
            return finish("ERROR", "Invalid CVV2")

        return self._charge(f, ttype, mode, amount, now, reply, finish, masked=mask(number), ctype=card_type(number),
                            expires=expires, chash=self._card_hash(number), cvv_given=bool(cvv))

    def _token_charge(self, f: Mapping[str, str], ttype: str, mode: str, amount: Decimal, now: float,
                      reply: dict[str, str], finish: Finish) -> dict[str, str]:
        """SALE/AUTH of a stored card: RRNO = an earlier transaction id (the bp10emu text: CC_NUM "required unless
        ... you include an RRNO"), or CUST_TOKEN (BluePay's library). The card is the stored one."""
        rrno, name = (f.get("RRNO") or "").strip(), (f.get("CUST_TOKEN") or "").strip()
        if rrno:
            name = ""  # ours where the sources are silent: RRNO names the transaction; a CUST_TOKEN beside it is unused
        with self.lock:
            if rrno:
                source = self._entries.get(rrno)
                usable = source is not None and source.account == self.account_id and source.mode == mode \
                    and bool(source.card_hash) and (self.dialect.token_source == "any" or source.status == "1")
                if not usable:  # BluePay_MESSAGE_values.txt names both (dialect unknown_token)
                    return finish("ERROR", "Error reading master transaction" if self.dialect.unknown_token ==
                                  "error_reading" else "COULD NOT LOCATE ORIGINAL TRANSACTION")
            else:
                source = self._customer_tokens.get((self.account_id, mode, name))
                if source is None:  # BluePay_MESSAGE_values.txt: "Unable to locate tokenized transaction."
                    return finish("ERROR", "Error reading master transaction")
                reply["CUST_TOKEN"] = name
        assert source is not None
        m = _EXP_RE.match(source.card_expire)
        today = _dt.date.fromtimestamp(now)
        if m and (2000 + int(m.group(2)), int(m.group(1))) < (today.year, today.month):
            return finish("ERROR", "Card Expired")
        return self._charge(f, ttype, mode, amount, now, reply, finish, masked=source.payment_account,
                            ctype=source.card_type, expires=source.card_expire, chash=source.card_hash,
                            cvv_given=False, origin=rrno, cust_token=name, first_stored_id=source.stored_id)

    def _charge(self, f: Mapping[str, str], ttype: str, mode: str, amount: Decimal, now: float,
                reply: dict[str, str], finish: Finish, *, masked: str, ctype: str, expires: str,
                chash: str, cvv_given: bool, origin: str = "", cust_token: str = "",
                first_stored_id: str = "") -> dict[str, str]:
        reply.update(PAYMENT_ACCOUNT=masked, CARD_TYPE=ctype, CARD_EXPIRE=expires, BANK_NAME="")
        new_token = (f.get("NEW_CUST_TOKEN") or "").strip()  # (with a token: the stored card under a new name)
        order_id = f.get("ORDER_ID", "")
        dup_key = (self.account_id, mode, ttype, chash, amount, order_id)
        override = (f.get("DUPLICATE_OVERRIDE") or "").strip() == "1"

        if amount == _ZERO:  # AUTH only here
            approved, message = True, "INFORMATION STORED"
        else:
            approved = int(amount) % 2 == 1
            message = ("Approved " if approved else "Declined ") + ttype.capitalize()

        indicator = (f.get("STORED_INDICATOR") or "").strip().upper()
        stored_id = sent_stored_id = (f.get("STORED_ID") or "").strip()
        with self.lock:
            if new_token and (self.account_id, mode, new_token) in self._customer_tokens:
                return finish("ERROR", "Customer Tokens must be unique")  # the phrase BluePay's samples look for
            if not override and self.duplicate_window > 0:
                prev = self._dup.get(dup_key)
                if prev is not None and now - prev.created_at <= self.duplicate_window:
                    return finish(prev.result, "DUPLICATE", AVS="", CVV2="", AUTH_CODE="",
                                  FLAGS="T" if mode == "TEST" else "")
            if not stored_id and indicator and self.dialect.stored_id == "established":
                # ours (the samples only say STORED_ID is "used or established by transaction"): a first storing
                # establishes one; a later charge of a stored card answers the one its card was stored with
                stored_id = first_stored_id if indicator == "S" else f"TESTID{self._rng.randrange(10**9):09d}"
            e = Entry(
                id=self._new_id(), account=self.account_id, trans_type=ttype, amount=amount,
                status="1" if approved else "0", result="APPROVED" if approved else "DECLINED",
                message=message, mode=mode, created_at=now, issue_date=reply["ISSUE_DATE"],
                order_id=order_id, invoice_id=f.get("INVOICE_ID", ""),
                custom_id=f.get("CUSTOM_ID", ""), custom_id2=f.get("CUSTOM_ID2", ""),
                name1=f.get("NAME1", ""), name2=f.get("NAME2", ""),
                platform_merchant_id=f.get("PLATFORM_MERCHANT_ID", ""),
                payment_account=masked, card_type=ctype, card_expire=expires, card_hash=chash,
                auth_code=self._auth_code() if approved else "",
                avs="_", cvv2=("M" if cvv_given else "_"), origin=origin, cust_token=new_token or cust_token,
                stored_indicator=indicator, stored_type=(f.get("STORED_TYPE") or "").strip().upper(),
                stored_id=stored_id if self.dialect.stored_id == "established" else "",
                stored_id_sent=sent_stored_id,
            )
            self._add(e)
            self._dup[dup_key] = e
            if new_token and approved:  # ours: a declined storing stores nothing
                self._customer_tokens[(self.account_id, mode, new_token)] = e
        extra = self._entry_fields(e, mode)
        if new_token and approved:
            extra["CUST_TOKEN"] = new_token
        if e.stored_id:
            extra["STORED_ID"] = e.stored_id
        return finish(e.result, e.message, **extra)

    def _entry_fields(self, e: Entry, mode: str) -> dict[str, str]:
        return {
            "TRANS_ID": e.id, "RRNO": e.id, "ID": e.id, "TRANS_TYPE": e.trans_type,
            "AMOUNT": fmt(e.amount), "AUTH_CODE": e.auth_code, "AVS": e.avs, "CVV2": e.cvv2,
            "PAYMENT_ACCOUNT": e.payment_account, "CARD_TYPE": e.card_type, "BANK_NAME": "",
            "CARD_EXPIRE": e.card_expire, "REBID": "", "FLAGS": "T" if mode == "TEST" else "",
        }

    def _follow_up(self, f: Mapping[str, str], ttype: str, mode: str, amount: Decimal | None, now: float,
                   reply: dict[str, str], finish: Finish) -> dict[str, str]:
        rrno = (f.get("RRNO") or "").strip()
        if not rrno:
            return finish("MISSING", f"Master ID required for {ttype}", MISSING="RRNO")
        if amount is not None and amount == _ZERO:
            return finish("ERROR", "Amount may not be zero.")
        with self.lock:
            o = self._entries.get(rrno)
            if o is None or o.account != self.account_id or o.mode != mode:
                return finish("ERROR", "COULD NOT LOCATE ORIGINAL TRANSACTION")
            reply.update(PAYMENT_ACCOUNT=o.payment_account, CARD_TYPE=o.card_type,
                         CARD_EXPIRE=o.card_expire, BANK_NAME="")
            if o.updated_by:  # BluePay_MESSAGE_values.txt
                return finish("ERROR", f"Cannot {ttype} an updated transaction, {ttype} the update instead.")
            outcome = self._follow_up_verbs[ttype](f, o, amount, mode, now, reply)
        if isinstance(outcome, Entry):
            return finish(outcome.result, outcome.message, **self._entry_fields(outcome, mode))
        result, message, extra = outcome
        return finish(result, message, **extra)

    def _update(self, f: Mapping[str, str], o: Entry, amount: Decimal | None, mode: str, now: float,
                reply: dict[str, str]) -> Entry | Refused:
        if amount is None:
            return "MISSING", "Missing AMOUNT", {"MISSING": "AMOUNT"}
        err = self._update_error(o)
        if err:
            return "ERROR", err, {}
        e = self._record(f, o, "UPDATE", amount, "Approved Update", mode, now, reply)
        e.base_type, o.updated_by = _kind(o), e.id
        return e

    def _void(self, f: Mapping[str, str], o: Entry, amount: Decimal | None, mode: str, now: float,
              reply: dict[str, str]) -> Entry | Refused:
        err = self._void_error(o, amount)
        if err:
            return "ERROR", err, {}
        e = self._record(f, o, "VOID", o.amount, "Approved Void", mode, now, reply)
        self._apply_void(o, e)
        return e

    def _capture(self, f: Mapping[str, str], o: Entry, amount: Decimal | None, mode: str, now: float,
                 reply: dict[str, str]) -> Entry | Refused:
        err = self._capture_error(o, amount)
        if err:
            return "ERROR", err, {}
        e = self._record(f, o, "CAPTURE", amount if amount is not None else o.amount, "Approved Capture", mode, now,
                         reply)
        o.captured, o.captured_by = True, e.id
        return e

    def _refund(self, f: Mapping[str, str], o: Entry, amount: Decimal | None, mode: str, now: float,
                reply: dict[str, str]) -> Entry | Refused:
        if _kind(o) not in ("SALE", "CAPTURE"):
            return "ERROR", f"Cannot REFUND a {o.trans_type}", {}
        if o.status != "1":
            return "ERROR", "Can only REFUND or VOID approved transactions", {}
        if o.voided:
            return "ERROR", "Already Voided", {}
        remaining = o.amount - o.refunded
        want = amount if amount is not None else remaining
        if want > remaining or remaining <= _ZERO:
            return "ERROR", "Refund/VOID amount cannot exceed original charge amount", {}
        if not o.settled and want == o.amount:
            # full refund of an unsettled charge: the gateway voids it instead
            e = self._record(f, o, "VOID", o.amount, "Approved Void", mode, now, reply)
            self._apply_void(o, e)
            return e
        e = self._record(f, o, "REFUND", want, "Approved Return", mode, now, reply)
        o.refunded += want
        o.refunds.append(e.id)
        return e

    def _update_error(self, o: Entry) -> str | None:
        """UPDATE (BluePay's library: ``update(transaction_id, amount)``, the new amount of the transaction). The
        refusals are BluePay_MESSAGE_values.txt's; whether an AUTH may be updated is the dialect's ``update_auth``
        (the list: "Cannot UPDATE a <TRANS TYPE>: attempt to tip UPDATE a VOID or AUTH")."""
        kind = _kind(o)
        if o.status != "1":
            return "Can only UPDATE approved transactions."
        if kind not in ("SALE", "AUTH") or (kind == "AUTH" and self.dialect.update_auth == "refused"):
            return f"Cannot UPDATE a {o.trans_type}"
        if o.voided:
            return "Already Voided"
        if o.settled:
            return "Cannot UPDATE a settled transaction."
        if o.captured:
            return "Already Captured"
        return None

    def _void_error(self, o: Entry, amount: Decimal | None) -> str | None:
        if o.trans_type == "VOID":
            return "VOID cannot be undone"  # BluePay_MESSAGE_values.txt
        if o.status != "1":
            return "Can only REFUND or VOID approved transactions"
        if o.voided:
            return "Already Voided"
        if o.settled:
            return "Cannot VOID a settled transaction."
        if _kind(o) == "AUTH" and o.captured:
            return "Cannot VOID a CAPTURED AUTH (void the CAPTURE instead)."
        if (amount is not None and amount != o.amount) or o.refunded > _ZERO:
            return "Cannot VOID except for full amount."
        return None

    @staticmethod
    def _capture_error(o: Entry, amount: Decimal | None) -> str | None:
        if _kind(o) != "AUTH":
            return "Only AUTH can be CAPTURED"
        if o.status != "1":
            return "Need voice auth code to CAPTURE this AUTH"  # BluePay_MESSAGE_values.txt: a declined AUTH
        if o.voided:
            return "This AUTH is VOID"
        if o.captured:
            return "Already Captured"
        if amount is not None and amount > o.amount:
            return "CAPTURE amount cannot exceed AUTH amount"
        if o.amount == _ZERO:
            return "Cannot CAPTURE Zero AUTH"  # BluePay_MESSAGE_values.txt: a $0 auth only stores the card
        return None

    def _apply_void(self, o: Entry, e: Entry) -> None:
        o.voided, o.voided_by = True, e.id
        if o.trans_type == "CAPTURE":  # the AUTH may be captured (or voided) again
            auth = self._entries.get(o.origin)
            if auth is not None and auth.captured_by == o.id:
                auth.captured, auth.captured_by = False, ""
        elif o.trans_type == "REFUND":
            parent = self._entries.get(o.origin)
            if parent is not None:
                parent.refunded -= o.amount
                if o.id in parent.refunds:
                    parent.refunds.remove(o.id)

    def _record(self, f: Mapping[str, str], o: Entry, ttype: str, amount: Decimal, message: str, mode: str,
                now: float, reply: dict[str, str]) -> Entry:
        e = Entry(
            id=self._new_id(), account=self.account_id, trans_type=ttype, amount=amount,
            status="1", result="APPROVED", message=message, mode=mode, created_at=now,
            issue_date=reply["ISSUE_DATE"], payment_type=o.payment_type,
            order_id=f.get("ORDER_ID", ""), invoice_id=f.get("INVOICE_ID", ""),
            custom_id=f.get("CUSTOM_ID", ""), custom_id2=f.get("CUSTOM_ID2", ""),
            name1=o.name1, name2=o.name2, payment_account=o.payment_account,
            card_type=o.card_type, card_expire=o.card_expire, card_hash=o.card_hash,
            auth_code=self._auth_code(), avs="_", cvv2="_", origin=o.id,
            platform_merchant_id=f.get("PLATFORM_MERCHANT_ID", ""),
        )
        self._add(e)
        return e

    def _known_platform_merchant(self, f: Mapping[str, str]) -> bool:
        """No PLATFORM_MERCHANT_ID, or one of this account's sub-merchants."""
        named = f.get("PLATFORM_MERCHANT_ID", "")
        return not named or named in self.platform_merchant_ids

    # ---------------------------------------------------------------- stq
    def _report_window(self, f: Mapping[str, str]) -> tuple[float, float] | str:
        """stq's and the daily report's account, seal and [REPORT_START_DATE, REPORT_END_DATE) as epoch seconds
        (server local days), or the error message to answer with."""
        if f.get("ACCOUNT_ID", "") != self.account_id or not self._known_platform_merchant(f) or not _seal.verify_seal(
                self.secret_key, f, _seal.STQ_SEAL_FIELDS):
            return "SECURITY ERROR"
        start_s, end_s = f.get("REPORT_START_DATE", ""), f.get("REPORT_END_DATE", "")
        try:
            if not (_DATE_RE.match(start_s) and _DATE_RE.match(end_s)):
                raise ValueError
            start = _dt.datetime.fromisoformat(start_s)
            end = _dt.datetime.fromisoformat(end_s)
        except ValueError:
            return "INVALID REPORT DATES (YYYY-MM-DD)"
        if end <= start:
            return "REPORT_END_DATE must be after REPORT_START_DATE (end is exclusive)"
        return time.mktime(start.timetuple()), time.mktime(end.timetuple())

    def _stq(self, f: Mapping[str, str]) -> tuple[int, str | None]:
        """Single Transaction Query. Returns (http_status, the url-encoded body, or None for an empty 200)."""
        hash_type = _seal.effective_hash_type(f.get("TPS_HASH_TYPE"))

        def error(message: str) -> tuple[int, str]:
            return 400, self._encode(self._maybe_stamped({"STATUS": "E", "MESSAGE": message}, "STATUS MESSAGE",
                                                         hash_type))

        window = self._report_window(f)
        if isinstance(window, str):
            return error(window)
        lo, hi = window
        mode = (f.get("MODE") or "LIVE").strip().upper()
        trimmed = self.dialect.stq_values == "trimmed"
        filters = self._stq_filters(f, trimmed)
        if isinstance(filters, str):
            return error(filters)
        with self.lock:
            if filters and filters[0][0] == "id":
                e0 = self._entries.get(str(filters[0][1]))  # a str already: only amounts are Decimals
                pool: list[Entry] = [e0] if e0 is not None else []
            elif any(a == "order_id" for a, _ in filters) and not trimmed:
                pool = self._by_order_id.get(str(dict(filters)["order_id"]), [])
            else:
                pool = self._order

            def same(e: Entry, attr: str, v: str | Decimal) -> bool:
                mine = getattr(e, attr)
                return (mine.strip() if trimmed and isinstance(mine, str) else mine) == v

            matches = [e for e in pool if e.mode == mode and e.account == self.account_id
                       and lo <= e.created_at < hi and all(same(e, a, v) for a, v in filters)]
            rows = [self._stq_row(e) for e in self._pick(matches)]
        return self._stq_reply(rows, hash_type)

    @staticmethod
    def _stq_filters(f: Mapping[str, str], trimmed: bool) -> list[tuple[str, str | Decimal]] | str:
        """The search values stq was given, by record attribute (names in any case); or why they are refused."""
        lower = {k.lower(): v for k, v in f.items()}
        filters: list[tuple[str, str | Decimal]] = []
        for name, attr in _STQ_FILTERS.items():
            raw = lower.get(name) or ""
            value = raw.strip() if trimmed or attr in ("amount", "trans_type", "payment_type") else raw
            if not value.strip():
                continue
            if attr == "amount":
                parsed = parse_amount(value)
                if parsed is None:
                    return "INVALID AMOUNT FORMAT"
                filters.append((attr, parsed))
            elif attr in ("trans_type", "payment_type"):
                filters.append((attr, value.upper()))
            else:
                filters.append((attr, value))
        return filters

    def _pick(self, matches: list[Entry]) -> list[Entry]:
        """The matches stq answers with (dialect ``stq_matches``; ``matches`` are oldest first)."""
        if not matches:
            return []
        how = self.dialect.stq_matches
        if how == "all":
            return matches
        return [matches[0] if how == "oldest" else matches[-1]]

    def _stq_row(self, e: Entry) -> dict[str, str]:
        """An stq row of documented fields only (caller holds the lock)."""
        return {
            "id": e.id, "payment_type": e.payment_type, "trans_type": e.trans_type, "amount": fmt(e.amount),
            "card_type": e.card_type, "payment_account": e.payment_account, "order_id": e.order_id,
            "invoice_id": e.invoice_id, "custom_id": e.custom_id, "custom_id2": e.custom_id2,
            "master_id": e.origin, "status": e.status, "f_void": "1" if e.voided else "",
            "message": e.message, "origin": "bp10emu" if e.card_hash else "console",
            "issue_date": e.issue_date, "settle_date": e.settle_date,
            "settlement_id": e.settle_date[:10].replace("-", "") if e.settled else "",
            "card_expire": e.card_expire, "bank_name": "", "auth_code": e.auth_code, "name1": e.name1,
            "name2": e.name2, "avs_result": e.avs, "cvv_result": e.cvv2,
        }

    def _stq_reply(self, rows: list[dict[str, str]], hash_type: str) -> tuple[int, str | None]:
        """The body of an stq answer (None: an empty 200), per the dialect."""
        d = self.dialect
        if not rows:
            if d.stq_no_match == "error":
                return 400, self._encode(self._maybe_stamped(
                    {"STATUS": "E", "MESSAGE": "NO MATCHING TRANSACTIONS"}, "STATUS MESSAGE", hash_type))
            if d.stq_no_match == "blank_row":
                return 200, self._encode(dict.fromkeys(STQ_FIELDS, ""))
            return 200, None
        lines = [self._encode(self._maybe_stamped(row, STQ_STAMP_DEF, hash_type)) for row in rows]
        return 200, "\n".join(lines)

    def _encode(self, pairs: Mapping[str, str]) -> str:
        upper = self.dialect.stq_names == "upper"
        return urlencode({(k.upper() if upper else k): v for k, v in pairs.items()})

    # ---------------------------------------------------------------- bpdailyreport2
    def _report(self, f: Mapping[str, str]) -> tuple[int, dict[str, str] | None, list[Entry]]:
        """The daily report: ``(200, None, entries)`` (render them with :func:`report_row`), or ``(400, error
        pairs, [])``. By issue date in [start, end) (server local time, as stq), or with QUERY_BY_SETTLEMENT=1
        settled entries by settlement date; ``MODE`` (default LIVE, as stq) must match. Errors are never in the
        ledger, so EXCLUDE_ERRORS changes nothing; QUERY_BY_HIERARCHY neither (one account)."""
        hash_type = _seal.effective_hash_type(f.get("TPS_HASH_TYPE"))

        def error(message: str) -> tuple[int, dict[str, str], list[Entry]]:
            return 400, self._maybe_stamped({"STATUS": "E", "MESSAGE": message}, "STATUS MESSAGE", hash_type), []

        window = self._report_window(f)
        if isinstance(window, str):
            return error(window)
        lo, hi = window
        mode = (f.get("MODE") or "LIVE").strip().upper()
        by_settlement = (f.get("QUERY_BY_SETTLEMENT") or "0").strip() == "1"
        account = self.account_id  # the account the request named (each account's report is its own)
        with self.lock:
            if by_settlement:
                rows = [e for e in self._order if e.account == account and e.mode == mode and e.settled
                        and lo <= e.settled_at < hi]
            else:
                rows = [e for e in self._order if e.account == account and e.mode == mode and lo <= e.created_at < hi]
        return 200, None, rows

    def _maybe_stamped(self, pairs: dict[str, str], stamp_def: str, hash_type: str) -> dict[str, str]:
        """stq and report answers carry no stamp (BluePay documents none) unless the dialect says stq_stamp=on."""
        if self.dialect.stq_stamp != "on":
            return pairs
        pairs["TPS_HASH_TYPE"] = hash_type
        pairs["BP_STAMP_DEF"] = stamp_def
        pairs["BP_STAMP"] = _seal.stamp(self.secret_key, pairs, stamp_def, hash_type)
        return pairs


REPORT_COLUMNS = ("id", "payment_type", "trans_type", "amount", "card_type", "payment_account", "order_id",
                  "invoice_id", "custom_id", "custom_id2", "master_id", "status", "f_void", "message", "origin",
                  "issue_date", "settle_date", "settlement_id", "auth_code", "card_expire", "name1", "name2")


def _kind(e: Entry) -> str:
    """What a transaction is for the rules: an UPDATE stands in for the SALE or AUTH it updated."""
    return e.base_type or e.trans_type


def report_row(e: Entry) -> list[str]:
    """One report line's values, in REPORT_COLUMNS order."""
    return [e.id, e.payment_type, e.trans_type, fmt(e.amount), e.card_type, e.payment_account, e.order_id,
            e.invoice_id, e.custom_id, e.custom_id2, e.origin, e.status, "1" if e.voided else "", e.message,
            "bp10emu" if e.card_hash else "console", e.issue_date, e.settle_date,
            e.settle_date[:10].replace("-", "") if e.settled else "", e.auth_code, e.card_expire, e.name1, e.name2]
