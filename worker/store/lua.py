"""The store's Lua, package data in ``worker/store/scripts/``, loaded as ONE Redis Functions library.

Every script becomes a function of the library ``payments_<version>`` (``FUNCTION LOAD`` once per server, then
``FCALL``): ``common.lua`` (keys, clock, history, audit, indexes, reflection) is run once when the library loads,
not on every call as a script preamble (~20 µs of Redis CPU per call before). The version is a hash of the code, so
workers of two releases never call each other's functions during a rolling deploy (older libraries stay until an
operator drops them: ``FUNCTION DELETE``; each is a few kB).

A server that has not got the library (a restarted Redis without persistence, a new primary that missed it) answers
``Function not found``; :class:`Functions` then loads it and calls again: nothing ran, so the retry is safe and no
payment fails. ``FUNCTION LOAD`` is replicated and persisted like a write.
"""
from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

import redis

from worker.states import TASK_STATUSES
from worker.store.outcomes import CONTRACT_FIELDS, OPTIONAL_PUBLIC_FIELDS

__all__ = ["TEST_CLOCK_KEY", "HISTORY_CAP", "AUDIT_MAXLEN", "RECORD_FUNCTIONS", "PLAIN_FUNCTIONS", "script",
           "library", "Functions", "Function", "is_missing_function"]

HISTORY_CAP = 1000
AUDIT_MAXLEN = 1_000_000

#: Functions over one payment record: common.lua's keys (``StoreKeys.for_record``) are bound before the body runs.
RECORD_FUNCTIONS = ("claim", "journal", "transition", "reflect", "resolve")
#: Functions with keys of their own (each file says which).
PLAIN_FUNCTIONS = ("fence", "renew", "forget", "remember", "outbox_stamp", "outbox_prune", "outbox_queued",
                   "release_lock")


def script(name: str) -> str:
    return (resources.files("worker.store") / "scripts" / f"{name}.lua").read_text()


def _outcome_function() -> str:
    """common.lua's ``outcome(rec)``: outcomes.py public_outcome in Lua, one table constructor naming every field
    (an optional one as nil: the table is made at its final size, then the present ones are set)."""
    contract = [f"{f} = tonumber(rec.attempts or '0') or 0" if f == "attempts" else f"{f} = rec.{f} or ''"
                for f in CONTRACT_FIELDS]
    optional = [f"{f} = nil" for f in OPTIONAL_PUBLIC_FIELDS]
    sets = [f"  v = rec.{f} if v and v ~= '' then o.{f} = v end" for f in OPTIONAL_PUBLIC_FIELDS]
    return "\n".join(["local function outcome(rec)", f"  local o = {{{', '.join(contract + optional)}}}",
                      "  local v", *sets, "  return o", "end"])


def _body(name: str) -> str:
    # A script's body runs as a Lua function of (KEYS, ARGV): its text is unchanged, its top-level ``return`` too.
    return f"local function fn_{name}(KEYS, ARGV)\n{script(name)}\nend\n"


#: The tests' clock (tests/support/redis_clock.py): in the library built with ``test_clock``, every function reads
#: Redis time from this key (microseconds) when it is set, so a test moves the store's one clock as it moved the
#: in-memory fake's. Production's library reads ``TIME`` only (the block between the markers in common.lua).
TEST_CLOCK_KEY = "payments-test:clock-us"
_TEST_CLOCK = f"""  local fixed = redis.call('GET', '{TEST_CLOCK_KEY}')
  if not fixed then return redis.call('TIME') end
  local us = tonumber(fixed)
  return {{string.format('%d', math.floor(us / 1000000)), string.format('%d', us % 1000000)}}"""


@cache
def library(test_clock: bool = False) -> tuple[str, str]:
    """``(code, version)`` of the library: common.lua once, then every script as a function. ``test_clock``: the
    tests' build (:data:`TEST_CLOCK_KEY`), under another name."""
    common = script("common")
    if test_clock:
        start, end = common.index("  --<clock>"), common.index("  --</clock>")
        common = common[:start] + _TEST_CLOCK + "\n" + common[end:]
    for name, value in (("__HISTORY_CAP__", str(HISTORY_CAP)), ("__AUDIT_MAXLEN__", str(AUDIT_MAXLEN)),
                        ("__OUTCOME_FUNCTION__", _outcome_function()),
                        ("__TASK_STATUSES__", ", ".join(f"{s.value} = true" for s in sorted(TASK_STATUSES)))):
        common = common.replace(name, value)
    parts = [common, *(_body(n) for n in RECORD_FUNCTIONS + PLAIN_FUNCTIONS)]
    for name in RECORD_FUNCTIONS:
        parts.append(f"local function record_{name}(keys, args) bind(keys) return fn_{name}(keys, args) end\n")
    body = "\n".join(parts)
    version = ("test" if test_clock else "") + hashlib.sha1(body.encode()).hexdigest()[:12]
    registrations = [f"redis.register_function('{name}_{version}', record_{name})\n" for name in RECORD_FUNCTIONS]
    registrations += [f"redis.register_function('{name}_{version}', fn_{name})\n" for name in PLAIN_FUNCTIONS]
    return f"#!lua name=payments_{version}\n{body}\n{''.join(registrations)}", version


def is_missing_function(exc: BaseException) -> bool:
    return isinstance(exc, redis.ResponseError) and "function not found" in str(exc).lower()


class Function:
    """One function of the library, called like redis-py's ``Script``: ``f(keys=[...], args=[...])``."""

    def __init__(self, functions: Functions, name: str) -> None:
        self.functions = functions
        self.name = f"{name}_{functions.version}"

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        return self.functions.call(lambda: self.functions.client.fcall(self.name, len(keys), *keys, *args))

    def queue(self, pipe: Any, keys: Sequence[Any], args: Sequence[Any]) -> None:
        """Add the call to a pipeline (run it through :meth:`Functions.call`, which loads the library if missing)."""
        pipe.fcall(self.name, len(keys), *keys, *args)


class Functions:
    """The library on one client: loaded when a call finds it missing, then called by name."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        # (a client the tests made with their clock: tests/support/redis_clock.py)
        self.code, self.version = library(test_clock=bool(getattr(client, "payments_test_clock", False)))
        self._lock = threading.Lock()

    def function(self, name: str) -> Function:
        if name not in RECORD_FUNCTIONS + PLAIN_FUNCTIONS:
            raise ValueError(f"no store function {name!r}")
        return Function(self, name)

    def load(self) -> None:
        with self._lock:
            # REPLACE: two processes loading at once both succeed (the same code under the same name).
            self.client.function_load(self.code, replace=True)

    def call(self, run: Any) -> Any:
        """``run()``; when the server has not got the library (restart, failover), load it and run again."""
        try:
            return run()
        except redis.ResponseError as exc:
            if not is_missing_function(exc):
                raise
        self.load()
        return run()
