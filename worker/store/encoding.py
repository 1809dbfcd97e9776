"""How values are written to and read from Redis, and the card-number guard on every write."""
from __future__ import annotations

import json
from typing import Any

from worker.cards.numbers import contains_card_number
from worker.store.fields import CONTRACT_FIELDS


def looks_like_card_number(value: str, **_: object) -> bool:
    """What the store refuses to keep (the one rule: ``worker.cards.numbers``)."""
    return contains_card_number(value)


def check_no_pan(name: str, value: str) -> None:
    if contains_card_number(value):
        raise ValueError(f"refusing to store field {name!r}: its value looks like a card number")


def to_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def text(v: Any) -> str:
    """A Redis reply value as text (bytes from a client without decode_responses)."""
    return v.decode() if isinstance(v, (bytes, bytearray)) else str(v)


def typed(rec: dict[str, Any]) -> dict[str, Any]:
    """A record as read from its hash: ``attempts`` a number, the ``history`` field (JSON text) left out (read by
    :func:`history_of`), a contract field it does not hold '' (a claim writes no empty field: records.py)."""
    if isinstance(rec.get("history"), str):
        del rec["history"]
    if rec:
        for f in CONTRACT_FIELDS:
            rec.setdefault(f, "")
    if "attempts" in rec:
        try:
            rec["attempts"] = int(rec["attempts"])
        except (TypeError, ValueError):
            rec["attempts"] = 0
    return rec


def history_of(field: Any, old_list: list[Any] | None = None) -> list[dict[str, Any]]:
    """A record's history, oldest first: the list ``P hist:<id>`` a record written before 2026-12-08 began it in
    (``old_list``: its LRANGE), then its ``history`` field (a JSON list; scripts/common.lua with_history)."""
    entries = [json.loads(text(h)) for h in old_list or []]
    if field:
        entries += json.loads(text(field))
    return entries


def pairs_to_dict(flat: list[Any] | None) -> dict[str, Any] | None:
    if not flat:
        return None
    it = iter(flat)
    return typed({text(k): text(v) for k, v in zip(it, it, strict=False)})  # flat pairs: even length
