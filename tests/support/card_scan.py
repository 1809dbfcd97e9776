"""Scan what the system wrote for card data in clear: card numbers by the one rule (``worker.cards.numbers``) and
the test CVV2 next to a cvv-ish name or standing alone as a string.

Decoded before it is read, so that nothing hides behind an encoding:

* **JSON** (Redis values, kombu's message envelopes, results, the outbox, records' JSON fields, Flower's API) is
  walked as data: its strings are scanned as text, and decoded further when they are JSON or base64 themselves;
  its numbers are scanned too (an ``int`` order id or key that is card-like is card data like any other: the
  producer encrypts it). Text that is not JSON is scanned as text, and base64 runs in it (40+ characters) decoded.
* **kombu's Redis transport** keeps each message as a JSON envelope whose ``body`` is base64
  (``properties.body_encoding``): decoded, then walked (the task's args, kwargs and embedded signatures).
* **Redis** (:func:`scan_redis`): every key of the database and every value: strings, hash fields and values
  (``unacked``, the outbox, records), list items (queues, history), set and sorted-set members, stream fields
  (the audit stream; not its entry ids, which Redis makes from its clock in epoch milliseconds).
* **The AOF** (:func:`scan_aof`, and :func:`scan_redis_aof` for a server that has one): its RESP commands are
  parsed and every argument that carries data is scanned as a value, so what was deleted since (popped
  messages, cleared outbox entries) is read too; the numbers Redis writes itself (``PXAT``/``PEXPIREAT``
  times, stream ids, ``MAXLEN``, scores) are skipped. An ``.rdb`` (the AOF's base after a rewrite) is read as raw
  bytes: strings Redis compressed (LZF) there are not readable, and the scan of the live database covers them.
* **Files** (:func:`scan_files`): logs as text; ``*.aof`` through the RESP parser; ``*.rdb`` raw.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from worker.cards.numbers import find_card_numbers

B64_RUN = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")
B64_WHOLE = re.compile(r"[A-Za-z0-9+/\-_]{16,}={0,2}")
_CVV_NAME = re.compile(r"(?i)^(cvv2?|cvccvv2|cvcvv2|cc_cvv2|cvc)$")
MAX_DEPTH = 6


def _cvv_pattern(cvv2: str) -> re.Pattern:
    return re.compile(rf"(?i)(cvv2?|cvccvv2|cvc)\W{{0,6}}{cvv2}(?!\d)|['\"]{cvv2}['\"]")


def _card_hits(text: str, where: str) -> list[str]:
    hits = []
    for start, end in find_card_numbers(text):
        digits = re.sub(r"[^0-9]", "", text[start:end])
        hits.append(f"{where}: card number ...{digits[-4:]}")
    return hits


def _b64decode(text: str) -> bytes | None:
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _json(text: str) -> Any:
    stripped = text.strip()
    if not stripped or stripped[0] not in "[{":
        return None
    try:
        return json.loads(stripped)
    except ValueError:
        return None


def scan_text(text: str, *, cvv2: str, where: str, _depth: int = 0) -> list[str]:
    """Card numbers and the CVV2 in ``text``: walked as data when it is JSON, else read as text (with its
    base64 runs decoded)."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "replace")
    data = _json(text)
    if data is not None:
        return scan_value(data, cvv2=cvv2, where=where, _depth=_depth + 1)
    hits = _card_hits(text, where)
    if _cvv_pattern(cvv2).search(text):
        hits.append(f"{where}: cvv2")
    if _depth < MAX_DEPTH:
        for run in B64_RUN.findall(text):
            decoded = _b64decode(run)
            if decoded:
                hits += scan_text(decoded.decode("utf-8", "replace"), cvv2=cvv2, where=f"{where} (base64)",
                                  _depth=_depth + 1)
    return hits


