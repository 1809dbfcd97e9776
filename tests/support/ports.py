"""Free TCP ports on 127.0.0.1, for servers a test starts and for addresses nothing listens on.

One implementation (``worker.processes.free_port``, which the benchmark uses too); tests import it from here.
"""
from __future__ import annotations

from worker.processes import free_port

__all__ = ["free_port", "closed_port"]


def closed_port() -> int:
    """A port nothing listens on: connecting to it is refused."""
    return free_port()
