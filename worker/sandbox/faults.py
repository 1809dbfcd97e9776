"""Fault injection for the sandbox.

Configuration (JSON; ``--faults``, env ``SANDBOX_FAULTS``, ``POST /sandbox/faults``)::

    {"latency_ms": 0, "jitter_ms": 0,
     "probabilities": {"refuse": 0.05, "http_502": 0.05},
     "sequence": ["ok", "drop_after_commit"],
     "endpoints": ["bp10emu"],
     "slow_seconds": 5, "late_commit_seconds": 5, "seed": 1}

Every key is optional. For each request on one of ``endpoints`` (default
``["bp10emu"]``; names: ``bp10emu``, ``stq``, ``wlcatch``, ``bpdailyreport2``, or ``"*"`` for all):
the next ``sequence`` item is consumed if any is left ("ok" = no fault), otherwise one
random draw picks at most one kind from ``probabilities`` (their sum must be <= 1).
``latency_ms`` + uniform(0, ``jitter_ms``) is slept before every such request.
The control API (``/sandbox/...``) is never subject to faults.

Kinds:

* before processing, nothing recorded: ``refuse`` (RST without a reply), ``http_502``, ``http_503``;
* after processing, the transaction is recorded: ``drop_after_commit`` (RST), ``slow_after_commit``
  (the reply is written ``slow_seconds`` late), ``http_500_after_commit``, ``garbled``, ``bad_stamp``
  (the report carries no stamp: answered as is), ``truncated`` (about half of the reply is written, then an
  RST: a report cut mid-row, its chunked body never finished);
* ``late_commit``: the request is read, then HELD ``late_commit_seconds`` before it is processed at
  all (validated, duplicate-checked, recorded, timestamped); then it is committed whatever the
  client did meanwhile (a client with a shorter read timeout has usually disconnected) and the
  reply is written if the connection still takes it. Until the commit, ``stq`` and the ledger do
  not see it: a request queued inside the gateway. ``POST /sandbox/reset`` DROPS every held commit
  (it never commits; a still-connected client gets an RST). On ``stq``/``wlcatch`` it is a plain
  hold before answering.
"""

from __future__ import annotations

import json
import random
import threading
from typing import Any

BEFORE_KINDS = ("refuse", "http_502", "http_503")
AFTER_KINDS = ("drop_after_commit", "slow_after_commit", "http_500_after_commit", "garbled", "bad_stamp", "truncated")
HOLD_KINDS = ("late_commit",)
KINDS = BEFORE_KINDS + AFTER_KINDS + HOLD_KINDS
DEFAULT_SLOW_SECONDS = 5.0
DEFAULT_LATE_COMMIT_SECONDS = 5.0
ENDPOINTS = ("bp10emu", "stq", "wlcatch", "bpdailyreport2")


class FaultConfigError(ValueError):
    pass


_CONFIG_KEYS = frozenset({"latency_ms", "jitter_ms", "probabilities", "sequence", "endpoints", "slow_seconds",
                          "late_commit_seconds", "seed"})


def parse_config(raw: Any) -> dict[str, Any]:
    """Validate and normalise a fault configuration (dict or JSON text)."""
    config = _config_object(raw)

    def number(key: str, default: float) -> float:
        value = config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise FaultConfigError(f"faults: {key} must be a number >= 0")
        return float(value)

    probs = _probabilities(config.get("probabilities") or {})
    seq = config.get("sequence") or []
    if not isinstance(seq, list):
        raise FaultConfigError("faults: sequence must be a list")
    for item in seq:
        if item != "ok" and item not in KINDS:
            raise FaultConfigError(f"faults: unknown sequence item {item!r}")
    endpoints = config.get("endpoints") or ["bp10emu"]
    if endpoints == "*" or endpoints == ["*"]:
        endpoints = list(ENDPOINTS)
    if not isinstance(endpoints, list) or any(e not in ENDPOINTS for e in endpoints):
        raise FaultConfigError(f"faults: endpoints must be a list drawn from {ENDPOINTS}")
    seed = config.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise FaultConfigError("faults: seed must be an integer")
    return {
        "latency_ms": number("latency_ms", 0), "jitter_ms": number("jitter_ms", 0),
        "probabilities": {k: float(v) for k, v in probs.items() if v},
        "sequence": list(seq), "endpoints": list(endpoints),
        "slow_seconds": number("slow_seconds", DEFAULT_SLOW_SECONDS),
        "late_commit_seconds": number("late_commit_seconds", DEFAULT_LATE_COMMIT_SECONDS),
        "seed": seed,
    }