def scan_value(value: Any, *, cvv2: str, where: str, field: str = "", _depth: int = 0) -> list[str]:
    """Card numbers and the CVV2 in decoded data (JSON-like), numbers included."""
    here = f"{where} {field}".rstrip()
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, dict):
        hits = []
        for key, item in value.items():
            key = str(key)
            hits += _card_hits(key, f"{here} (key)")
            path = f"{field}.{key}" if field else key
            if _CVV_NAME.match(key) and not isinstance(item, str) and str(item) == cvv2:
                hits.append(f"{where} {path}: cvv2")  # (a string is checked as itself, below)
            hits += scan_value(item, cvv2=cvv2, where=where, field=path, _depth=_depth)
        return hits
    if isinstance(value, (list, tuple)):
        hits = []
        for i, item in enumerate(value):
            hits += scan_value(item, cvv2=cvv2, where=where, field=f"{field}[{i}]", _depth=_depth)
        return hits
    if isinstance(value, int):
        return _card_hits(str(value), here)
    if isinstance(value, float):
        return _card_hits(repr(value), here)
    text = str(value)
    hits = []
    if text == cvv2:
        hits.append(f"{here}: cvv2")
    depth_for_text = _depth + 1
    if _depth < MAX_DEPTH:
        data = _json(text)
        if data is not None:
            return hits + scan_value(data, cvv2=cvv2, where=f"{here} (json)", _depth=_depth + 1)
        if B64_WHOLE.fullmatch(text):
            decoded = _b64decode(text)
            if decoded:
                try:
                    hits += scan_text(decoded.decode("utf-8"), cvv2=cvv2, where=f"{here} (base64)", _depth=_depth + 1)
                    depth_for_text = MAX_DEPTH  # decoded already: read the text itself, not its base64 again
                except UnicodeDecodeError:
                    pass  # binary (a Fernet token's ciphertext): not text
    return hits + scan_text(text, cvv2=cvv2, where=here, _depth=depth_for_text)


# ---- Redis -------------------------------------------------------------------------------------------

