"""What the console's pages share with its app (worker/console/app.py builds the app, worker/console/views.py adds
the pages): the lists, the operator guard, the app's extensions, the day a page asks for."""
from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, date, datetime
from functools import wraps
from typing import Any

from flask import abort, g, request

from worker.console.users import User
from worker.payments import reconciliation

log = logging.getLogger("payments.console")

PAGE_SIZE = 50
#: Pages past this are not served (a list that long is searched, not paged).
MAX_PAGE = 1000
#: The lists the console pages through: title, and how (a store index, or stale auths).
LISTS = {
    "unknown": ("UNKNOWN: money in doubt", "unknown"),
    "needs-human": ("Needs a human", "needs_human"),
    "retrying": ("RETRYING", "retrying"),
    "in-flight": ("Not final yet", "non_final"),
    "stale-auths": ("Stale authorizations (older than STALE_AUTH_AGE)", None),
}


def operator_action(view: Callable[..., Any]) -> Callable[..., Any]:
    """Operators only (403 otherwise), rate-limited per user (429), logged with who acted."""

    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        user: User = g.user
        if not user.may_act:
            log.warning("console: %s (viewer) refused %s", user.name, request.path)
            abort(403)
        if not ext()["limits"].allow_action(user.name):
            abort(429)
        return view(*args, **kwargs)

    return guarded


def ext() -> dict[str, Any]:
    from flask import current_app

    found: dict[str, Any] = current_app.extensions["payments"]  # set by create_app
    return found


def parse_day(text: str) -> date | None:
    """The reconciliation's day words (``YYYY-MM-DD``, ``today``, ``yesterday``); empty means today; None if neither."""
    if not (text or "").strip():
        return datetime.now(UTC).date()
    try:
        return reconciliation.parse_day(text)
    except reconciliation.NotADay:
        return None
