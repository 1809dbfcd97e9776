"""BluePay 2.0 tamper-proof seal (requests) and BP_STAMP (replies). Pure functions.

``H(secret, message)`` by TPS_HASH_TYPE:

* ``MD5``, ``SHA256``, ``SHA512``: plain hash of ``secret + message``;
* ``HMAC_SHA256``, ``HMAC_SHA512``: HMAC keyed with the secret over ``message``;
* unknown or empty type: HMAC_SHA512 (the BluePay libraries' default).

Lower-case hex digest; the gateway compares case-insensitively.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

__all__ = [
    "HASH_TYPES",
    "DEFAULT_HASH_TYPE",
    "normalize_hash_type",
    "seal",
    "transaction_seal_message",
    "query_seal_message",
    "stamp_matches",
    "TRANSACTION_SEAL_FIELDS",
    "QUERY_SEAL_FIELDS",
]

HASH_TYPES = ("MD5", "SHA256", "SHA512", "HMAC_SHA256", "HMAC_SHA512")
DEFAULT_HASH_TYPE = "HMAC_SHA512"

#: PLATFORM_MERCHANT_ID (a platform's sub-merchant) follows the account id in every seal, as BluePay's C# library 3.0.8
#: concatenates it (absent: "", the seal of every request without one is unchanged).
TRANSACTION_SEAL_FIELDS = (
    "MERCHANT",
    "PLATFORM_MERCHANT_ID",
    "TRANSACTION_TYPE",
    "AMOUNT",
    "REBILLING",
    "REB_FIRST_DATE",
    "REB_EXPR",
    "REB_CYCLES",
    "REB_AMOUNT",
    "RRNO",
    "MODE",
)
QUERY_SEAL_FIELDS = ("ACCOUNT_ID", "PLATFORM_MERCHANT_ID", "REPORT_START_DATE", "REPORT_END_DATE")

_PLAIN = {"MD5": hashlib.md5, "SHA256": hashlib.sha256, "SHA512": hashlib.sha512}
_HMAC = {"HMAC_SHA256": hashlib.sha256, "HMAC_SHA512": hashlib.sha512}


def normalize_hash_type(hash_type: str | None) -> str:
    """Upper-cased known type, or DEFAULT_HASH_TYPE for unknown/empty."""
    ht = (hash_type or "").strip().upper()
    return ht if ht in HASH_TYPES else DEFAULT_HASH_TYPE


def seal(secret: str, message: str, hash_type: str | None = DEFAULT_HASH_TYPE) -> str:
    """Hex digest of ``message`` sealed with ``secret`` per ``hash_type``."""
    ht = normalize_hash_type(hash_type)
    secret_b = (secret or "").encode("utf-8")
    message_b = (message or "").encode("utf-8")
    if ht in _PLAIN:
        return _PLAIN[ht](secret_b + message_b).hexdigest()
    return hmac.new(secret_b, message_b, _HMAC[ht]).hexdigest()


def _concat(fields: Mapping[str, object], names: tuple[str, ...]) -> str:
    out = []
    for name in names:
        value = fields.get(name)
        out.append("" if value is None else str(value))
    return "".join(out)


def transaction_seal_message(fields: Mapping[str, object]) -> str:
    """bp10emu: MERCHANT+PLATFORM_MERCHANT_ID+TRANSACTION_TYPE+AMOUNT+REBILLING+REB_FIRST_DATE+REB_EXPR+REB_CYCLES+
    REB_AMOUNT+RRNO+MODE."""
    return _concat(fields, TRANSACTION_SEAL_FIELDS)


def query_seal_message(fields: Mapping[str, object]) -> str:
    """stq and bpdailyreport2: ACCOUNT_ID+PLATFORM_MERCHANT_ID+REPORT_START_DATE+REPORT_END_DATE."""
    return _concat(fields, QUERY_SEAL_FIELDS)


def stamp_matches(secret: str, pairs: Mapping[str, str]) -> bool:
    """True when the reply's BP_STAMP verifies.

    The message is the concatenation of the values of the fields named (space separated) in
    BP_STAMP_DEF (absent field -> ""), hashed with the reply's TPS_HASH_TYPE. A reply without
    BP_STAMP or BP_STAMP_DEF does not match. Comparison is case-insensitive and constant time.
    """
    stamp = pairs.get("BP_STAMP") or ""
    stamp_def = pairs.get("BP_STAMP_DEF") or ""
    if not stamp or not stamp_def.strip():
        return False
    message = "".join(pairs.get(name) or "" for name in stamp_def.split())
    expected = seal(secret, message, pairs.get("TPS_HASH_TYPE"))
    return hmac.compare_digest(expected.upper().encode("ascii"), stamp.strip().upper().encode("utf-8", "replace"))