def _s(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


def redis_items(client) -> Iterator[tuple[str, str]]:
    """(where, text) for every key name and every value of the client's database (stream entry ids and
    sorted-set scores aside: Redis makes those numbers)."""
    for key in client.scan_iter(count=1000):
        name = _s(key)
        yield f"redis key name {name!r}", name
        kind = _s(client.type(key))
        where = f"redis {kind} {name}"
        if kind == "string":
            yield where, _s(client.get(key))
        elif kind == "hash":
            for field, value in client.hgetall(key).items():
                yield f"{where} [{_s(field)}]", _s(field)
                yield f"{where} [{_s(field)}]", _s(value)
        elif kind == "list":  # (no index in the label: a push moves every item)
            for item in client.lrange(key, 0, -1):
                yield where, _s(item)
        elif kind == "set":
            for member in client.smembers(key):
                yield where, _s(member)
        elif kind == "zset":
            for member in client.zrange(key, 0, -1):
                yield where, _s(member)
        elif kind == "stream":
            for entry_id, fields in client.xrange(key):
                for field, value in fields.items():
                    yield f"{where} {_s(entry_id)} [{_s(field)}]", _s(field)
                    yield f"{where} {_s(entry_id)} [{_s(field)}]", _s(value)


def scan_redis(client, *, cvv2: str) -> list[str]:
    hits = []
    for where, text in redis_items(client):
        hits += scan_text(text, cvv2=cvv2, where=where)
    return hits


# ---- the AOF -----------------------------------------------------------------------------------------

def resp_commands(data: bytes) -> Iterator[list[bytes]]:
    """The commands of an AOF (RESP arrays of bulk strings); anything else (an RDB preamble) is skipped."""
    i, n = 0, len(data)
    while i < n:
        if data[i:i + 1] != b"*":
            j = data.find(b"\n*", i)
            if j < 0:
                return
            i = j + 1
            continue
        try:
            end = data.index(b"\r\n", i)
            count = int(data[i + 1:end])
            i = end + 2
            args = []
            for _ in range(count):
                if data[i:i + 1] != b"$":
                    raise ValueError("not a bulk string")
                end = data.index(b"\r\n", i)
                length = int(data[i + 1:end])
                args.append(data[end + 2:end + 2 + length])
                i = end + 2 + length + 2
        except ValueError:
            i += 1
            continue
        yield args


_XADD_OPTIONS = {b"NOMKSTREAM"}
_TRIM = {b"MAXLEN", b"MINID"}


def _data_arguments(args: list[bytes]) -> list[bytes]:
    """The arguments of one command that carry data (names and values), not the numbers Redis writes."""
    name, rest = args[0].upper(), args[1:]
    if name in (b"SELECT", b"MULTI", b"EXEC", b"PING"):
        return []
    if name == b"SET":  # SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]
        return rest[:2]
    if name in (b"SETEX", b"PSETEX"):
        return [rest[0], rest[2]] if len(rest) > 2 else rest[:1]
    if name in (b"EXPIRE", b"PEXPIRE", b"EXPIREAT", b"PEXPIREAT", b"PERSIST", b"XTRIM", b"XDEL", b"XSETID",
                b"XACK", b"INCRBY", b"INCRBYFLOAT", b"DECRBY"):
        return rest[:1]
    if name in (b"HINCRBY", b"HINCRBYFLOAT", b"ZINCRBY"):
        return [rest[0], rest[2]] if name == b"ZINCRBY" and len(rest) > 2 else rest[:2]
    if name == b"XADD":  # XADD key [NOMKSTREAM] [MAXLEN|MINID [=|~] threshold [LIMIT count]] id field value ...
        i = 1
        while i < len(rest):
            word = rest[i].upper()
            if word in _XADD_OPTIONS:
                i += 1
            elif word in _TRIM:
                i += 2 if rest[i + 1:i + 2] not in ([b"="], [b"~"]) else 3
            elif word == b"LIMIT":
                i += 2
            else:
                break
        return rest[:1] + rest[i + 1:]  # the key, then the fields and values (the entry id skipped)
    if name == b"ZADD":  # ZADD key [NX|XX] [GT|LT] [CH] [INCR] score member ...
        i = 1
        while i < len(rest) and rest[i].upper() in (b"NX", b"XX", b"GT", b"LT", b"CH", b"INCR"):
            i += 1
        return rest[:1] + rest[i + 1::2]
    return rest


def scan_aof(path, *, cvv2: str, db: int | None = None) -> list[str]:
    """Every data-carrying argument of every command in an AOF file (only those run in ``db`` if given)."""
    path = Path(path)
    hits, current = [], 0
    for n, args in enumerate(resp_commands(path.read_bytes())):
        if not args:
            continue
        if args[0].upper() == b"SELECT" and len(args) > 1:
            current = int(args[1])
            continue
        if db is not None and current != db:
            continue
        for arg in _data_arguments(args):
            hits += scan_text(arg.decode("utf-8", "replace"), cvv2=cvv2,
                              where=f"{path.name} command #{n} {_s(args[0]).upper()}")
    return hits


def aof_files(client) -> list[Path]:
    """The AOF files of the server behind ``client``, when it has AOF on and they can be read here."""
    try:
        if _s(client.config_get("appendonly").get("appendonly", "no")) != "yes":
            return []
        directory = Path(_s(client.config_get("dir")["dir"]))
        subdir = _s(client.config_get("appenddirname").get("appenddirname", "") or "")
    except Exception:  # no CONFIG (a managed Redis): nothing readable here
        return []
    found = [p for p in (directory / subdir).glob("*") if p.is_file() and ".aof" in p.name] if subdir else []
    found += [p for p in directory.glob("*.aof") if p.is_file()]
    return [p for p in found if _readable(p)]


def _readable(path: Path) -> bool:
    try:
        with open(path, "rb"):
            return True
    except OSError:
        return False


def scan_redis_aof(client, *, cvv2: str) -> tuple[list[str], list[Path]]:
    """The AOF of the server behind ``client`` (its database only), if it has one: (hits, files read)."""
    db = int(client.connection_pool.connection_kwargs.get("db", 0) or 0)
    files = aof_files(client)
    hits = []
    for path in files:
        hits += scan_aof(path, cvv2=cvv2, db=db) if not path.name.endswith(".rdb") else _scan_raw(path, cvv2)
    return hits, files


# ---- files ------------------------------------------------------------------------------------------

def _scan_raw(path: Path, cvv2: str) -> list[str]:
    return scan_text(path.read_bytes().decode("latin-1"), cvv2=cvv2, where=f"{path} (raw)")


def scan_files(paths, *, cvv2: str) -> list[str]:
    """Logs (text), AOF files (RESP commands) and RDB files (raw bytes)."""
    hits = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        if path.name.endswith(".rdb"):
            hits += _scan_raw(path, cvv2)
        elif path.name.endswith(".aof"):
            hits += scan_aof(path, cvv2=cvv2)
        else:
            hits += scan_text(path.read_text("utf-8", "replace"), cvv2=cvv2, where=str(path))
    return hits


def scan_metrics(text: str, *, cvv2: str, where: str) -> list[str]:
    """Card data in a Prometheus scrape: the text as it is (names, labels, comments), and each sample's value again
    when it is a whole number, written out (a card number kept as a gauge reads ``4.111111111111111e+15``)."""
    hits = scan_text(text, cvv2=cvv2, where=where)
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("#"):
            continue
        try:
            number = float(line.rpartition(" ")[2])
        except ValueError:
            continue
        if number.is_integer() and abs(number) >= 1e12:
            hits += scan_text(str(int(number)), cvv2=cvv2, where=f"{where} line {n} (value)")
    return hits
