"""Validation of everything we send, before anything is sent.

Every function raises :class:`InvalidInput` naming the field; messages never echo card data.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation

from . import card_numbers as _carddata
from .errors import InvalidInput

__all__ = [
    "MAX_AMOUNT",
    "CUSTOMER_FIELDS",
    "ORDER_ID_MAX",
    "Card",
    "Money",
    "amount",
    "money",
    "card",
    "customer",
    "trans_id",
    "order_id",
    "idempotency_key",
    "IDEMPOTENCY_KEY_MAX",
    "luhn_ok",
    "mask",
]

#: Largest amount we accept. BluePay publishes no ceiling; 99999.99 is our choice
#: (5 dollar digits), large enough for the product and a guard against unit mistakes.
MAX_AMOUNT = Decimal("99999.99")

#: Our customer keys -> (BluePay field, max length). BluePay publishes no limits for
#: these; the lengths below are our choice (generous for real data, bounded for safety).
CUSTOMER_FIELDS: dict[str, tuple[str, int]] = {
    "name1": ("NAME1", 64),
    "name2": ("NAME2", 64),
    "addr1": ("ADDR1", 128),
    "addr2": ("ADDR2", 128),
    "city": ("CITY", 64),
    "state": ("STATE", 32),
    "zipcode": ("ZIPCODE", 16),
    "country": ("COUNTRY", 64),
    "phone": ("PHONE", 32),
    "email": ("EMAIL", 128),
    "company_name": ("COMPANY_NAME", 128),
}

_CUSTOMER_BY_BP_NAME = {bp: (bp, limit) for bp, limit in CUSTOMER_FIELDS.values()}

#: ORDER_ID: up to 128 visible ASCII characters (0x21-0x7E: no space, no control character), our choice so that
#: the gateway and the sandbox match it byte for byte (a gateway may trim or collapse spaces when it stores or
#: searches one: two ids differing only by spaces could find each other's transactions in stq).
ORDER_ID_MAX = 128
#: An idempotency key (the operation id: the store's key and the gateway's ORDER_ID): up to 100 visible ASCII
#: characters, refused otherwise, never normalised (the producer would not know which key its payment has).
IDEMPOTENCY_KEY_MAX = 100

_AMOUNT_RE = re.compile(r"^[0-9]+(?:\.[0-9]{1,2})?$")
_DIGITS_RE = re.compile(r"^[0-9]+$")
_CARD_SEPARATORS = re.compile(r"[ \-]")
_EXPIRE_RE = re.compile(r"^([0-9]{2})/?([0-9]{2})$")
_CVV2_RE = re.compile(r"^[0-9]{3,4}$")
_TRANS_ID_RE = re.compile(r"^[0-9]{12}$")
_ORDER_ID_RE = re.compile(rf"^[\x21-\x7e]{{1,{ORDER_ID_MAX}}}$")
_INVOICE_ID_RE = re.compile(r"^[\x20-\x7e]+$")

_CARD_KEYS = frozenset({"number", "expire", "cvv2"})


# Luhn lives with the card-number rule (worker.cards.numbers: stdlib + cryptography only); re-exported here.
luhn_ok = _carddata.luhn_ok


def mask(number: str) -> str:
    """BluePay style mask: ``xxxxxxxxxxxx`` + last four."""
    return "xxxxxxxxxxxx" + number[-4:]


@dataclass(frozen=True, repr=False)
class Card:
    """A validated card. ``repr``/``str`` never show the number or CVV2."""

    number: str
    expire: str  # MMYY
    cvv2: str | None = None

    @property
    def masked(self) -> str:
        return mask(self.number)

    def __repr__(self) -> str:
        cvv = "***" if self.cvv2 else None
        return f"Card(number={self.masked!r}, expire={self.expire!r}, cvv2={cvv!r})"

    __str__ = __repr__


_CENT = Decimal("0.01")


@dataclass(frozen=True, order=True)
class Money:
    """A checked amount of dollars and cents: the one money type from the task edge to the gateway and the record.

    Built by :func:`money` (the rule of :func:`amount`), never from a float; ``str()`` is the two-decimal text
    BluePay takes and the record keeps ("3.00")."""

    value: Decimal

    def __post_init__(self) -> None:
        if not isinstance(self.value, Decimal) or not self.value.is_finite():
            raise TypeError("Money holds a finite Decimal")
        object.__setattr__(self, "value", self.value.quantize(_CENT))

    def __str__(self) -> str:
        return f"{self.value:.2f}"

    @property
    def cents(self) -> int:
        return int(self.value.scaleb(2))


def money(value: object, *, allow_zero: bool = False) -> Money:
    """``value`` as :class:`Money`, by the rule of :func:`amount` (InvalidInput naming ``amount`` otherwise)."""
    return Money(Decimal(amount(value, allow_zero=allow_zero)))


def amount(value: object, *, allow_zero: bool = False) -> str:
    """Canonical two-decimal amount string ("3.00").

    Accepts ``str``, ``Decimal``, ``int`` or :class:`Money` (never ``float``, never ``bool``); at most two
    decimals; > 0 unless ``allow_zero``; at most :data:`MAX_AMOUNT`.
    """
    dec = _amount_decimal(value.value if isinstance(value, Money) else value)
    if dec < 0:
        raise InvalidInput("amount", "must not be negative")
    if dec == 0 and not allow_zero:
        raise InvalidInput("amount", "must be greater than zero")
    if dec > MAX_AMOUNT:
        raise InvalidInput("amount", f"must be at most {MAX_AMOUNT}")
    return str(dec.quantize(Decimal("0.01")))


def _amount_decimal(value: object) -> Decimal:
    """The amount as given, as a Decimal with at most two decimals (its range is checked by :func:`amount`)."""
    if isinstance(value, (bool, float)):
        raise InvalidInput("amount", "must be a string, Decimal or int, not a float")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise InvalidInput("amount", "must be a finite number")
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -2:
            raise InvalidInput("amount", "at most two decimals")
        return value
    if isinstance(value, str):
        return _amount_text(value)
    raise InvalidInput("amount", "must be a string, Decimal or int")


def _amount_text(value: str) -> Decimal:
    text = value.strip()
    if not _AMOUNT_RE.fullmatch(text):
        if re.match(r"^-?[0-9]*\.[0-9]{3,}$", text):
            raise InvalidInput("amount", "at most two decimals")
        raise InvalidInput("amount", "must be a non-negative number with at most two decimals")
    try:
        return Decimal(text)
    except InvalidOperation:  # pragma: no cover - regex guards this
        raise InvalidInput("amount", "not a number") from None


def card(value: object, *, today: date | None = None) -> Card:
    """Validate card data (dict with number/expire/cvv2, or a Card) into a :class:`Card`."""
    if isinstance(value, Card):
        value = {"number": value.number, "expire": value.expire, "cvv2": value.cvv2}
    if not isinstance(value, Mapping):
        raise InvalidInput("card", "must be a mapping with number, expire and cvv2")
    unknown = set(value) - _CARD_KEYS
    if unknown:
        raise InvalidInput("card", "unknown keys: " + ", ".join(sorted(map(str, unknown))))
    return Card(number=_card_number(value.get("number")), expire=_card_expire(value.get("expire"), today),
                cvv2=_card_cvv2(value.get("cvv2")))


def _card_number(raw_number: object) -> str:
    if not isinstance(raw_number, str):
        raise InvalidInput("card.number", "required, as a string of digits")
    number = _CARD_SEPARATORS.sub("", raw_number.strip())
    if not _DIGITS_RE.fullmatch(number):
        raise InvalidInput("card.number", "must contain digits only")
    if not 12 <= len(number) <= 19:
        raise InvalidInput("card.number", "must have 12 to 19 digits")
    if not luhn_ok(number):
        raise InvalidInput("card.number", "fails the Luhn check")
    return number


def _card_expire(raw_expire: object, today: date | None) -> str:
    """MMYY, not before this month."""
    if not isinstance(raw_expire, str):
        raise InvalidInput("card.expire", "required, as MMYY")
    m = _EXPIRE_RE.fullmatch(raw_expire.strip())
    if not m:
        raise InvalidInput("card.expire", "must be MMYY")
    month, yy = int(m.group(1)), int(m.group(2))
    if not 1 <= month <= 12:
        raise InvalidInput("card.expire", "month must be 01-12")
    today = today or date.today()
    if (2000 + yy, month) < (today.year, today.month):
        raise InvalidInput("card.expire", "card has expired")
    return f"{month:02d}{yy:02d}"


def _card_cvv2(raw_cvv2: object) -> str | None:
    if raw_cvv2 is None or raw_cvv2 == "":
        return None
    if not isinstance(raw_cvv2, str) or not _CVV2_RE.fullmatch(raw_cvv2.strip()):
        raise InvalidInput("card.cvv2", "must be 3 or 4 digits")
    return raw_cvv2.strip()


def _has_control(text: str) -> bool:
    if text.isascii() and text.isprintable():  # the usual case, without a category lookup per character
        return False
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs") for ch in text)


def customer(value: object) -> dict[str, str]:
    """Map our customer keys to BluePay fields (see :data:`CUSTOMER_FIELDS`).

    ``None`` or ``{}`` gives ``{}``; ``None`` values are skipped; values are stripped.
    The BluePay names themselves (``NAME1`` ...) are accepted too, so the function is
    idempotent: ``customer(customer(x)) == customer(x)``.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput("customer", "must be a mapping")
    out: dict[str, str] = {}
    for key, raw in value.items():
        spec = (CUSTOMER_FIELDS.get(key) or _CUSTOMER_BY_BP_NAME.get(key)) if isinstance(key, str) else None
        if spec is None:
            raise InvalidInput(f"customer.{key}", "unknown customer field")
        bp_name, limit = spec
        if raw is None:
            continue
        if not isinstance(raw, str):
            raise InvalidInput(f"customer.{key}", "must be a string")
        if _has_control(raw):
            raise InvalidInput(f"customer.{key}", "must not contain control characters")
        text = raw.strip()
        if len(text) > limit:
            raise InvalidInput(f"customer.{key}", f"at most {limit} characters")
        out[bp_name] = text
    return out


