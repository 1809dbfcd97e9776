"""The card number rule as text: "is this a card number", where card numbers are in a text, and how they are masked
(PCI DSS 3.3.1, 3.5.1). Standard library only.

It sits in the gateway package because the gateway needs it (card numbers are checked before a request leaves, and
masked in every log line and error) and imports nothing of the rest; every other guard and scanner asks it through
``worker/cards/numbers.py`` (identifiers, refusal, fingerprints: the card data rules built on it). The sandbox keeps
its own, independent code on purpose.

The rule
--------

A **card number** is a *maximal run* of ASCII digits holding 13 to 19 digits and passing the Luhn check,
written either in one piece (``4111111111111111``) or in groups of 3 to 6 digits joined by **separator runs**,
as people, forms and URLs write them (``4111 1111 1111 1111``, ``4111-1111-1111-1111``, ``4111.1111.1111.1111``,
``4111/1111/1111/1111``, ``4111_1111_1111_1111``, tabs, ``+``, several spaces, ``4111%201111%201111%201111``,
mixed: ``4111 -_ 1111./1111\t1111``; Amex ``3782 822463 10005``, 19 digits ``6011 0009 9013 9424 009``). A
separator run is 1 to 12 characters of: space, tab, ``-``, ``.``, ``/``, ``_``, ``+``, the percent-escapes of those
(``%20``, ``%09``, ``%2D``, ``%2E``, ``%2F``, ``%5F``, ``%2B``, any case; 3 characters each) and a written ``\\t``
(a repr; 2). A newline does not join groups (lines of numbers are not one number). Letters and other characters
around the run do not matter: a number glued to an identifier is still a card number (``ORD-4111111111111111``,
``x4111111111111111y``, ``card=4111...``). When a run of groups holds more than 19 digits, or fails Luhn as a
whole, its consecutive groups are tried too (leftmost first, longest first), so a card written next to other
numbers is found (``4111 1111 1111 1111 123`` -> the first four groups; ``qty 1 4111111111111111`` -> the second).
One contiguous run of 20 or more digits is one long number, not a card.

Groups of 1, 2 or more than 6 digits do not join into a card number: dates (``2025-11-27 10:00``), phone
numbers, IP addresses, versions, SVG path data (``M8 12a4 4 0 1 0 0-8 4 4 0 0 0 0 8``, in every Flower page) and
a 12-digit trans id followed by an amount (``100000000123 3.00``) are not read as one. The price, accepted: a card
typed one digit at a time (``4 1 1 1 ...``) is not found.

What is *not* a card number, and why:

* **Fewer than 13 or more than 19 digits.** BluePay transaction ids (``RRNO``, 12 digits) can pass Luhn
  and are never card numbers; neither are amounts, dates, phone numbers or zip codes.
* **Celery task ids**: a canonical UUID (``8-4-4-4-12`` hex digits, not glued to a letter or digit) is an
  identifier. Its digits are never read as a card: ``cd27c305-6820-4063-903f-...`` holds the dash-grouped run
  ``305-6820-4063-903``, 14 digits that pass Luhn, and every task id is a UUID. A UUID holds 32 hex digits
  in a fixed shape, so no card number written as people write them can hide in one.
* **Hex identifiers and digests** of 32 or more hex digits with at least one letter (``uuid4().hex``, MD5,
  SHA-1/256/512 hex), not glued to a letter or digit: machine-made identifiers (an idempotency key made
  from ``uuid4().hex`` would otherwise be card-like about once in 400 times). The price, accepted: a card
  number deliberately concatenated into such a token is not found.
* **The fractional digits of a decimal number**: a group of more than 6 digits right after ``<digit>.``
  (float reprs such as Celery's ``succeeded in 0.05183274700085167s``) is not read on its own. The integer part
  is read (``4111111111111111.00`` is a card), and groups of 3-6 digits after a dot join as any others do.

Unicode digits (``٤١١١...``, full-width ``４１１１...``) are not read as card digits; the gateway refuses them
as a card number anyway.

(``tests/unit/test_carddata.py`` holds this rule's table, worker/cards/numbers.py, as a test.) Masking is
``xxxxxxxxxxxx`` + the last four digits.
"""
from __future__ import annotations

import re
from typing import Any

__all__ = ["luhn_ok", "find_card_numbers", "contains_card_number", "mask_number", "mask_text", "MIN_DIGITS",
           "MAX_DIGITS", "MASK_PREFIX"]

