"""Seal and stamp functions of the sandbox, written from docs/bluepay.md alone.

Deliberately independent of ``worker.gateway`` (the client): if one of the two
misreads the protocol, the integration tests show it.

``H(secret, message)`` by TPS_HASH_TYPE (hex digest):

* ``MD5``, ``SHA256``, ``SHA512``: plain hash of ``secret + message``;
* ``HMAC_SHA256``, ``HMAC_SHA512``: HMAC keyed with the secret over ``message``;
* anything else, or empty: ``HMAC_SHA512`` (what BluePay's libraries default to).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

HASH_TYPES = ("MD5", "SHA256", "SHA512", "HMAC_SHA256", "HMAC_SHA512")
DEFAULT_HASH_TYPE = "HMAC_SHA512"

# bp10emu seal fields, in order (absent field = ""). PLATFORM_MERCHANT_ID follows the account id (BluePay's C#
# library 3.0.8, CalcTPS / CalcReportTPS: accountID + platformMerchantID + ...).
BP10EMU_SEAL_FIELDS = (
    "MERCHANT", "PLATFORM_MERCHANT_ID", "TRANSACTION_TYPE", "AMOUNT", "REBILLING", "REB_FIRST_DATE",
    "REB_EXPR", "REB_CYCLES", "REB_AMOUNT", "RRNO", "MODE",
)
STQ_SEAL_FIELDS = ("ACCOUNT_ID", "PLATFORM_MERCHANT_ID", "REPORT_START_DATE", "REPORT_END_DATE")


def effective_hash_type(requested: str | None) -> str:
    """The hash type actually used for a request's TPS_HASH_TYPE value."""
    value = (requested or "").strip().upper()
    return value if value in HASH_TYPES else DEFAULT_HASH_TYPE


def tps_hash(secret: str, message: str, hash_type: str | None) -> str:
    """Lower-case hex digest of ``message`` under ``secret`` with ``hash_type``."""
    kind = effective_hash_type(hash_type)
    key = secret.encode("utf-8")
    data = message.encode("utf-8")
    if kind == "MD5":
        return hashlib.md5(key + data).hexdigest()
    if kind == "SHA256":
        return hashlib.sha256(key + data).hexdigest()
    if kind == "SHA512":
        return hashlib.sha512(key + data).hexdigest()
    if kind == "HMAC_SHA256":
        return hmac.new(key, data, hashlib.sha256).hexdigest()
    return hmac.new(key, data, hashlib.sha512).hexdigest()


def seal_message(fields: Mapping[str, str], default_order: tuple[str, ...]) -> str:
    """Concatenate the sealed values: TPS_DEF's fields if given, else ``default_order``."""
    tps_def = (fields.get("TPS_DEF") or "").split()
    names = tps_def if tps_def else default_order
    return "".join(fields.get(name, "") or "" for name in names)


def verify_seal(secret: str, fields: Mapping[str, str], default_order: tuple[str, ...]) -> bool:
    """True when TAMPER_PROOF_SEAL matches (hex compared case-insensitively)."""
    given = (fields.get("TAMPER_PROOF_SEAL") or "").strip()
    if not given:
        return False
    expected = tps_hash(secret, seal_message(fields, default_order), fields.get("TPS_HASH_TYPE"))
    return hmac.compare_digest(given.lower().encode("ascii", "replace"), expected.encode("ascii"))


def stamp(secret: str, reply: Mapping[str, str], stamp_def: str, hash_type: str) -> str:
    """BP_STAMP: upper-case hash of the values named in ``stamp_def`` (absent = "")."""
    message = "".join(reply.get(name, "") or "" for name in stamp_def.split())
    return tps_hash(secret, message, hash_type).upper()
