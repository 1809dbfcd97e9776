"""Remove card data, seals and secrets from text before it is logged.

* card numbers: whatever :mod:`worker.cards.numbers` (the one rule for "is this a card number": 13-19 digits,
  also grouped or glued to letters, passing Luhn; not task ids, not 12-digit trans ids) finds becomes
  ``xxxxxxxxxxxx`` + last four;
* CVV2 values (``CVCCVV2=..``, ``cvv2=..``, ``"cvv2": ".."``, ``'cvv2': '..'``), ``TAMPER_PROOF_SEAL=..``,
  ``BP_STAMP=..``, ``SECRET_KEY=..`` values become ``***``;
* every secret passed to :func:`register_secret` becomes ``***``.

:class:`ScrubbingFilter` applies :func:`scrub` to every log record it sees (``worker/broker/app.py`` puts
one on every handler of the worker's and beat's loggers).
"""

from __future__ import annotations

import logging
import re
import threading

from .card_numbers import mask_text

__all__ = ["scrub", "register_secret", "ScrubbingFilter"]

_MASK = "***"
_MIN_SECRET_LEN = 4

_KEYED = re.compile(
    r"""(?ix)
    (
      (?<![A-Za-z0-9_])
      (?:CVCCVV2|CVCVV2|CC_CVV2|CVV2|CVV|TAMPER_PROOF_SEAL|BP_STAMP|SECRET_KEY|secret)
      ['"]?\s*[:=]\s*['"]?
    )
    ([^'"&\s,;})\]]+)
    """
)

_secrets_lock = threading.Lock()
_secrets: set[str] = set()
_secret_re: re.Pattern[str] | None = None


def register_secret(secret: str | None) -> None:
    """Scrub this exact string from everything logged from now on (ignored if < 4 chars)."""
    global _secret_re
    if not secret or len(secret) < _MIN_SECRET_LEN:
        return
    with _secrets_lock:
        if secret in _secrets:
            return
        _secrets.add(secret)
        alternatives = sorted(_secrets, key=len, reverse=True)
        _secret_re = re.compile("|".join(re.escape(s) for s in alternatives))


def scrub(text: str) -> str:
    """``text`` with card numbers, CVV2, seals, stamps and registered secrets removed."""
    if not text:
        return text
    if not isinstance(text, str):
        text = str(text)
    secret_re = _secret_re
    if secret_re is not None:
        text = secret_re.sub(_MASK, text)
    text = _KEYED.sub(_mask_keyed, text)
    return mask_text(text)


def _mask_keyed(match: re.Match[str]) -> str:
    # A CVV2 is digits: "cvv2: must be 3 or 4 digits" names the field, it does not hold one.
    key, value = match.group(1), match.group(2)
    if "CV" in key.upper() and not any(ch.isdigit() for ch in value):
        return match.group(0)
    return key + _MASK


class ScrubbingFilter(logging.Filter):
    """Rewrites each record so its message (args merged in) and exception text are scrubbed."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep its parts, scrubbed
            message = f"{record.msg} {record.args!r}"
        record.msg = scrub(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True