MIN_DIGITS = 13
MAX_DIGITS = 19
MASK_PREFIX = "x" * 12

_ID = r"(?<![0-9A-Za-z])(?:{})(?![0-9A-Za-z])"
_IDENTIFIER = re.compile(_ID.format(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"  # canonical UUID
    r"|(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{32,}"))  # hex identifier / digest, 32+ with a letter
#: Separators written as escapes (URL percent-escapes of the separators, a repr's ``\t``): read as blanks of the
#: same length, so that spans stay where they are and an escape's own digits (the 20 of ``%20``) are no digits.
_ESCAPED_SEPARATOR = re.compile(r"%(?:20|09|2[bBdDeEfF]|5[fF])|\\t")
_MAX_SEPARATORS = 12  # characters in one separator run (an escape counts as its length)
_RUN = re.compile(rf"[0-9]+(?:[ \t\-./_+]{{1,{_MAX_SEPARATORS}}}[0-9]+)*")
_GROUP_MIN, _GROUP_MAX = 3, 6  # digits per group when a number is written in groups
_GROUP = re.compile(r"[0-9]+")
_NON_DIGIT = re.compile(r"[^0-9]")
_DROP_DIGITS = str.maketrans("", "", "0123456789")


def luhn_ok(digits: str) -> bool:
    """Luhn (mod 10) check of a non-empty string of ASCII digits (anything else: False)."""
    if not digits or not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _blank_identifiers(text: str) -> str:
    """``text`` as the rule reads it, same length: identifiers blanked out, escaped separators made blanks."""
    if len(text) >= 32:
        text = _IDENTIFIER.sub(lambda m: "#" * len(m.group()), text)
    if "%" in text or "\\" in text:
        text = _ESCAPED_SEPARATOR.sub(lambda m: " " * len(m.group()), text)
    return text


def _is_long_fraction(text: str, group: tuple[int, int]) -> bool:
    """The fractional digits of a decimal number (a float repr): more than 6 digits right after ``<digit>.``."""
    begin, end = group
    return (end - begin > _GROUP_MAX and begin >= 2 and text[begin - 1] == "."
            and "0" <= text[begin - 2] <= "9")


def _cards_in_run(text: str, start: int, end: int) -> list[tuple[int, int]]:
    groups = [m.span() for m in _GROUP.finditer(text, start, end)]
    groups = [g for g in groups if not _is_long_fraction(text, g)]
    found = []
    i, n = 0, len(groups)
    while i < n:
        digits, best = "", None
        for j in range(i, n):
            size = groups[j][1] - groups[j][0]
            if j > i and not (_GROUP_MIN <= size <= _GROUP_MAX
                              and _GROUP_MIN <= groups[i][1] - groups[i][0] <= _GROUP_MAX):
                break  # several groups make a card number only when each holds 3-6 digits
            digits += text[groups[j][0]:groups[j][1]]
            if len(digits) > MAX_DIGITS:
                break
            if len(digits) >= MIN_DIGITS and luhn_ok(digits):
                best = j
        if best is None:
            i += 1
        else:
            found.append((groups[i][0], groups[best][1]))
            i = best + 1
    return found


def find_card_numbers(text: str) -> list[tuple[int, int]]:
    """Spans ``(start, end)`` of the card numbers in ``text`` (see the module docstring for the rule)."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    if len(text) < MIN_DIGITS or len(text) - len(text.translate(_DROP_DIGITS)) < MIN_DIGITS:
        return []
    scan = _blank_identifiers(text)
    found: list[tuple[int, int]] = []
    for m in _RUN.finditer(scan):
        if m.end() - m.start() >= MIN_DIGITS:
            found += _cards_in_run(scan, m.start(), m.end())
    return found


def contains_card_number(text: str) -> bool:
    """Whether ``text`` holds a card number anywhere."""
    return bool(find_card_numbers(text))


def mask_number(number: Any) -> str:
    """``xxxxxxxxxxxx`` + the last four digits of ``number`` (non-digits ignored, whatever the length)."""
    digits = _NON_DIGIT.sub("", "" if number is None else str(number))
    return MASK_PREFIX + digits[-4:]


def mask_text(text: str) -> str:
    """``text`` with each card number replaced by its mask (``xxxxxxxxxxxx1111``)."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    spans = find_card_numbers(text)
    if not spans:
        return text
    out, last = [], 0
    for start, end in spans:
        out += [text[last:start], mask_number(text[start:end])]
        last = end
    out.append(text[last:])
    return "".join(out)
