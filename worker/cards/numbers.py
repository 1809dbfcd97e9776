"""Card data rules (PCI DSS 3.3.1, 3.5.1): "is this a card number" (the text rule, re-exported from the gateway),
identifiers, refusal, fingerprints.

Every guard and scanner asks this module: the log scrubber (``worker/gateway/scrub.py``), the card
vault's masking, the results store's guard, the producer's guard (``worker/cards/messages.py``, run where every
task message is built) and the test scanner (``tests/support/card_scan.py``). The sandbox keeps its own,
independent code on purpose. Only the standard library, ``cryptography`` and the gateway's text rule
(:mod:`worker.gateway.card_numbers`) are imported here.

The rule
--------

The rule itself (what a card number is, in text; finding and masking) is :mod:`worker.gateway.card_numbers`, where
the gateway, which imports nothing of the rest, can use it; its names are re-exported here. In short: a run of 13-19
ASCII digits passing Luhn, in one piece or in groups of 3-6 digits joined by separator runs; UUIDs, 32+ hex digests
and long decimal fractions are not read as cards.

What follows from finding one: identifiers and free text
--------------------------------------------------------

**Identifiers** (:data:`IDENTIFIER_NAMES`: ``idempotency_key``, ``order_id``, ``invoice_id``, wherever they sit: the
task's own arguments or an embedded signature's) are never refused for being card-like, whether ``str`` or ``int``
(not ``bool``): about one numeric id in ten passes Luhn. A card-like identifier is *card data* and travels and rests
like it: encrypted in the message (:meth:`worker.cards.vault.CardVault.encrypt_identifier`), a keyed hash where only
lookup is needed (:func:`identifier_digests`: the payment id of a card-like idempotency key, sent as ORDER_ID),
masked where shown (:func:`mask_number`). An ``int`` is no exception: ``order_id=4111111111111111`` is encrypted
like ``"4111111111111111"``. :func:`is_card_like_identifier` says which.

**Free text** (every other value: ``customer.*`` names and address, memo, custom fields, ``amount``,
``trans_id``, extra arguments, message headers, stamps and publish options, the Celery ids ``task_id``,
``group_id``, ``root_id``, ``parent_id``, ``shadow``) holding a card number is **refused** at the producer
(:class:`CardDataRefused`, naming the field, never the value): nothing there is needed to find a payment, a
card number in it is a card put in the wrong place, and a refusal tells the producer so, where encrypting would
quietly carry it on (and BluePay would receive it in NAME1 or a memo in clear). Near misses are accepted as they
are (``PO Box 4111 1111``, a phone number, a 12-digit reference, a date).

==============================================  ==========  ==============================================
text / value                                    card?       why
==============================================  ==========  ==============================================
``4111111111111111``                            yes         16 digits, Luhn
``4111 1111 1111 1111`` / ``4111-1111-...``     yes         grouped by a separator run
``4111.1111.1111.1111``, ``4111%201111...``     yes         any separator run, escapes included
``ORD-4111111111111111``, ``x4111111111111111``  yes         glued to letters or separators
``4111 1111 1111 1111 123``                     yes         the card among the groups (123 stays)
``4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1``                no          groups of one digit
``4111111111111112``                            no          fails Luhn
``100000000123`` (trans id)                     no          12 digits
``cd27c305-6820-4063-903f-1a2b3c4d5e6f``        no          a UUID (Celery task id)
``order-`` + ``uuid4().hex``                    no          32-hex identifier
``0.00585255199985113``                         no          fractional digits of a decimal
``12345678901234567890123``                     no          one run of more than 19 digits
``order_id=1234567890123452`` (``int``)           yes         an int is no exception (encrypted: an identifier)
``amount=1234567890123452`` (``int``)             yes         refused: not an identifier
==============================================  ==========  ==============================================

(``tests/unit/test_carddata.py`` holds this table as a test.)

Masking is ``xxxxxxxxxxxx`` + the last four digits. The card fingerprint (:func:`card_fingerprints`) is a keyed
hash: it tells whether two requests used the same card without ever storing the number.
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from worker.gateway.card_numbers import (
    MASK_PREFIX,
    MAX_DIGITS,
    MIN_DIGITS,
    contains_card_number,
    find_card_numbers,
    luhn_ok,
    mask_number,
    mask_text,
)

__all__ = [
    "luhn_ok", "find_card_numbers", "contains_card_number", "mask_number", "mask_text",
    "CardDataRefused", "refuse_card_data", "card_data_field", "card_fingerprints",
    "IDENTIFIER_NAMES", "is_identifier_field", "is_card_like_identifier", "identifier_digests", "keyed_ids",
    "KEYED_ID_PREFIX", "MIN_DIGITS", "MAX_DIGITS", "MASK_PREFIX", "FINGERPRINT_INFO", "IDENTIFIER_INFO",
]

FINGERPRINT_INFO = b"payments card fingerprint v1"
IDENTIFIER_INFO = b"payments identifier digest v1"
#: The arguments that are identifiers: card-like values there are encrypted and hashed, never refused.
IDENTIFIER_NAMES = frozenset({"idempotency_key", "order_id", "invoice_id"})
#: What a keyed id starts with (the payment id and ORDER_ID of a card-like idempotency key).
KEYED_ID_PREFIX = "kh-"


# ---- structured values: fields, the numeric order id rule, refusal ------------------------------------

class CardDataRefused(ValueError):
    """A card-like value sits in a free-text field (anything but an identifier or the card). ``field`` names it
    (a path such as ``customer.name1`` or ``chain[0].kwargs.customer.addr1``); neither the message nor ``field``
    holds the value."""

    def __init__(self, field: str):
        self.field = mask_text(str(field)) or "value"
        super().__init__(f"refused: {self.field} looks like a card number; card data may travel only as the "
                         f"card argument of payments.sale/payments.auth (encrypted) or as an identifier "
                         f"({', '.join(sorted(IDENTIFIER_NAMES))}, encrypted)")


def field_name(field: str) -> str:
    """The last name of a field path (``chain[0].kwargs.order_id`` -> ``order_id``)."""
    return re.split(r"[.\[]", str(field or ""))[-1]


def is_identifier_field(field: str) -> bool:
    """Whether ``field`` (a path) names an identifier (:data:`IDENTIFIER_NAMES`)."""
    return field_name(field) in IDENTIFIER_NAMES


def is_card_like_identifier(value: Any) -> bool:
    """Whether an identifier's value (``str`` or ``int``, not ``bool``) is card-like: card data from then on."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return False
    return contains_card_number(value if isinstance(value, str) else str(value))


