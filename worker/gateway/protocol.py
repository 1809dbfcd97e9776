"""BluePay 2.0 protocol: request builders and reply parsers. Pure: no I/O.

* ``transaction_request`` / ``parse_transaction_reply``: the ``bp10emu`` endpoint (302 with the
  result in the ``Location`` query string, or a 200 body of pairs with RESPONSETYPE=DIRECT).
* ``query_request`` / ``parse_query_rows`` / ``choose_query_row``: the ``stq`` Single Transaction Query.

The interpretation of ``stq`` replies (docs/bluepay.md, "our conventions") lives only in
:func:`parse_query_rows`: 200 + empty body = provably absent ([]); 200 + rows of pairs = found;
HTTP 400 with STATUS=E = Rejected; anything else = OutcomeUnknown ("cannot tell", never "absent").
Only bp10emu replies must carry a BP_STAMP that verifies; stq rows are trusted on the channel (BluePay
documents no stamp for them), and a stamp that is present must verify.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from urllib.parse import parse_qsl, urlsplit

from . import tokens, validation
from .errors import InvalidInput, OutcomeUnknown, Rejected
from .seal import normalize_hash_type, query_seal_message, seal, stamp_matches, transaction_seal_message
from .tokens import StoredCredential

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
    "choose_query_row",
]

TRANSACTION_TYPES = ("SALE", "AUTH", "CREDIT", "CAPTURE", "REFUND", "VOID", "UPDATE")
MODES = ("TEST", "LIVE")
RESULTS = ("APPROVED", "DECLINED", "ERROR", "MISSING")
#: Libraries send 8..20; a high version gets every reply field (BP_STAMP included).
RESPONSE_VERSION = "15"
REBILLING_FIELDS = ("REBILLING", "REB_FIRST_DATE", "REB_EXPR", "REB_CYCLES", "REB_AMOUNT")
_NEEDS_RRNO = ("CAPTURE", "REFUND", "VOID", "UPDATE")
_NEEDS_CARD = ("SALE", "AUTH", "CREDIT")
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
    customer_token: str = ""  # CUST_TOKEN: the customer token used or established
    stored_id: str = ""  # STORED_ID: the stored-credential id used or established
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


_PLATFORM_MERCHANT_ID = re.compile(r"[A-Za-z0-9]{1,64}")


def platform_fields(platform_merchant_id: str | None) -> dict[str, str]:
    """PLATFORM_MERCHANT_ID (C# library 3.0.8: a platform charging for a sub-merchant), when one is set."""
    if platform_merchant_id is None or platform_merchant_id == "":
        return {}
    if not isinstance(platform_merchant_id, str) or not _PLATFORM_MERCHANT_ID.fullmatch(platform_merchant_id):
        raise InvalidInput("platform_merchant_id", "must be letters and digits")
    return {"PLATFORM_MERCHANT_ID": platform_merchant_id}


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
    token: object = None,
    customer_token: str | None = None,
    new_customer_token: str | None = None,
    stored: StoredCredential | None = None,
    platform_merchant_id: str | None = None,
) -> dict[str, str]:
    """The sealed form fields of a bp10emu request. Validates every input (InvalidInput).

    A SALE or AUTH charges exactly one of: ``card``, ``token`` (an earlier transaction id, sent as RRNO: "CC_NUM
    required unless ... you include an RRNO") or ``customer_token`` (CUST_TOKEN). ``new_customer_token`` stores
    the card under that name (with a card only); ``stored``: the stored-credential flags (worker/gateway/tokens.py).
    """
    account = _required_text("account_id", account_id)
    secret = _required_text("secret_key", secret_key)
    mode_ = _mode(mode)
    ht = normalize_hash_type(hash_type)
    ttype = (transaction_type or "").strip().upper() if isinstance(transaction_type, str) else ""
    if ttype not in TRANSACTION_TYPES:
        raise InvalidInput("transaction_type", "must be one of " + ", ".join(TRANSACTION_TYPES))

    fields: dict[str, str] = {
        "MERCHANT": account,
        **platform_fields(platform_merchant_id),
        "TRANSACTION_TYPE": ttype,
        "MODE": mode_,
        "AMOUNT": "",
        "RRNO": "",
    }
    for name in REBILLING_FIELDS:
        fields[name] = ""

    if ttype in _NEEDS_CARD:
        fields.update(_charge_fields(ttype, amount, card, token, customer_token, new_customer_token))
    else:
        if any(v is not None for v in (token, customer_token, new_customer_token, stored)):
            raise InvalidInput("token", f"not allowed for {ttype}")
        if card is not None:
            raise InvalidInput("card", f"not allowed for {ttype}")
        fields.update(_follow_up_fields(ttype, amount, rrno))

    fields.update(validation.customer(customer))
    if order_id is not None:
        fields["ORDER_ID"] = validation.order_id(order_id)
    if invoice_id is not None:
        fields["INVOICE_ID"] = validation.invoice_id(invoice_id)
    if duplicate_override:
        fields["DUPLICATE_OVERRIDE"] = "1"
    if stored is not None:
        fields.update(stored.fields())
    fields["RESPONSEVERSION"] = RESPONSE_VERSION
    fields["TPS_HASH_TYPE"] = ht
    fields["TAMPER_PROOF_SEAL"] = seal(secret, transaction_seal_message(fields), ht)
    return fields


