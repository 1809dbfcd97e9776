"""Repeat charges without card data (BluePay tokens): what we send and how we check it. Pure: no I/O.

Sources (docs/tokens.md names them): BluePay's Python library 3.0.7 (``sale(transaction_id=...)`` sends the token as
``RRNO``; ``auth(new_customer_token=...)`` sends ``NEW_CUST_TOKEN``; ``sale(customer_token=...)`` sends ``CUST_TOKEN``;
``STORED_INDICATOR``/``STORED_TYPE``/``STORED_ID`` go with every bp10emu request; replies carry ``CUST_TOKEN`` and
``STORED_ID``) and the bp10emu text (``CC_NUM`` is "required unless ... you include an RRNO").
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .errors import InvalidInput

__all__ = ["StoredCredential", "stored_credential", "customer_token", "generated_customer_token", "INITIATORS",
           "CUSTOMER_TOKEN_MAX"]

#: Who starts a charge on a stored card (the producer's ``initiator=``).
INITIATORS = ("customer", "merchant")
#: BluePay publishes no limit; the library generates 16 hex digits. Ours: 1..64 letters, digits, ``-``, ``_``, ``.``
CUSTOMER_TOKEN_MAX = 64
_CUSTOMER_TOKEN_RE = re.compile(rf"^[A-Za-z0-9_.\-]{{1,{CUSTOMER_TOKEN_MAX}}}$")
#: STORED_ID as BluePay returns it: the samples show ``TESTID526957756``; we accept any visible ASCII up to 64.
_STORED_ID_RE = re.compile(r"^[\x21-\x7e]{1,64}$")


@dataclass(frozen=True)
class StoredCredential:
    """The three stored-credential fields of one request (docs/tokens.md, "Stored-credential flags")."""

    indicator: str  # F: first storing of the card; S: a later charge of the stored card
    type: str  # C: customer-initiated; M: merchant-initiated, unscheduled; R: merchant-initiated, scheduled
    stored_id: str = ""  # the STORED_ID BluePay returned on the first charge (sent on later ones when known)

    def fields(self) -> dict[str, str]:
        out = {"STORED_INDICATOR": self.indicator, "STORED_TYPE": self.type}
        if self.stored_id:
            out["STORED_ID"] = self.stored_id
        return out


def stored_credential(*, first: bool, initiator: object = None, scheduled: object = False,
                      stored_id: object = None) -> StoredCredential:
    """The flags for a storing charge (``first``) or a later charge of a stored card. ``initiator`` defaults to
    the customer on the first charge (the customer gives the card) and is required on later ones (only the
    producer knows who started it); ``scheduled`` only means something for a merchant-initiated charge."""
    if initiator is None and first:
        initiator = "customer"
    if initiator not in INITIATORS:
        raise InvalidInput("initiator", 'must be "customer" or "merchant"')
    if not isinstance(scheduled, bool):
        raise InvalidInput("scheduled", "must be True or False")
    if scheduled and initiator != "merchant":
        raise InvalidInput("scheduled", "a scheduled charge is merchant-initiated")
    kind = "C" if initiator == "customer" else ("R" if scheduled else "M")
    sid = ""
    if stored_id not in (None, ""):
        if not isinstance(stored_id, str) or not _STORED_ID_RE.fullmatch(stored_id):
            raise InvalidInput("stored_id", "1 to 64 visible ASCII characters")
        sid = stored_id
    return StoredCredential("F" if first else "S", kind, sid)


def customer_token(value: object, field: str = "customer_token") -> str:
    """A customer token name as we send it (CUST_TOKEN / NEW_CUST_TOKEN)."""
    if not isinstance(value, str) or not _CUSTOMER_TOKEN_RE.fullmatch(value):
        raise InvalidInput(field, f"1 to {CUSTOMER_TOKEN_MAX} letters, digits, '-', '_' or '.'")
    return value


def generated_customer_token(payment_id: str) -> str:
    """``new_customer_token=True``: 16 hex digits, as BluePay's library generates, but derived from the operation
    id so that every delivery of the operation sends the same name (a random one per delivery could store the
    card under two names)."""
    return hashlib.sha256(f"customer-token|{payment_id}".encode()).hexdigest()[:16]
