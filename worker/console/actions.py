"""Who did what in the console: every action (resolve, sweep one, reconcile a day), refused or done, kept in a Redis
stream beside the store's records, so that a payment's page and the actions page name who acted, when and with what
result (a resolution is also in the record's history and the audit stream, by ``payments resolve``'s own script).

Key (``P`` is the store's prefix)::

    P console:actions   stream  {at, who, action, target, result, ok}; XADD MAXLEN ~ 100,000
"""
from __future__ import annotations

from typing import Any

from worker.cards.numbers import mask_text
from worker.store.encoding import check_no_pan, text

MAX_KEPT = 100_000


def key(store: Any) -> str:
    return f"{store.prefix}console:actions"


def record(store: Any, *, who: str, action: str, target: str, result: str, ok: bool) -> None:
    """Keep one action; ``at`` is Redis time (the one clock). A card-like value is masked, never kept."""
    fields = {"who": who, "action": action, "target": mask_text(target)[:200], "result": mask_text(result)[:500],
              "ok": "1" if ok else "0"}
    for name, value in fields.items():
        check_no_pan(name, value)
    fields["at"] = repr(store.now())
    store.redis.xadd(key(store), fields, maxlen=MAX_KEPT, approximate=True)


def recent(store: Any, *, count: int = 100, target: str | None = None, scan: int = 5000) -> list[dict[str, Any]]:
    """The newest actions first (``target``: only those on that payment or day, among the newest ``scan``)."""
    entries = store.redis.xrevrange(key(store), max="+", min="-", count=scan if target else count)
    found = []
    for _eid, data in entries or []:
        item = {text(k): text(v) for k, v in (data or {}).items()}
        if target is None or item.get("target") == target:
            found.append(item)
        if len(found) >= count:
            break
    return found
