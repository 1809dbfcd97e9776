"""Scan what the system wrote for card data in clear: card numbers (any Luhn-valid 13-19 digit run)
and the test CVV2 next to a cvv-ish name or quoted on its own. Base64 runs (Celery message bodies)
are decoded and scanned too."""
from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path

# Contiguous 13-19 digits, or 4-digit groups split by spaces or dashes as people write card numbers.
# Not inside a decimal fraction (0.00585255199985113), a hex digest or an identifier.
DIGIT_RUN = re.compile(
    r"(?<![\w.-])(\d{13,19}|\d{4}(?:[ -]\d{4}){2,3}(?:[ -]\d{1,3})?)(?![\w-])")
B64_RUN = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _cvv_pattern(cvv2: str) -> re.Pattern:
    return re.compile(rf"(?i)(cvv2?|cvccvv2|cvc)\W{{0,6}}{cvv2}(?!\d)|['\"]{cvv2}['\"]")


def scan_text(text: str, *, cvv2: str, where: str, _depth: int = 0) -> list[str]:
    hits = []
    for match in DIGIT_RUN.finditer(text):
        digits = re.sub(r"\D", "", match.group(1))
        if 13 <= len(digits) <= 19 and luhn_ok(digits) and not _is_timestamp(digits):
            hits.append(f"{where}: card number ...{digits[-4:]}")
    if _cvv_pattern(cvv2).search(text):
        hits.append(f"{where}: cvv2")
    if _depth == 0:
        for run in B64_RUN.findall(text):
            try:
                decoded = base64.b64decode(run + "=" * (-len(run) % 4)).decode("utf-8", "replace")
            except (binascii.Error, ValueError):
                continue
            hits += scan_text(decoded, cvv2=cvv2, where=f"{where} (base64)", _depth=1)
    return hits


def _is_timestamp(digits: str) -> bool:
    # epoch milliseconds/microseconds of this era (17xxxxxxxx...) are not card numbers
    return digits.startswith(("17", "18")) and len(digits) in (13, 16)


def redis_dump(client) -> list[tuple[str, str]]:
    """Every key and value in the client's database, as text."""
    out = []
    for key in client.scan_iter(count=1000):
        name = key.decode() if isinstance(key, bytes) else key
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            value = ""
        out.append((name, _text(value)))
    return out


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return " ".join(f"{_text(k)}={_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return " ".join(_text(v) for v in value)
    return str(value)


def scan_redis(client, *, cvv2: str) -> list[str]:
    hits = []
    for name, text in redis_dump(client):
        hits += scan_text(name + " " + text, cvv2=cvv2, where=f"redis key {name}")
    return hits


def scan_files(paths, *, cvv2: str) -> list[str]:
    hits = []
    for path in paths:
        path = Path(path)
        if path.is_file():
            hits += scan_text(path.read_text("utf-8", "replace"), cvv2=cvv2, where=str(path))
    return hits