def _config_object(raw: Any) -> dict[str, Any]:
    """The configuration as a dict of known keys (JSON text is parsed; nothing is an empty configuration)."""
    if raw is None or raw == "":
        raw = {}
    if isinstance(raw, (str, bytes)):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise FaultConfigError(f"faults: not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise FaultConfigError("faults: expected a JSON object")
    unknown = set(raw) - _CONFIG_KEYS
    if unknown:
        raise FaultConfigError(f"faults: unknown keys {sorted(unknown)}")
    return raw


def _probabilities(probs: Any) -> dict[str, Any]:
    if not isinstance(probs, dict):
        raise FaultConfigError("faults: probabilities must be an object")
    for kind, p in probs.items():
        if kind not in KINDS:
            raise FaultConfigError(f"faults: unknown kind {kind!r} (known: {', '.join(KINDS)})")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise FaultConfigError(f"faults: probability of {kind} must be within 0..1")
    if sum(probs.values()) > 1.0000001:
        raise FaultConfigError("faults: probabilities add up to more than 1")
    return probs


class Faults:
    """Current fault configuration plus the counts of injected faults. Thread-safe."""

    def __init__(self, config: Any = None):
        self.lock = threading.Lock()
        self.injected: dict[str, int] = {}
        self.configure(config)

    def configure(self, config: Any) -> dict[str, Any]:
        cfg = parse_config(config)
        with self.lock:
            self.config = cfg
            self._seq = list(cfg["sequence"])
            self._rng = random.Random(cfg["seed"])
            self._endpoints = frozenset(cfg["endpoints"])
            self._active = bool(cfg["latency_ms"] or cfg["jitter_ms"] or cfg["probabilities"] or self._seq)
        return cfg

    def reset(self) -> None:
        self.configure({})
        with self.lock:
            self.injected.clear()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return dict(self.config, sequence_remaining=list(self._seq))

    def counts(self) -> dict[str, int]:
        with self.lock:
            return dict(self.injected)

    def decide(self, endpoint: str) -> tuple[str | None, float, float]:
        """(fault kind or None, delay seconds before processing, the kind's own seconds).

        The last item is ``slow_seconds`` for ``slow_after_commit``, ``late_commit_seconds``
        for ``late_commit``, else 0.
        """
        if not self._active or endpoint not in self._endpoints:
            return None, 0.0, 0.0
        with self.lock:
            cfg = self.config
            delay = cfg["latency_ms"] / 1000.0
            if cfg["jitter_ms"]:
                delay += self._rng.uniform(0, cfg["jitter_ms"]) / 1000.0
            kind: str | None = None
            if self._seq:
                item = self._seq.pop(0)
                kind = None if item == "ok" else item
            elif cfg["probabilities"]:
                r = self._rng.random()
                acc = 0.0
                for k, p in cfg["probabilities"].items():
                    acc += p
                    if r < acc:
                        kind = k
                        break
            if kind is not None:
                self.injected[kind] = self.injected.get(kind, 0) + 1
            seconds = {"slow_after_commit": cfg["slow_seconds"],
                       "late_commit": cfg["late_commit_seconds"]}.get(kind, 0.0) if kind is not None else 0.0
            return kind, delay, seconds
