"""Remove card data, seals and secrets from text before it is logged.

* card numbers: any run of 12-19 digits (also grouped with single spaces/dashes) that passes
  Luhn becomes ``xxxxxxxxxxxx`` + last four (a 12-digit id that happens to pass Luhn is masked
  too: we prefer a masked id to a leaked card);
* CVV2 values (``CVCCVV2=..``, ``cvv2=..``, ``"cvv2": ".."``, ``'cvv2': '..'``), ``TAMPER_PROOF_SEAL=..``,
  ``BP_STAMP=..``, ``SECRET_KEY=..`` values become ``***``;
* every secret passed to :func:`register_secret` becomes ``***``.

:class:`ScrubbingFilter` applies :func:`scrub` to every log record it sees.
"""

from __future__ import annotations

import logging
import re
import threading

from .validation import luhn_ok

__all__ = ["scrub", "register_secret", "ScrubbingFilter", "install"]

_MASK = "***"
_MIN_SECRET_LEN = 4

# maximal runs of digits, optionally grouped by single spaces or dashes
_DIGIT_RUN = re.compile(r"(?<![0-9])[0-9]+(?:[ \-][0-9]+)*(?![0-9])")
_SEP = re.compile(r"[ \-]")
# A UUID (Celery task id) or a 32-hex key, else a digit run: the regex engine meets the identifier first.
_ID_OR_DIGIT_RUN = re.compile(
    r"(?P<id>\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"
    r"|\b[0-9a-f]{32}\b)|" + _DIGIT_RUN.pattern)
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


def _mask_run(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = _SEP.sub("", text)
    if len(digits) < 12:
        return text
    if len(digits) <= 19 and luhn_ok(digits):
        return "xxxxxxxxxxxx" + digits[-4:]
    if text.isdigit():
        return text  # one long run of digits without separators: not a card
    # grouped run with extra groups around a card (e.g. "4111 1111 1111 1111 123"):
    # try contiguous groups, longest first, left to right
    groups = _SEP.split(text)
    seps = _SEP.findall(text)
    out: list[str] = []
    i = 0
    n = len(groups)
    while i < n:
        hit = None
        for j in range(n, i, -1):
            cand = "".join(groups[i:j])
            if 12 <= len(cand) <= 19 and luhn_ok(cand):
                hit = j
                break
        if hit is None:
            out.append(groups[i])
            if i < n - 1:
                out.append(seps[i])
            i += 1
        else:
            out.append("xxxxxxxxxxxx" + "".join(groups[i:hit])[-4:])
            if hit < n:
                out.append(seps[hit - 1])
            i = hit
    return "".join(out)


def scrub(text: str) -> str:
    """``text`` with card numbers, CVV2, seals, stamps and registered secrets removed."""
    if not text:
        return text
    if not isinstance(text, str):
        text = str(text)
    secret_re = _secret_re
    if secret_re is not None:
        text = secret_re.sub(_MASK, text)
    text = _KEYED.sub(lambda m: m.group(1) + _MASK, text)
    return _ID_OR_DIGIT_RUN.sub(_mask_unless_id, text)


def _mask_unless_id(match: re.Match[str]) -> str:
    # Task ids and hex keys are left whole (a Luhn-valid digit run inside one is not a card number).
    return match.group(0) if match.group("id") else _mask_run(match)


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


def install(logger: logging.Logger | str | None = None) -> ScrubbingFilter:
    """Attach a ScrubbingFilter to ``logger`` (default: the root logger's handlers and itself)."""
    flt = ScrubbingFilter()
    target = logging.getLogger(logger) if isinstance(logger, str) or logger is None else logger
    target.addFilter(flt)
    for handler in target.handlers:
        handler.addFilter(flt)
    return flt
