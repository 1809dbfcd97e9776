"""BluePay 2.0-compatible sandbox gateway (see ``worker.sandbox.server`` for what it does and does not imitate).

Independent of ``worker.gateway`` on purpose; imports nothing from Celery so it starts fast.
"""

from .server import SandboxServer, main, serve

__all__ = ["SandboxServer", "main", "serve"]