def _charge_fields(ttype: str, amount: object, card: validation.Card | Mapping[str, object] | None, token: object,
                   customer_token: str | None, new_customer_token: str | None) -> dict[str, str]:
    """AMOUNT and what is charged (CC_NUM..., RRNO or CUST_TOKEN) of a SALE, AUTH or CREDIT."""
    sources = [name for name, given in (("card", card), ("token", token), ("customer_token", customer_token))
               if given is not None]
    if len(sources) != 1:
        raise InvalidInput("card", f"{ttype} needs exactly one of card, token and customer_token"
                           + (f" (got {', '.join(sources)})" if sources else ""))
    if ttype == "CREDIT" and card is None:
        raise InvalidInput("card", "a CREDIT goes to a card (no token)")
    if amount is None:
        raise InvalidInput("amount", f"required for {ttype}")
    fields = {"AMOUNT": validation.amount(amount, allow_zero=(ttype == "AUTH"))}
    if card is not None:
        c = validation.card(card)
        fields.update(PAYMENT_TYPE="CREDIT", CC_NUM=c.number, CC_EXPIRES=c.expire)
        if c.cvv2:
            fields["CVCCVV2"] = c.cvv2
    elif token is not None:  # PAYMENT_TYPE left out, as BluePay's library does: the token's own applies
        fields["RRNO"] = validation.trans_id(token, field="token")
    else:
        fields["CUST_TOKEN"] = tokens.customer_token(customer_token)
    if new_customer_token is not None:
        if card is None:
            raise InvalidInput("new_customer_token", "stores a card: give the card")
        fields["NEW_CUST_TOKEN"] = tokens.customer_token(new_customer_token, "new_customer_token")
    return fields


def _follow_up_fields(ttype: str, amount: object, rrno: object) -> dict[str, str]:
    """RRNO (the original) and, where it applies, AMOUNT of a CAPTURE, REFUND, VOID or UPDATE."""
    if rrno is None:
        raise InvalidInput("trans_id", f"required for {ttype}")
    fields = {"RRNO": validation.trans_id(rrno)}
    if ttype == "VOID":
        if amount is not None:
            raise InvalidInput("amount", "VOID is always for the full amount")
    elif ttype == "UPDATE" and amount is None:
        raise InvalidInput("amount", "UPDATE sets the new amount: required")
    elif amount is not None:
        fields["AMOUNT"] = validation.amount(amount)
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
    platform_merchant_id: str | None = None,
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
        **platform_fields(platform_merchant_id),
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
        customer_token=pairs.get("CUST_TOKEN", ""),
        stored_id=pairs.get("STORED_ID", ""),
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
    pairs, result = _transaction_reply_fields(status_code, location, body)
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


def _transaction_reply_fields(status_code: int, location: str | None,
                              body: str | bytes | None) -> tuple[dict[str, str], str]:
    """A bp10emu reply's fields (from the redirect's Location or the body) and its Result; OutcomeUnknown where
    the reply says nothing that can be trusted to be a result."""
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
    return pairs, result


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