def trans_id(value: object, *, field: str = "trans_id") -> str:
    """A BluePay transaction id: exactly 12 digits (str, or a non-negative int)."""
    if isinstance(value, bool):
        raise InvalidInput(field, "must be 12 digits")
    if isinstance(value, int) and value >= 0:
        value = str(value)
    if not isinstance(value, str) or not _TRANS_ID_RE.fullmatch(value.strip()):
        raise InvalidInput(field, "must be exactly 12 digits")
    return value.strip()


def order_id(value: object) -> str:
    """ORDER_ID: 1..128 visible ASCII characters (no space, no control character)."""
    if not isinstance(value, str):
        raise InvalidInput("order_id", "must be a string")
    if not value:
        raise InvalidInput("order_id", "must not be empty")
    if len(value) > ORDER_ID_MAX:
        raise InvalidInput("order_id", f"at most {ORDER_ID_MAX} characters")
    if not _ORDER_ID_RE.fullmatch(value):
        raise InvalidInput("order_id", "visible ASCII characters only: no spaces or control characters")
    return value


def idempotency_key(value: object, field: str = "idempotency_key") -> str:
    """An operation id as given (never trimmed or otherwise changed): 1..100 visible ASCII characters, no space
    anywhere, no control character. ``field`` names it in the refusal (``task_id`` when a task id stands for it)."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(field, f"{field} must be a non-empty string")
    if len(value) > IDEMPOTENCY_KEY_MAX:
        raise InvalidInput(field, f"{field} is longer than {IDEMPOTENCY_KEY_MAX} characters")
    if not _ORDER_ID_RE.fullmatch(value):
        raise InvalidInput(field, f"{field} must be visible ASCII characters only: no spaces (leading, trailing or "
                                  "inner) and no control characters")
    return value


INVOICE_ID_MAX = 64


def invoice_id(value: object) -> str:
    """INVOICE_ID (the producer's own order reference): 1..64 printable ASCII characters."""
    if not isinstance(value, str):
        raise InvalidInput("order_id", "must be a string")
    if not value or len(value) > INVOICE_ID_MAX or not _INVOICE_ID_RE.fullmatch(value):
        raise InvalidInput("order_id", f"1 to {INVOICE_ID_MAX} printable ASCII characters")
    return value
