"""Canned BluePay replies for the gateway unit tests.

Stamps are computed here with hashlib/hmac directly (not with worker.gateway.seal) so a
mistake in seal.py shows up.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlencode

SECRET = "SECRETKEY1234567890ABCDEFGHIJKL"
ACCOUNT = "100228390579"
TRANS_ID = "100229460097"


def independent_seal(secret: str, message: str, hash_type: str) -> str:
    s, m = secret.encode(), message.encode()
    if hash_type == "MD5":
        return hashlib.md5(s + m).hexdigest()
    if hash_type == "SHA256":
        return hashlib.sha256(s + m).hexdigest()
    if hash_type == "SHA512":
        return hashlib.sha512(s + m).hexdigest()
    if hash_type == "HMAC_SHA256":
        return hmac.new(s, m, hashlib.sha256).hexdigest()
    return hmac.new(s, m, hashlib.sha512).hexdigest()


def stamped(pairs: dict, *, secret: str = SECRET, hash_type: str = "HMAC_SHA512",
            stamp_def: str = "RRNO ISSUE_DATE Result", upper: bool = True) -> dict:
    out = dict(pairs)
    out["TPS_HASH_TYPE"] = hash_type
    out["BP_STAMP_DEF"] = stamp_def
    message = "".join(out.get(name, "") for name in stamp_def.split())
    stamp = independent_seal(secret, message, hash_type)
    out["BP_STAMP"] = stamp.upper() if upper else stamp
    return out


def approved(**over) -> dict:
    pairs = {
        "Result": "APPROVED", "STATUS": "1", "MESSAGE": "Approved Sale", "RRNO": TRANS_ID,
        "TRANS_ID": TRANS_ID, "TRANS_TYPE": "SALE", "AMOUNT": "3.00", "AUTH_CODE": "AR1234",
        "AVS": "_", "CVV2": "_", "PAYMENT_ACCOUNT": "xxxxxxxxxxxx1111", "CARD_TYPE": "VISA",
        "BANK_NAME": "TEST BANK", "CARD_EXPIRE": "1230", "ORDER_ID": "order-1", "MODE": "TEST",
        "FLAGS": "T", "ISSUE_DATE": "2025-11-27 10:00:00",
    }
    pairs.update(over)
    return stamped(pairs)


def declined(**over) -> dict:
    pairs = {
        "Result": "DECLINED", "STATUS": "0", "MESSAGE": "Declined Sale", "RRNO": "100229460098",
        "TRANS_TYPE": "SALE", "AMOUNT": "4.00", "PAYMENT_ACCOUNT": "xxxxxxxxxxxx1111",
        "CARD_TYPE": "VISA", "AVS": "_", "CVV2": "_", "ISSUE_DATE": "2025-11-27 10:00:01",
    }
    pairs.update(over)
    return stamped(pairs)


SECURITY_ERROR = {"Result": "ERROR", "STATUS": "E", "MESSAGE": "SECURITY ERROR"}
MISSING = {"Result": "MISSING", "STATUS": "E", "MESSAGE": "Missing CC_NUM", "MISSING": "CC_NUM"}


def duplicate() -> dict:
    return stamped({"Result": "APPROVED", "STATUS": "1", "MESSAGE": "DUPLICATE",
                    "ISSUE_DATE": "2025-11-27 10:00:02"})


def location(pairs: dict, absolute: bool = False) -> str:
    base = "https://secure.bluepay.com" if absolute else ""
    return base + "/interfaces/wlcatch?" + urlencode(pairs)


def body(pairs: dict) -> str:
    return urlencode(pairs)


def stq_row(**over) -> dict:
    pairs = {
        "id": TRANS_ID, "trans_type": "SALE", "amount": "3.00", "status": "1",
        "message": "Approved Sale", "order_id": "order-1", "payment_account": "xxxxxxxxxxxx1111",
        "card_type": "VISA", "issue_date": "2025-11-27 10:00:00", "settle_date": "", "f_void": "",
    }
    pairs.update(over)
    return pairs


def error(message: str = "SECURITY ERROR", *, secret: str = SECRET, **over) -> dict:
    """A Result=ERROR reply stamped (with ``secret``: pass another one for a stamp that cannot verify)."""
    pairs = {"Result": "ERROR", "STATUS": "E", "MESSAGE": message, "ISSUE_DATE": "2025-11-27 10:00:03"}
    pairs.update(over)
    return stamped(pairs, secret=secret)


def missing(field: str = "CC_NUM") -> dict:
    return stamped({"Result": "MISSING", "STATUS": "E", "MESSAGE": f"Missing {field}", "MISSING": field,
                    "ISSUE_DATE": "2025-11-27 10:00:04"})


def unstamped(pairs: dict) -> dict:
    """The same reply without its stamp (as a proxy or an impostor could send it)."""
    return {k: v for k, v in pairs.items() if k not in ("BP_STAMP", "BP_STAMP_DEF", "TPS_HASH_TYPE")}


STQ_STAMP_DEF = "id status amount trans_type order_id"


def stq_stamped(*, secret: str = SECRET, **over) -> dict:
    """An stq row with a BP_STAMP over its id, status, amount, type and order id."""
    return stamped(stq_row(**over), stamp_def=STQ_STAMP_DEF, secret=secret)
