"""Who holds an operation, and keeping that hold alive while a gateway call is in flight.

* :func:`new_owner` names a lease holder ``host:pid:random``; :func:`owner_is_dead` tells whether such a
  holder ran on this host and its process is gone (a killed prefork child), so its lease need not be waited out.
* :class:`LeaseKeeper` is the heartbeat: one daemon thread per process (a greenlet under gevent, whose
  monkey-patching turns threads into greenlets) renews the lease of every operation in flight every
  ``lease_seconds / 3``, in Redis server time, until the operation's wall-time budget is spent. A holder that
  dies, hangs past its budget or loses Redis stops renewing, and its lease lapses within ``lease_seconds``.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

log = logging.getLogger("payments.leases")

_HOST = socket.gethostname()


def new_owner() -> str:
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str) -> bool:
    """True when the lease holder ran on this host and its process is gone."""
    host, _, rest = (owner or "").partition(":")
    pid_text = rest.partition(":")[0]
    if host != _HOST or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Renews(Protocol):
    def renew(self, payment_id: str, owner: str, lease_seconds: float) -> bool: ...


class LeaseKeeper:
    """Renews registered leases until each one's deadline (``monotonic`` seconds)."""

    def __init__(self, store: Renews, lease_seconds: float, *, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.lease_seconds = float(lease_seconds)
        self.interval = max(0.05, self.lease_seconds / 3)
        self._clock = clock
        self._held: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    @contextmanager
    def holding(self, payment_id: str, owner: str, deadline: float) -> Iterator[None]:
        """Keep ``owner``'s lease on ``payment_id`` alive until the block ends or ``deadline`` passes."""
        key = (payment_id, owner)
        with self._lock:
            self._held[key] = deadline
        self._ensure_thread()
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(key, None)

    def renew_due(self) -> int:
        """One heartbeat: renew every lease whose deadline has not passed; returns how many were renewed."""
        now = self._clock()
        with self._lock:
            held = [(key, deadline) for key, deadline in self._held.items()]
        renewed = 0
        for (payment_id, owner), deadline in held:
            if now >= deadline:
                continue  # past its wall-time budget: let the lease lapse
            try:
                if self.store.renew(payment_id, owner, self.lease_seconds):
                    renewed += 1
            except Exception as exc:  # Redis away: the lease lapses, which is the safe direction
                log.warning("lease of %s not renewed: %s", payment_id, type(exc).__name__)
        return renewed

    def _ensure_thread(self) -> None:
        pid = os.getpid()
        if self._thread is not None and self._pid == pid and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._pid == pid and self._thread.is_alive():
                return
            self._pid = pid  # a forked child starts its own
            self._thread = threading.Thread(target=self._run, name="payments-lease-keeper", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self.renew_due()
