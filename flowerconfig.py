"""Flower's configuration file (read from the working directory by ``celery -A worker flower``).

Flower must not run open: without FLOWER_BASIC_AUTH (``user:password``, comma-separated for
several) or an explicit ``--basic-auth``/``--auth`` option it refuses to start. Task arguments it shows are
the masked argsrepr/kwargsrepr set by PaymentTask; results are outcome dicts (masked account only).
"""
import os
import sys

_has_auth = bool(os.environ.get("FLOWER_BASIC_AUTH") or os.environ.get("FLOWER_AUTH")) or any(
    arg.startswith(("--basic_auth", "--basic-auth", "--auth")) for arg in sys.argv
)
if not _has_auth:
    raise SystemExit("flower: refusing to start without authentication: set FLOWER_BASIC_AUTH=user:password")

# Keep a bounded number of tasks in Flower's memory.
max_tasks = 10000
# Monitoring only: no task sending, revoking or pool control through Flower. Its send-task API publishes with
# Celery.send_task, which bypasses the sealing publish path (the card went to the broker, the events and
# Flower in clear); terminating a payment mid-call would leave its outcome unknown. Use `celery control`.
read_only = True
