"""The operator console (Flask): find a payment, read its story, resolve what needs a human (docs/console.md).

Every page needs a login but ``/healthz``; only operators act, every form carries a CSRF token (Flask-WTF), actions
are rate-limited and name who did them. Whatever a page shows passes through the card rule's mask
(``worker.cards.numbers.mask_text``, the templates' ``finalize``), so no card number can be rendered even if one
were stored. Reads and actions go through the code the CLI uses (lookup, decisions, sweep, status).
"""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import redis
from flask import Flask, flash, g, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFError, CSRFProtect, generate_csrf
from markupsafe import Markup

from worker.cards.numbers import mask_text
from worker.console.common import LISTS, PAGE_SIZE, ext, operator_action, parse_day
from worker.console.security import HEADERS, ConsoleConfig, RateLimits
from worker.console.users import User, Users, UsersError

log = logging.getLogger("payments.console")



def _mask(value: Any) -> Any:
    """The templates' finalize: every value shown is masked by the card rule (Markup the app built is kept)."""
    if value is None:
        return ""
    if isinstance(value, Markup):
        return value
    return mask_text(str(value))


def create_app(svc: Any, *, config: ConsoleConfig | None = None, celery_app: Any = None,
               users: Users | None = None) -> Flask:
    config = config or ConsoleConfig.from_env()
    users = users or Users(config.env or None)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=config.secret_key,
        SESSION_COOKIE_NAME="payments_console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=config.secure_cookies,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=config.session_hours),
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    app.jinja_env.finalize = _mask
    CSRFProtect(app)
    limits = RateLimits(config.action_rate, config.login_rate)
    app.extensions["payments"] = {"svc": svc, "config": config, "users": users, "limits": limits,
                                  "celery": celery_app}

    @app.template_global()
    def csrf_field() -> Markup:
        token: str = generate_csrf()
        return Markup('<input type="hidden" name="csrf_token" value="%s">') % token

    @app.template_filter("when")
    def _when(epoch: Any) -> str:
        from worker.console.story import when

        return when(epoch)

    @app.after_request
    def _headers(response: Any) -> Any:
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    _register_error_pages(app)

    @app.before_request
    def _who() -> Any:
        g.user = current_user(config, users)
        if request.endpoint in ("healthz", "login", "static") or g.user is not None:
            return None
        return redirect(url_for("login", next=request.full_path if request.method == "GET" else None))

    from worker.console import views

    views.register(app)
    return app


def _csrf(exc: CSRFError) -> Any:
    return render_template("error.html", title="Refused", message=f"refused: {exc.description} "
                           "(reload the page and try again)"), 400


def _forbidden(_exc: Any) -> Any:
    return render_template("error.html", title="Not allowed",
                           message="refused: only operators may act; you are logged in as a viewer"), 403


def _missing(_exc: Any) -> Any:
    return render_template("error.html", title="Not found", message="nothing here"), 404


def _limited(_exc: Any) -> Any:
    return render_template("error.html", title="Too many", message="too many attempts: wait a minute"), 429


def _redis_down(exc: redis.RedisError) -> Any:
    log.warning("console: Redis: %s", type(exc).__name__)
    return render_template("error.html", title="Redis unreachable",
                           message="Redis cannot be reached now: nothing was read or changed; try again"), 503


def _users_broken(exc: UsersError) -> Any:
    log.error("console: users: %s", exc)
    return render_template("error.html", title="Users unreadable",
                           message="the console's users cannot be read: see the console's log"), 503


def _register_error_pages(app: Flask) -> None:
    """Every refusal and failure as a page of its own (never a traceback, never a card number)."""
    app.register_error_handler(CSRFError, _csrf)
    app.register_error_handler(403, _forbidden)
    app.register_error_handler(404, _missing)
    app.register_error_handler(429, _limited)
    app.register_error_handler(redis.RedisError, _redis_down)
    app.register_error_handler(UsersError, _users_broken)


def current_user(config: ConsoleConfig, users: Users) -> User | None:
    """The proxy's user (trusted header mode, from a trusted address), else the session's; the role is read again
    from the users (a removed user is logged out; in proxy mode an unlisted user is a viewer)."""
    if config.proxy_trusted(request.remote_addr):
        proxied = (request.headers.get(config.trusted_header) or "").strip()
        if proxied:
            return User(proxied, users.role_of(proxied) or "viewer")
    name = str(session.get("user") or "")
    if not name:
        return None
    role = users.role_of(name)
    if role is None:
        session.clear()
        return None
    return User(name, role)


__all__ = ["create_app", "current_user", "operator_action", "ext", "flash", "LISTS", "PAGE_SIZE", "parse_day"]
