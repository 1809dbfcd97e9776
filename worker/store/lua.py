"""The store's Lua scripts, package data in ``worker/store/scripts/``."""
from __future__ import annotations

from importlib import resources

HISTORY_CAP = 1000
AUDIT_MAXLEN = 1_000_000


def script(name: str) -> str:
    return (resources.files("worker.store") / "scripts" / f"{name}.lua").read_text()


def record_script(name: str) -> str:
    """A record script: ``common.lua`` (keys, history, audit, indexes) followed by the script's own body."""
    common = script("common").replace("__HISTORY_CAP__", str(HISTORY_CAP)).replace(
        "__AUDIT_MAXLEN__", str(AUDIT_MAXLEN))
    return common + "\n" + script(name)