def _join(field: str, name: str) -> str:
    return f"{field}.{name}" if field else name


def card_data_field(value: Any, field: str = "") -> str | None:
    """The path (``field`` and below) of the first card number in ``value``, or None.

    ``value`` may be a string, a number or any nesting of mappings and sequences; keys are read too (a key that
    holds a card is named masked). Identifiers are not exempt: a card-like identifier in clear is card data in
    clear (the producer encrypts it before this check; the worker's check finds it when it was not).
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return (field or "value") if contains_card_number(value) else None
    if isinstance(value, int):
        return (field or "value") if contains_card_number(str(value)) else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return card_data_field(bytes(value).decode("utf-8", "replace"), field)
    if isinstance(value, Mapping):
        return _card_data_in_mapping(value, field)
    if isinstance(value, (list, tuple, set, frozenset)):
        return next((found for i, item in enumerate(value) if (found := card_data_field(item, f"{field}[{i}]"))),
                    None)
    return (field or "value") if contains_card_number(str(value)) else None  # float, Decimal, anything else


def _card_data_in_mapping(value: Mapping[Any, Any], field: str) -> str | None:
    for key, item in value.items():
        name = str(key)
        if contains_card_number(name):
            return _join(field, mask_text(name))
        found = card_data_field(item, _join(field, name))
        if found:
            return found
    return None


def refuse_card_data(field: str, value: Any) -> None:
    """Raise :class:`CardDataRefused` naming the field (or the part of it) where ``value`` holds a card
    number; return quietly otherwise."""
    found = card_data_field(value, field)
    if found:
        raise CardDataRefused(found)


# ---- the card fingerprint ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=32)  # one HKDF per key and purpose per process, not per payment
def _derived_key(fernet_key: str | bytes, info: bytes = FINGERPRINT_INFO) -> bytes:
    raw = fernet_key.encode("ascii") if isinstance(fernet_key, str) else bytes(fernet_key)
    try:
        material = base64.urlsafe_b64decode(raw.strip())
    except (binascii.Error, ValueError):
        material = b""
    if len(material) != 32:
        raise ValueError("card key is not a valid Fernet key (expected 32 url-safe base64-encoded bytes)")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)


def card_fingerprints(number: str, keys: Sequence[str]) -> list[str]:
    """One keyed hash of the card number per Fernet key, in ``PAYMENTS_CARD_KEY`` order (the first is the
    current key; compare against all of them while keys rotate).

    Each is ``HMAC-SHA256(HKDF-SHA256(fernet key bytes, info=FINGERPRINT_INFO), digits)`` in hex, where
    ``digits`` are the number's digits only (``4111 1111 1111 1111`` and ``4111111111111111`` match).
    Deterministic; never the number. ``keys`` may also be the comma-separated ``PAYMENTS_CARD_KEY`` text.
    A value without digits (bad input, refused later by validation) hashes the empty digit string; a key that
    is not a Fernet key, or no key, raises ``ValueError`` (naming no key material).
    """
    digits = re.sub(r"[^0-9]", "", "" if number is None else str(number))
    return _keyed_hashes(digits.encode("ascii"), _key_list(keys), FINGERPRINT_INFO)


def _key_list(keys: Sequence[str] | str | bytes) -> list[str]:
    if isinstance(keys, (str, bytes)):
        keys = [k for k in (keys.decode("ascii") if isinstance(keys, bytes) else keys).split(",") if k.strip()]
    if not keys:
        raise ValueError("no card key given")
    return [k.strip() for k in keys]


def _keyed_hashes(message: bytes, keys: list[str], info: bytes) -> list[str]:
    return [hmac.new(_derived_key(k, info), message, hashlib.sha256).hexdigest() for k in keys]


def identifier_digests(value: Any, keys: Sequence[str] | str) -> list[str]:
    """One keyed hash of an identifier per Fernet key, in ``PAYMENTS_CARD_KEY`` order (the first is the current key).

    ``HMAC-SHA256(HKDF-SHA256(fernet key bytes, info=IDENTIFIER_INFO), text)`` in hex, where ``text`` is the
    identifier as written (UTF-8; an ``int`` as its decimal digits, so ``4111...`` and ``"4111..."`` are one id;
    ``"4111 1111 ..."`` is another id than ``"41111111..."``: identifiers are compared exactly). Another key than
    the card fingerprint's, so the two hashes of one number never match."""
    return _keyed_hashes(str(value).encode("utf-8"), _key_list(keys), IDENTIFIER_INFO)


def keyed_ids(value: Any, keys: Sequence[str] | str) -> list[str]:
    """The ids a card-like identifier is kept and looked up under: :data:`KEYED_ID_PREFIX` + its digest, one per
    key (the first: where a new record goes; the others: where one made before a key rotation may be)."""
    return [KEYED_ID_PREFIX + digest for digest in identifier_digests(value, keys)]
