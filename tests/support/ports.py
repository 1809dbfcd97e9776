"""Free TCP ports on 127.0.0.1, for servers a test starts and for addresses nothing listens on.

One implementation (``worker.ops.processes.free_port``, which the benchmark uses too); tests import it from here.
"""
from __future__ import annotations

from worker.ops.processes import free_port

__all__ = ["free_port", "closed_port", "free_ports_in"]


def closed_port() -> int:
    """A port nothing listens on: connecting to it is refused."""
    return free_port()


def free_ports_in(first: int, last: int, count: int, *, taken: set[int] | None = None) -> list[int]:
    """``count`` ports in ``first..last`` that nothing listens on right now (servers a test starts on a port
    range of its own, e.g. the Sentinel group's), picked at random: two runs sharing the range rarely pick a port
    the other has free only for a moment (a node it killed and is about to start again)."""
    import random
    import socket

    found: list[int] = []
    candidates = list(range(first, last + 1))
    random.shuffle(candidates)
    for port in candidates:
        if port in (taken or set()):
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise RuntimeError(f"fewer than {count} free ports in {first}-{last}")
