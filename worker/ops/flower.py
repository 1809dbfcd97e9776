"""Flower, locked wherever it starts.

Flower reads ``flowerconfig.py`` from its working directory only, so what locks it must come with the package:
whenever the Celery app (``worker.app``) is loaded by Flower's command (``celery -A worker flower`` or
``python -m flower -A worker``, from any directory) or by ``payments flower``, :func:`install` replaces the
application class Flower's command builds with :class:`LockedFlower`, which, after every option source (command
line, ``FLOWER_*`` environment, a config file) has been read:

* refuses to start without authentication: ``FLOWER_BASIC_AUTH`` / ``--basic-auth`` (``user:password``, both
  non-empty, comma-separated for several) or Flower's OAuth (``FLOWER_AUTH`` with ``FLOWER_AUTH_PROVIDER``);
* runs read-only whatever the options say: Flower then answers 403 to sending, applying, aborting, revoking or
  terminating tasks, rate limits, timeouts and every worker pool/queue/shutdown control. Its send-task API would
  publish a charge from a browser, and terminating a payment mid-call would leave its outcome unknown: use
  ``celery control`` or ``payments enqueue``;
* shows a payment's own status where operators look: the tasks table gets a Result column, a finished payment
  task's state reads as its outcome's status (``DECLINED``, ``ERROR``, ``UNKNOWN``...; an approved one stays
  ``SUCCESS``) on the tasks page and the task's page, and its result starts with a one-line summary. Only the
  pages change: the API (``/api/tasks``, ``/api/task/info``) keeps Celery's own state. Everything shown comes
  from the task events, whose arguments and results are masked (``xxxxxxxxxxxx1111``, never CVV2).
"""
from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable
from typing import Any

REFUSAL = ("flower: refusing to start without authentication: set FLOWER_BASIC_AUTH=user:password "
           "(or Flower's OAuth: FLOWER_AUTH with FLOWER_AUTH_PROVIDER)")

#: Defaults set before Flower reads its options, so an operator can still change them.
DEFAULTS: dict[str, Any] = {
    "max_tasks": 10000,  # a bounded number of tasks in Flower's memory
    "tasks_columns": "name,uuid,state,result,received,runtime,worker",
}

_STATUS = re.compile(r"'status': '([A-Z_]+)'")
_SUMMARY_FIELDS = ("masked_account", "trans_id", "error_class", "message")
_FLAGS = (("not_charged", "not charged"), ("needs_human", "needs a human"), ("refund_needed", "refund needed"))


def installed() -> bool:
    """Whether Flower's command would build a :class:`LockedFlower` now."""
    command = sys.modules.get("flower.command")
    return command is not None and getattr(command.Flower, "locked", False)


def install() -> None:
    """Make Flower's command build a :class:`LockedFlower` and set the package's defaults. Idempotent; called on
    building of the default app whenever Flower's command module is loaded (``worker.broker.app.default_app``)
    and by ``payments flower``."""
    from flower import command
    from tornado.options import options

    if getattr(command.Flower, "locked", False):
        return
    command.Flower = _locked_class(command.Flower)
    for name, value in DEFAULTS.items():
        setattr(options, name, value)
    options.format_task = show_payment_status


def _locked_class(base: Any) -> type:
    class LockedFlower(base):
        """Flower that will not serve without authentication and never runs tasks or controls workers."""

        locked = True

        def __init__(self, options: Any = None, *args: Any, **kwargs: Any) -> None:
            if options is None:
                from flower.options import default_options

                options = default_options
            lock(options)
            super().__init__(options, *args, **kwargs)

    return LockedFlower


def lock(options: Any) -> None:
    """Refuse (SystemExit naming the setting) unless ``options`` authenticate every request; force read-only."""
    if not (basic_auth_ok(options.basic_auth) or (options.auth and options.auth_provider)):
        raise SystemExit(REFUSAL)
    options.read_only = True


def basic_auth_ok(entries: Iterable[str] | None) -> bool:
    """Every entry is ``user:password`` with both parts non-empty (an empty FLOWER_BASIC_AUTH is no auth: Flower
    would take the empty credential ``""`` as valid)."""
    entries = list(entries or [])
    if not entries:
        return False
    for entry in entries:
        user, sep, password = str(entry).partition(":")
        if not (sep and user.strip() and password):
            return False
    return True


def payment_status(result: str | None) -> str | None:
    """The ``status`` of a payment outcome from its repr (what task events carry), or None."""
    match = _STATUS.search(result or "")
    return match.group(1) if match else None


def summary(result: str) -> str:
    """One line: status, operation and amount, masked card, trans id, message, and what needs a person."""
    status = payment_status(result) or "?"
    try:
        outcome = ast.literal_eval(result)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        outcome = None  # cut by Celery's resultrepr_maxsize: the status alone
    if not isinstance(outcome, dict):
        return status
    parts = [status, " ".join(str(outcome.get(k) or "") for k in ("operation", "amount")).strip()]
    parts += [str(outcome[k]) for k in _SUMMARY_FIELDS if outcome.get(k)]
    parts += [note for flag, note in _FLAGS if str(outcome.get(flag) or "") in ("1", "True")]
    return " · ".join(part for part in parts if part)


def show_payment_status(task: Any) -> Any:
    """Flower's ``format_task`` (a copy of an events-state task, for the pages only): a finished payment task
    shows its outcome's status as its state (unless approved) and a summary before its result."""
    if not str(getattr(task, "name", "") or "").startswith("payments.") or task.state != "SUCCESS":
        return task
    status = payment_status(task.result)
    if status is None:
        return task
    task.result = f"{summary(task.result)}  {task.result}"
    if status != "APPROVED":
        task.state = status
    return task
