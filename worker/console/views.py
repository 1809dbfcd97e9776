"""The console's pages and actions (addresses in docs/console.md; other programs rely on /payments/<id>, /search,
/login and /healthz)."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import redis
from flask import Flask, abort, flash, g, redirect, render_template, request, session, url_for

from worker.console.common import LISTS, MAX_PAGE, PAGE_SIZE, ext, operator_action, parse_day

log = logging.getLogger("payments.console")

#: How long the health page's report is reused.
HEALTH_SECONDS = 10.0


def _safe_next(target: str | None) -> str:
    """Only a path of this site (never another host) after login."""
    if not target:
        return url_for("index")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith(("//", "/\\")):
        return url_for("index")
    return target


def _said(action: str, target: str, message: str, *, ok: bool) -> None:
    """Tell the user (the next page's message), the log and the actions stream who did what, with what result."""
    from worker.console import actions

    flash(message, "done" if ok else "error")
    log.warning("console: %s %s %s: %s", g.user.name, action, target or "-", message)
    actions.record(ext()["svc"].store, who=g.user.name, action=action, target=target, result=message, ok=ok)


def healthz() -> Any:
    """The only page served without a login: 200 when Redis answers, 503 otherwise; nothing else said."""
    from worker.redis_connections import probe_client

    # One plain try (the store's client rides out a restart for ~35 s: too long for a probe).
    probe = probe_client(ext()["svc"].settings)
    try:
        probe.ping()
    except (redis.ConnectionError, redis.TimeoutError):
        return "redis unreachable\n", 503, {"Content-Type": "text/plain"}
    finally:
        probe.close()
    return "ok\n", 200, {"Content-Type": "text/plain"}


def login() -> Any:
    if request.method == "GET":
        return render_template("login.html", next=request.args.get("next", ""))
    name = (request.form.get("username") or "").strip()[:64]
    password = request.form.get("password") or ""
    limits, address = ext()["limits"], request.remote_addr or "-"
    if not limits.login_allowed(address, name):
        abort(429)
    user = ext()["users"].authenticate(name, password)
    if user is None:
        limits.login_failed(address, name)
        log.warning("console: failed login for %r from %s", name, request.remote_addr)
        return render_template("login.html", error="wrong user name or password",
                               next=request.form.get("next", "")), 401
    session.clear()  # a new session on login (no fixation)
    session.permanent = True
    session["user"] = user.name
    log.info("console: %s (%s) logged in from %s", user.name, user.role, request.remote_addr)
    return redirect(_safe_next(request.form.get("next")))


def logout() -> Any:
    session.clear()
    return redirect(url_for("login"))


def index() -> Any:
    svc = ext()["svc"]
    counts = svc.store.health.snapshot(stale_auth_age=svc.settings.stale_auth_age)
    return render_template("index.html", counts=counts, lists=LISTS)


def search() -> Any:
    from worker.console.find import search as find

    q = request.args.get("q", "")
    found = find(ext()["svc"], q)
    if len(found.records) == 1 and not found.notes:
        return redirect(url_for("payment", payment_id=found.records[0][0]["payment_id"]))
    return render_template("search.html", q=q, found=found)


def payment(payment_id: str) -> Any:
    from worker.console.story import build
    from worker.payments.lookup import ArchiveUnreadable, find_record

    svc = ext()["svc"]
    try:
        record, where = find_record(svc, payment_id)
    except ArchiveUnreadable as exc:
        return render_template("error.html", title="Not known", message=str(exc)), 503
    if record is None:
        return render_template("error.html", title="Not found",
                               message=f"no payment with id {payment_id!r} in Redis or the archive"), 404
    from worker.console import actions

    return render_template("payment.html", story=build(svc, record, where),
                           statuses=("APPROVED", "DECLINED", "ERROR", "VOIDED"),
                           actions=actions.recent(svc.store, target=record["payment_id"]))


def actions_page() -> Any:
    from worker.console import actions

    return render_template("actions.html", actions=actions.recent(ext()["svc"].store, count=200))


@operator_action
def resolve(payment_id: str) -> Any:
    from worker.payments.decisions import DecisionRefused
    from worker.payments.decisions import resolve as decide

    try:
        done = decide(ext()["svc"], payment_id, request.form.get("status", ""),
                      reason=request.form.get("reason", "")[:500], who=f"console:{g.user.name}",
                      trans_id=request.form.get("trans_id", "").strip())
    except DecisionRefused as exc:
        _said("resolve", payment_id, str(exc), ok=False)
        return redirect(url_for("payment", payment_id=payment_id)), 303
    _said("resolve", payment_id, done.line(), ok=True)
    return redirect(url_for("payment", payment_id=payment_id)), 303


@operator_action
def sweep(payment_id: str) -> Any:
    from worker.payments.flow import GatewayOutage, LeaseBusy
    from worker.payments.sweep import sweep_one

    try:
        report = sweep_one(ext()["svc"], payment_id)
    except (GatewayOutage, LeaseBusy) as exc:
        report = {"ran": False, "reason": exc.reason}
    done = {k: v for k, v in report.items() if k not in ("ran", "payment_id")}
    _said("sweep", payment_id, f"sweep of {payment_id} by {g.user.name}: "
          + (", ".join(f"{k}={v}" for k, v in done.items()) or "nothing was due"), ok=bool(report.get("ran")))
    return redirect(url_for("payment", payment_id=payment_id)), 303


def listing(name: str) -> Any:
    if name not in LISTS:
        abort(404)
    title, index = LISTS[name]
    page = min(MAX_PAGE, max(1, request.args.get("page", 1, type=int) or 1))
    svc = ext()["svc"]
    offset = (page - 1) * PAGE_SIZE
    if index is None:
        records = svc.store.open_auths(svc.settings.stale_auth_age, limit=offset + PAGE_SIZE + 1)[offset:]
    else:
        records = svc.store.indexed(index, offset=offset, limit=PAGE_SIZE + 1)
    return render_template("list.html", title=title, name=name, page=page, records=records[:PAGE_SIZE],
                           more=len(records) > PAGE_SIZE)


def payments() -> Any:
    from worker.merchants import valid_name
    from worker.payments.lookup import list_records

    status = (request.args.get("status") or "").strip().upper() or None
    # ?merchant=NAME: one merchant account's (filtered from the newest records, as payments list --merchant)
    merchant = (request.args.get("merchant") or "").strip() or None
    if merchant is not None and not valid_name(merchant):
        abort(400)
    page = min(MAX_PAGE, max(1, request.args.get("page", 1, type=int) or 1))
    notes: list[str] = []
    records = list_records(ext()["svc"], status=status, merchant=merchant, limit=page * PAGE_SIZE + 1,
                           warn=notes.append)
    shown = records[(page - 1) * PAGE_SIZE:]
    title = "Payments" + (f" {status}" if status else "") + (f" of {merchant}" if merchant else "")
    return render_template("list.html", title=title, name=None, status=status or "", merchant=merchant or "",
                           page=page, records=shown[:PAGE_SIZE], more=len(shown) > PAGE_SIZE, notes=notes)


def reconciliation() -> Any:
    from worker.store.reconciliations import Reconciliations

    recon = Reconciliations(ext()["svc"].store)
    kept = [(day, recon.kept(day)) for day in reversed(recon.kept_days())]
    return render_template("reconciliation.html", kept=kept)


def reconciliation_day(day: str) -> Any:
    from worker.payments.reconciliation import ACTIONS, Kind
    from worker.store.reconciliations import Reconciliations

    parsed = parse_day(day)
    kept = Reconciliations(ext()["svc"].store).kept(parsed.isoformat()) if parsed else None
    if kept is None:
        abort(404)
    actions = {k.value: ACTIONS[k] for k in Kind if k in ACTIONS}
    return render_template("reconciliation_day.html", day=parsed, kept=kept, actions=actions)


@operator_action
def reconciliation_run() -> Any:
    from worker.payments.decisions import DecisionRefused, reconcile_days
    from worker.payments.reconciliation import ReconcileError

    day = parse_day(request.form.get("day", ""))
    if day is None:
        _said("reconcile", "", "refused: the day is YYYY-MM-DD, today or yesterday", ok=False)
        return redirect(url_for("reconciliation")), 303
    try:
        (result,) = reconcile_days(ext()["svc"], day, day)
    except (ReconcileError, DecisionRefused) as exc:
        _said("reconcile", day.isoformat(), f"reconciliation of {day} failed: {exc}", ok=False)
        return redirect(url_for("reconciliation")), 303
    _said("reconcile", day.isoformat(), f"{day} reconciled by {g.user.name}: {result.rows} report rows, "
          f"{len(result.differences)} differences", ok=True)
    return redirect(url_for("reconciliation_day", day=day.isoformat())), 303


def health() -> Any:
    from worker.ops.status import render, report

    celery_app = ext()["celery"]
    if celery_app is None:
        from worker.broker.app import default_app

        celery_app = default_app()
    # Kept HEALTH_SECONDS: each report pings the workers and sends the gateway an stq probe (BluePay in LIVE),
    # which a page reloaded by several operators must not multiply.
    cache = ext().setdefault("health", {})
    now = time.monotonic()
    if not cache or now - cache["at"] > HEALTH_SECONDS:
        cache.update(at=now, found=report(ext()["svc"], celery_app, ping_timeout=1.0))
    found = cache["found"]
    return render_template("health.html", found=found, text=render(found))


#: Every page and action: (rule, view, methods); the view's name is its endpoint (url_for).
ROUTES: tuple[tuple[str, Callable[..., Any], list[str]], ...] = (
    ("/healthz", healthz, ["GET"]),
    ("/login", login, ["GET", "POST"]),
    ("/logout", logout, ["POST"]),
    ("/", index, ["GET"]),
    ("/search", search, ["GET"]),
    ("/payments/<path:payment_id>", payment, ["GET"]),
    ("/actions", actions_page, ["GET"]),
    ("/payments/<path:payment_id>/resolve", resolve, ["POST"]),
    ("/payments/<path:payment_id>/sweep", sweep, ["POST"]),
    ("/lists/<name>", listing, ["GET"]),
    ("/payments", payments, ["GET"]),
    ("/reconciliation", reconciliation, ["GET"]),
    ("/reconciliation/<day>", reconciliation_day, ["GET"]),
    ("/reconciliation/run", reconciliation_run, ["POST"]),
    ("/health", health, ["GET"]),
)


def register(app: Flask) -> None:
    for rule, view, methods in ROUTES:
        app.add_url_rule(rule, view_func=view, methods=methods)
