"""BluePay 2.0 protocol: request builders and reply parsers. Pure: no I/O.

* ``transaction_request`` / ``parse_transaction_reply``: the ``bp10emu`` endpoint (302 with the
  result in the ``Location`` query string, or a 200 body of pairs with RESPONSETYPE=DIRECT).
* ``query_request`` / ``parse_query_reply``: the ``stq`` Single Transaction Query.

The interpretation of ``stq`` replies (docs/bluepay.md, "our conventions") lives only in
:func:`parse_query_reply`: 200 + empty body = provably absent (None); 200 + pairs = found;
HTTP 400 with STATUS=E = Rejected; anything else = OutcomeUnknown ("cannot tell", never "absent").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from urllib.parse import parse_qsl, urlencode, urlsplit

from . import validation
from .errors import InvalidInput, OutcomeUnknown, Rejected
from .seal import normalize_hash_type, query_seal_message, seal, stamp_matches, transaction_seal_message

__all__ = [
    "Response",
    "TRANSACTION_TYPES",
    "MODES",
    "RESPONSE_VERSION",
    "transaction_request",
    "query_request",
    "parse_pairs",
    "parse_transaction_reply",
    "parse_query_reply",
    "parse_query_rows",
]

TRANSACTION_TYPES = ("SALE", "AUTH", "CAPTURE", "REFUND", "VOID", "UPDATE")
MODES = ("TEST", "LIVE")
RESULTS = ("APPROVED", "DECLINED", "ERROR", "MISSING")
#: Libraries send 8..20; a high version gets every reply field (BP_STAMP included).
RESPONSE_VERSION = "15"
REBILLING_FIELDS = ("REBILLING", "REB_FIRST_DATE", "REB_EXPR", "REB_CYCLES", "REB_AMOUNT")
_NEEDS_RRNO = ("CAPTURE", "REFUND", "VOID", "UPDATE")
_NEEDS_CARD = ("SALE", "AUTH")
#: Never kept in Response.raw even if a (broken) gateway echoed them.
_SENSITIVE_KEYS = frozenset({"CC_NUM", "CVCCVV2", "CVCVV2", "CC_CVV2", "TAMPER_PROOF_SEAL", "SECRET_KEY"})
_STQ_STATUS = {"1": "APPROVED", "0": "DECLINED", "E": "ERROR"}
_TRUE = frozenset({"1", "Y", "YES", "T", "TRUE"})
_FALSE = frozenset({"0", "N", "NO", "F", "FALSE"})


@dataclass(frozen=True)
class Response:
    """A parsed gateway reply (bp10emu result or stq row)."""

    status: str  # APPROVED / DECLINED / ERROR / MISSING
    message: str = ""
    trans_id: str = ""
    trans_type: str = ""
    amount: str = ""
    auth_code: str = ""
    avs: str = ""
    cvv2: str = ""
    masked_account: str = ""
    card_type: str = ""
    bank_name: str = ""
    order_id: str = ""
    missing_field: str = ""
    settled: bool | None = None
    voided: bool | None = None
    raw: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    #: gateway calls made to get this reply (set by the client; 1 for a bare parse)
    attempts: int = field(default=1, compare=False)

    @property
    def approved(self) -> bool:
        """Success as every BluePay library decides it."""
        return self.status == "APPROVED" and self.message != "DUPLICATE"


# --------------------------------------------------------------------------- requests


def _mode(mode: str) -> str:
    m = (mode or "").strip().upper()
    if m not in MODES:
        raise InvalidInput("mode", "must be TEST or LIVE")
    return m


def _required_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(name, "required")
    return value.strip()


def transaction_request(
    *,
    account_id: str,
    secret_key: str,
    mode: str,
    hash_type: str | None,
    transaction_type: str,
    amount: object = None,
    card: validation.Card | Mapping[str, object] | None = None,
    customer: Mapping[str, object] | None = None,
    rrno: object = None,
    order_id: str | None = None,
    duplicate_override: bool = False,
    invoice_id: str | None = None,
) -> dict[str, str]:
    """The sealed form fields of a bp10emu request. Validates every input (InvalidInput)."""
    account = _required_text("account_id", account_id)
    secret = _required_text("secret_key", secret_key)
    mode_ = _mode(mode)
    ht = normalize_hash_type(hash_type)
    ttype = (transaction_type or "").strip().upper() if isinstance(transaction_type, str) else ""
    if ttype not in TRANSACTION_TYPES:
        raise InvalidInput("transaction_type", "must be one of " + ", ".join(TRANSACTION_TYPES))

    fields: dict[str, str] = {
        "MERCHANT": account,
        "TRANSACTION_TYPE": ttype,
        "MODE": mode_,
        "AMOUNT": "",
        "RRNO": "",
    }
    for name in REBILLING_FIELDS:
        fields[name] = ""

    if ttype in _NEEDS_CARD:
        if card is None:
            raise InvalidInput("card", f"required for {ttype}")
        if amount is None:
            raise InvalidInput("amount", f"required for {ttype}")
        c = validation.card(card)
        fields["AMOUNT"] = validation.amount(amount, allow_zero=(ttype == "AUTH"))
        fields["PAYMENT_TYPE"] = "CREDIT"
        fields["CC_NUM"] = c.number
        fields["CC_EXPIRES"] = c.expire
        if c.cvv2:
            fields["CVCCVV2"] = c.cvv2
    else:
        if card is not None:
            raise InvalidInput("card", f"not allowed for {ttype}")
        if rrno is None:
            raise InvalidInput("trans_id", f"required for {ttype}")
        fields["RRNO"] = validation.trans_id(rrno)
        if ttype == "VOID":
            if amount is not None:
                raise InvalidInput("amount", "VOID is always for the full amount")
        elif amount is not None:
            fields["AMOUNT"] = validation.amount(amount)

    fields.update(validation.customer(customer))
    if order_id is not None:
        fields["ORDER_ID"] = validation.order_id(order_id)
    if invoice_id is not None:
        fields["INVOICE_ID"] = validation.invoice_id(invoice_id)
    if duplicate_override:
        fields["DUPLICATE_OVERRIDE"] = "1"
    fields["RESPONSEVERSION"] = RESPONSE_VERSION
    fields["TPS_HASH_TYPE"] = ht
    fields["TAMPER_PROOF_SEAL"] = seal(secret, transaction_seal_message(fields), ht)
    return fields


def query_request(
    *,
    account_id: str,
    secret_key: str,
    mode: str,
    hash_type: str | None,
    trans_id: object = None,
    order_id: str | None = None,
    start: date,
    end: date,
) -> dict[str, str]:
    """The sealed form fields of an stq request (``end`` exclusive). MODE is always sent:
    stq defaults to LIVE."""
    account = _required_text("account_id", account_id)
    secret = _required_text("secret_key", secret_key)
    mode_ = _mode(mode)
    ht = normalize_hash_type(hash_type)
    if (trans_id is None) == (order_id is None):
        raise InvalidInput("query", "give exactly one of trans_id and order_id")
    if not isinstance(start, date) or not isinstance(end, date):
        raise InvalidInput("report_dates", "start and end must be dates")
    if end <= start:
        raise InvalidInput("report_dates", "end must be after start (end is exclusive)")
    fields: dict[str, str] = {
        "ACCOUNT_ID": account,
        "MODE": mode_,
        "REPORT_START_DATE": start.isoformat(),
        "REPORT_END_DATE": end.isoformat(),
        "IGNORE_NULL_STR": "1",
        "RESPONSEVERSION": RESPONSE_VERSION,
    }
    if trans_id is not None:
        fields["id"] = validation.trans_id(trans_id)
    else:
        fields["order_id"] = validation.order_id(order_id)
    fields["TPS_HASH_TYPE"] = ht
    fields["TAMPER_PROOF_SEAL"] = seal(secret, query_seal_message(fields), ht)
    return fields


# --------------------------------------------------------------------------- replies


def parse_pairs(text: str | bytes | None) -> dict[str, str]:
    """URL-encoded pairs -> dict (first occurrence wins; blank values kept)."""
    if text is None:
        return {}
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "replace")
    out: dict[str, str] = {}
    for key, value in parse_qsl(text.strip(), keep_blank_values=True):
        key = key.strip()
        if key and key not in out:
            out[key] = value
    return out


def _clean_raw(pairs: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in pairs.items() if k.upper() not in _SENSITIVE_KEYS}


def _first(pairs: Mapping[str, str], *names: str) -> str:
    for name in names:
        value = pairs.get(name)
        if value:
            return value
    return ""


def _transaction_response(pairs: Mapping[str, str], result: str) -> Response:
    return Response(
        status=result,
        message=pairs.get("MESSAGE", ""),
        trans_id=_first(pairs, "RRNO", "TRANS_ID", "ID"),
        trans_type=pairs.get("TRANS_TYPE", ""),
        amount=pairs.get("AMOUNT", ""),
        auth_code=pairs.get("AUTH_CODE", ""),
        avs=pairs.get("AVS", ""),
        cvv2=pairs.get("CVV2", ""),
        masked_account=pairs.get("PAYMENT_ACCOUNT", ""),
        card_type=pairs.get("CARD_TYPE", ""),
        bank_name=pairs.get("BANK_NAME", ""),
        order_id=pairs.get("ORDER_ID", ""),
        missing_field=pairs.get("MISSING", ""),
        raw=_clean_raw(pairs),
    )


def _body_text(body: str | bytes | None) -> str:
    if body is None:
        return ""
    if isinstance(body, (bytes, bytearray)):
        return bytes(body).decode("utf-8", "replace")
    return body


def parse_transaction_reply(
    status_code: int,
    location: str | None,
    body: str | bytes | None,
    *,
    secret_key: str,
) -> Response:
    """Interpret a bp10emu reply.

    Returns a Response for APPROVED/DECLINED; raises Rejected for ERROR/MISSING;
    OutcomeUnknown for 5xx, unparseable replies, any reply whose BP_STAMP is missing or wrong,
    and (``duplicate=True``, only with a verified stamp) for MESSAGE=DUPLICATE.
    """
    if status_code >= 500:
        raise OutcomeUnknown(f"gateway answered HTTP {status_code}", status_code=status_code)
    if 300 <= status_code < 400:
        if not location:
            raise OutcomeUnknown(f"HTTP {status_code} without a Location header", status_code=status_code)
        pairs = parse_pairs(urlsplit(location).query)
    else:
        pairs = parse_pairs(_body_text(body))

    result = (pairs.get("Result") or "").strip().upper()
    if not result and 400 <= status_code < 500 and (pairs.get("STATUS") or "").strip().upper() == "E":
        result = "ERROR"  # bp20post-style error body without Result
    if result not in RESULTS:
        what = "no Result field" if not result else "unknown Result value"
        raise OutcomeUnknown(f"unparseable gateway reply (HTTP {status_code}, {what})", status_code=status_code)
    if 400 <= status_code < 500 and result not in ("ERROR", "MISSING"):
        raise OutcomeUnknown(f"HTTP {status_code} with Result={result}", status_code=status_code)

    response = _transaction_response(pairs, result)
    # Only a reply whose BP_STAMP verifies may settle anything: an unauthenticated approval, decline or
    # refusal (even SECURITY ERROR: a wrong secret shows up the same way) is reconciled through stq.
    if not pairs.get("BP_STAMP"):
        raise OutcomeUnknown(f"{result} reply without BP_STAMP cannot be trusted"
                             + (f" ({response.message})" if result in ("ERROR", "MISSING") else ""),
                             status_code=status_code)
    if not stamp_matches(secret_key, pairs):
        security_error = response.message.strip().upper() == "SECURITY ERROR"
        hint = " (SECURITY ERROR: check BLUEPAY_SECRET_KEY)" if security_error else ""
        raise OutcomeUnknown(f"reply BP_STAMP does not verify{hint}", status_code=status_code)

    if response.message.strip().upper() == "DUPLICATE":
        raise OutcomeUnknown(
            "gateway refused a duplicate (DUPLICATE); look the first attempt up",
            duplicate=True,
            response=response,
            status_code=status_code,
        )
    if result in ("ERROR", "MISSING"):
        raise Rejected(response)
    return response


def _flag(value: str | None) -> bool | None:
    if value is None:
        return None
    v = value.strip().upper()
    if v in _TRUE:
        return True
    if v in _FALSE or v == "":
        return False
    return None


def _settled(lower: Mapping[str, str]) -> bool | None:
    if "settle_date" in lower:
        d = lower["settle_date"].strip()
        return bool(d) and not d.startswith("0000") and d.upper() not in ("NULL", "NONE")
    for key in ("settled", "settlement_status", "f_settled"):
        if key in lower:
            return _flag(lower[key])
    return None


def parse_query_reply(status_code: int, body: str | bytes | None, *, secret_key: str) -> Response | None:
    """Interpret an stq reply (our conventions, docs/bluepay.md):

    * 200, empty body                -> None (provably no such transaction)
    * 200, pairs with id and status  -> Response (status 1/0/E -> APPROVED/DECLINED/ERROR)
    * 400 with STATUS=E              -> Rejected (bad seal, bad dates)
    * anything else                  -> OutcomeUnknown ("cannot tell", never "absent")
    """
    text = _body_text(body)
    if status_code == 200 and not text.strip():
        return None
    if status_code >= 500:
        raise OutcomeUnknown(f"stq answered HTTP {status_code}", status_code=status_code)
    pairs = parse_pairs(text)
    lower = {k.lower(): v for k, v in pairs.items()}

    if status_code == 400:
        if (lower.get("status") or "").strip().upper() == "E":
            resp = Response(status="ERROR", message=lower.get("message", ""), raw=_clean_raw(pairs))
            raise Rejected(resp)
        raise OutcomeUnknown("stq answered HTTP 400 without STATUS=E", status_code=status_code)
    if status_code != 200:
        raise OutcomeUnknown(f"stq answered HTTP {status_code}", status_code=status_code)

    status = _STQ_STATUS.get((lower.get("status") or "").strip().upper())
    trans_id = (lower.get("id") or lower.get("trans_id") or lower.get("rrno") or "").strip()
    if status is None or not trans_id:
        raise OutcomeUnknown("unparseable stq reply", status_code=status_code)
    if not pairs.get("BP_STAMP") or not stamp_matches(secret_key, pairs):
        raise OutcomeUnknown("stq row without a BP_STAMP that verifies", status_code=status_code)

    return Response(
        status=status,
        message=lower.get("message", ""),
        trans_id=trans_id,
        trans_type=lower.get("trans_type", ""),
        amount=lower.get("amount", ""),
        auth_code=lower.get("auth_code", ""),
        avs=lower.get("avs_result", "") or lower.get("avs", ""),
        cvv2=lower.get("cvv2_result", "") or lower.get("cvv2", ""),
        masked_account=lower.get("payment_account", ""),
        card_type=lower.get("card_type", ""),
        bank_name=lower.get("bank_name", ""),
        order_id=lower.get("order_id", ""),
        missing_field="",
        settled=_settled(lower),
        voided=_flag(lower["f_void"]) if "f_void" in lower else None,
        raw=_clean_raw(pairs),
    )


def split_query_rows(text: str) -> list[str]:
    """An stq body as one text per row. BluePay does not say how several matches come back (docs/bluepay.md): a new
    row starts at each new line, and where a field name comes again within a line (``id=1&...&id=2&...``)."""
    rows: list[str] = []
    for line in text.splitlines():
        current: list[tuple[str, str]] = []
        seen: set[str] = set()
        for key, value in parse_qsl(line.strip(), keep_blank_values=True):
            name = key.strip().lower()
            if name in seen:
                rows.append(urlencode(current))
                current, seen = [], set()
            current.append((key, value))
            seen.add(name)
        if current:
            rows.append(urlencode(current))
    return rows


def parse_query_rows(status_code: int, body: str | bytes | None, *, secret_key: str) -> list[Response]:
    """Every row of an stq reply, each read by :func:`parse_query_reply` (the one reading of a row): ``[]`` when stq
    proved absence; its errors as they are. The client never assumes a single match."""
    text = _body_text(body)
    if status_code != 200 or not text.strip():
        found = parse_query_reply(status_code, body, secret_key=secret_key)
        return [] if found is None else [found]
    rows = [parse_query_reply(200, row, secret_key=secret_key) for row in split_query_rows(text)]
    return [row for row in rows if row is not None]
