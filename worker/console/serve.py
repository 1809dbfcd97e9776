"""Serving the console with waitress (a production WSGI server, pure Python, no reverse proxy needed to be safe)."""
from __future__ import annotations

import logging
from typing import Any

from worker.console.app import create_app
from worker.console.security import ConsoleConfig
from worker.console.users import Users, UsersError

log = logging.getLogger("payments.console")


def serve(svc: Any, *, host: str, port: int, threads: int = 8) -> int:
    import waitress

    config = ConsoleConfig.from_env()
    users = Users(config.env)
    try:
        known = users.all()
    except UsersError as exc:
        raise SystemExit(f"payments console: {exc}") from None
    if not known and not config.trusted_header:
        log.warning("console: no user yet: add one with `payments console adduser NAME operator`")
    app = create_app(svc, config=config, users=users)
    print(f"payments console on http://{host}:{port}/ ({len(known)} users; trusted proxy header "
          f"{config.trusted_header or 'off'})", flush=True)
    # Waitress does not trust X-Forwarded-* (trusted_proxy unset): the client address is the connection's.
    waitress.serve(app, host=host, port=port, threads=threads, ident="payments-console")
    return 0