def _query_rows(text: str) -> list[dict[str, str]]:
    """The rows of an stq body. BluePay documents one row of pairs; several matches are undocumented, so
    both shapes a server could plausibly use are read: one row per line, or rows run together on one line
    (a row starts again where its first field name repeats)."""
    rows: list[dict[str, str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        row: dict[str, str] = {}
        first = ""
        for key, value in parse_qsl(line.strip(), keep_blank_values=True):
            key = key.strip()
            if not key:
                continue
            name = key.lower()
            if not first:
                first = name
            elif name == first:
                rows.append(row)
                row = {}
            row.setdefault(key, value)
        if row:
            rows.append(row)
    return rows


def _query_row(pairs: Mapping[str, str], *, secret_key: str, status_code: int) -> Response:
    lower = {k.lower(): v for k, v in pairs.items()}
    status = _STQ_STATUS.get((lower.get("status") or "").strip().upper())
    trans_id = (lower.get("id") or lower.get("trans_id") or lower.get("rrno") or "").strip()
    if status is None or not trans_id:
        raise OutcomeUnknown("unparseable stq reply", status_code=status_code)
    # BluePay's stq text lists no stamp: a row is trusted on the channel (TLS to BluePay's host) and our sealed
    # request. A stamp that is there must verify: a row that claims authentication and fails it is not trusted.
    if any(k.upper() in ("BP_STAMP", "BP_STAMP_DEF") for k in pairs) and not _stamp_verifies(secret_key, pairs):
        raise OutcomeUnknown("stq row carries a BP_STAMP that does not verify", status_code=status_code)
    return Response(
        status=status,
        message=lower.get("message", ""),
        trans_id=trans_id,
        trans_type=lower.get("trans_type", ""),
        amount=lower.get("amount", ""),
        auth_code=lower.get("auth_code", ""),
        avs=lower.get("avs_result", "") or lower.get("avs", ""),
        cvv2=lower.get("cvv_result", "") or lower.get("cvv2_result", "") or lower.get("cvv2", ""),
        masked_account=lower.get("payment_account", ""),
        card_type=lower.get("card_type", ""),
        bank_name=lower.get("bank_name", ""),
        order_id=lower.get("order_id", ""),
        missing_field="",
        settled=_settled(lower),
        voided=_flag(lower["f_void"]) if "f_void" in lower else None,
        raw=_clean_raw(lower),
    )


def _stamp_verifies(secret_key: str, pairs: Mapping[str, str]) -> bool:
    """BP_STAMP over an stq row, whatever the case of its names (the stq text uses lower case, BluePay's Python
    library reads upper case)."""
    by_upper = {k.upper(): v for k, v in pairs.items()}
    view = {name: by_upper.get(name.upper(), "") for name in by_upper.get("BP_STAMP_DEF", "").split()}
    for name in ("BP_STAMP", "BP_STAMP_DEF", "TPS_HASH_TYPE"):
        view[name] = by_upper.get(name, "")
    return stamp_matches(secret_key, view)


def parse_query_rows(status_code: int, body: str | bytes | None, *, secret_key: str) -> list[Response]:
    """Interpret an stq reply as its rows (our conventions, docs/bluepay.md):

    * 200, empty body                -> [] (provably no such transaction)
    * 200, one or more rows of pairs -> their Responses (status 1/0/E -> APPROVED/DECLINED/ERROR)
    * 400 with STATUS=E, or one line -> Rejected (bad seal, bad dates)
    * anything else                  -> OutcomeUnknown ("cannot tell", never "absent")

    A row needs no BP_STAMP (BluePay documents none for stq); one that carries a stamp must verify.
    """
    text = _body_text(body)
    if status_code == 200 and not text.strip():
        return []
    if status_code >= 500:
        raise OutcomeUnknown(f"stq answered HTTP {status_code}", status_code=status_code)
    if status_code == 400:
        lower = {k.lower(): v for k, v in parse_pairs(text).items()}
        if (lower.get("status") or "").strip().upper() == "E":
            raise Rejected(Response(status="ERROR", message=lower.get("message", ""), raw=_clean_raw(lower)))
        line = text.strip()
        if line and "\n" not in line and "=" not in line and "<" not in line:
            # the daily report's text: a refusal is "a single line, containing a message"; stq's text is silent
            raise Rejected(Response(status="ERROR", message=line[:200]))
        raise OutcomeUnknown("stq answered HTTP 400 without STATUS=E", status_code=status_code)
    if status_code != 200:
        raise OutcomeUnknown(f"stq answered HTTP {status_code}", status_code=status_code)
    rows = _query_rows(text)
    if not rows:
        raise OutcomeUnknown("unparseable stq reply", status_code=status_code)
    return [_query_row(row, secret_key=secret_key, status_code=status_code) for row in rows]


def choose_query_row(rows: list[Response], *, trans_id: str | None = None,
                     order_id: str | None = None) -> Response | None:
    """The one transaction an stq lookup proves, or None when it proves there is none.

    Only rows that answer the question asked count (the same id, or exactly the same ORDER_ID); rows that do
    not are someone else's, and if only such rows came back nothing is proven (OutcomeUnknown, never "absent").
    Of the rows that answer: the approved one if there is exactly one; two approved transactions are a
    double charge for a human, not something to adopt; with none approved, the newest decline or error.
    """
    if not rows:
        return None
    if trans_id is not None:
        ours = [r for r in rows if r.trans_id == trans_id]
    else:
        ours = [r for r in rows if r.order_id == order_id]
    if not ours:
        raise OutcomeUnknown(f"stq answered {len(rows)} row(s), none for the transaction asked about")
    approved = {r.trans_id: r for r in ours if r.status == "APPROVED"}
    if len(approved) > 1:
        raise OutcomeUnknown(f"stq found {len(approved)} approved transactions for one ORDER_ID "
                             f"({', '.join(sorted(approved))}): a human must look")
    if approved:
        return next(iter(approved.values()))
    return max(ours, key=lambda r: (r.raw.get("issue_date", ""), r.trans_id))


def parse_query_reply(status_code: int, body: str | bytes | None, *, secret_key: str) -> Response | None:
    """A one-row stq reply (see :func:`parse_query_rows`): None when absent. Several rows cannot be judged without
    the question asked: OutcomeUnknown (the client asks :func:`choose_query_row` with it)."""
    rows = parse_query_rows(status_code, body, secret_key=secret_key)
    if len(rows) > 1:
        raise OutcomeUnknown(f"stq answered {len(rows)} rows", status_code=status_code)
    return rows[0] if rows else None
