"""``payments status``: one screen (or ``--json``) saying whether the payments system needs a human.

Workers alive (a Celery ping), the broker's queue and unacknowledged messages, UNKNOWN / needs_human / RETRYING
with the oldest, the outbox, the last sweep, and whether the gateway (or the sandbox) answers a sealed stq probe
(worker/ops/preflight.py: HTTP 404 or SECURITY ERROR names the misconfigured setting). Exit status 1 when
:func:`worker.ops.monitor.attention` finds something, 0 otherwise (2: Redis cannot be reached, as every command).
"""
from __future__ import annotations

import json
from typing import Any

from worker.ops.monitor import age, attention, snapshot

EXIT_ATTENTION = 1


def ping_workers(app: Any, timeout: float = 1.0) -> list[str]:
    """Names of the workers that answered a ping within ``timeout`` seconds."""
    replies = app.control.ping(timeout=timeout) or []
    return sorted(name for reply in replies for name in reply)


def probe_gateway(settings: Any) -> tuple[str | None, str | None]:
    """(misconfiguration, unreachable): one sealed stq probe (worker/ops/preflight.py). The first names the setting a
    definite answer (HTTP 404, SECURITY ERROR) proves wrong; the second says why the gateway could not tell now."""
    from worker.ops.preflight import probe

    result = probe(settings)
    return (result.misconfigured.message if result.misconfigured else None), result.unreachable


def other_accounts(settings: Any) -> list[dict[str, Any]]:
    """The same probe for each BLUEPAY_ACCOUNTS account: its name, whether it answered, and what it proves wrong."""
    from worker.ops.preflight import probe

    found = []
    for account in settings.accounts:
        result = probe(settings, merchant=account.name)
        found.append({"merchant": account.name, "url": account.url, "reachable": result.unreachable is None,
                      "error": result.unreachable,
                      "misconfigured": result.misconfigured.message if result.misconfigured else None})
    return found


def report(svc: Any, app: Any, *, ping_timeout: float = 1.0) -> dict[str, Any]:
    found = snapshot(svc, app)
    workers = ping_workers(app, ping_timeout)
    misconfigured, gateway_error = probe_gateway(svc.settings)
    others = other_accounts(svc.settings)
    found["workers"] = workers
    found["gateway"] = {"url": svc.settings.bluepay_url, "reachable": gateway_error is None, "error": gateway_error,
                        "misconfigured": misconfigured}
    found["guard"] = guard_report(svc)
    found["ages"] = {name: age(found, name) for name in ("unknown", "retrying", "needs_human", "non_final", "outbox",
                                                          "open_auths")}
    found["attention"] = attention(found, svc.settings, workers=workers, gateway_error=gateway_error)
    if misconfigured:
        found["attention"].insert(0, f"gateway misconfigured: {misconfigured}")
    found["gateway"]["merchants"] = others
    found["attention"][1 if misconfigured else 0:0] = [f"gateway misconfigured: {o['misconfigured']}"
                                                          for o in others if o["misconfigured"]]
    found["attention"] += [f"gateway of merchant {o['merchant']} not reachable: {o['error']}"
                           for o in others if not o["misconfigured"] and not o["reachable"]]
    for name, guard in [("default", found["guard"]),  # the shared guard: worker/guard/
                        *((g["merchant"], g) for g in found["guard"].get("merchants", []))]:
        breaker = guard.get("breaker")
        if breaker and breaker["state"] != "closed":
            found["attention"].append(f"gateway circuit breaker of {name} {breaker['state'].upper()}: nothing is sent "
                                      "to BluePay for it until a probe answers (docs/runbook.md, 'Gateway breaker "
                                      "open')")
    found["ok"] = not found["attention"]
    return found


def guard_report(svc: Any) -> dict[str, Any]:
    """The shared guard's settings and the breaker as it stands in Redis (worker/guard/)."""
    from dataclasses import asdict

    from worker.guard import breaker_state, in_flight

    s = svc.settings

    def one(name: str, guard: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"rate_limit": round(guard.rate + guard.look_rate, 3), "stq_rate": guard.look_rate,
                               "breaker_failures": guard.breaker_failures}
        if guard.breaker_failures:
            out["breaker"] = asdict(breaker_state(svc.redis, prefix=s.key_prefix, merchant=name))
        if getattr(guard, "max_in_flight", 0):  # the bulkhead: its requests in flight now, of the cap
            out["in_flight"] = {"now": in_flight(svc.redis, prefix=s.key_prefix, merchant=name),
                                "cap": guard.max_in_flight}
        return out

    found = one("default", s.guard)
    others = [dict(one(a.name, a.guard), merchant=a.name) for a in getattr(s, "accounts", ())]
    if others:  # several merchant accounts (worker/merchants.py): each its own limit and breaker
        found["merchants"] = others
    return found


def _guard_line(guard: dict[str, Any]) -> str:
    limit = f"{guard['rate_limit']:g}/s (stq {guard['stq_rate']:g}/s)" if guard["rate_limit"] else "no rate limit"
    if guard.get("in_flight"):
        limit += f", {guard['in_flight']['now']} of {guard['in_flight']['cap']} in flight"
    breaker = guard.get("breaker")
    if not breaker:
        return f"{limit}, no breaker"
    state = breaker["state"].upper().replace("_", "-")
    extra = f", {breaker['open_for']:g}s of cooldown left" if breaker["state"] == "open" else ""
    return (f"{limit}, breaker {state} ({breaker['failures']} failures in a row{extra}; opened "
            f"{breaker['opened']} times)")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _sweep_line(now: float, sweep: dict[str, Any] | None) -> str:
    if not sweep:
        return "never"
    actions = ", ".join(f"{k}={v}" for k, v in sorted(sweep.items()) if isinstance(v, int) and not isinstance(v, bool))
    return f"{_age(now - float(sweep.get('finished') or 0))} ago, took {sweep.get('seconds')}s: " + (
        actions or "nothing to do")


def _gateway_line(gateway: dict[str, Any]) -> str:
    if gateway.get("misconfigured"):
        return f"MISCONFIGURED ({gateway['misconfigured']})"
    return "settings proved (stq)" if gateway["reachable"] else f"NOT reachable ({gateway['error']})"


def _webhooks_line(hooks: dict[str, Any]) -> str:
    return (f"webhooks     {hooks.get('undelivered', 0)} undelivered (oldest "
            f"{_age(hooks.get('oldest_undelivered_age') or None)}), {hooks.get('failed', 0)} failed for good")


def _merchant_lines(found: dict[str, Any]) -> list[str]:
    """Records by status of each account other than ``default`` (the store's per-account counts), oldest in doubt."""
    lines = []
    for name, entry in sorted((found.get("merchants") or {}).items()):
        counts = ", ".join(f"{k}={v}" for k, v in sorted(entry["by_status"].items())) or "none"
        oldest = ", ".join(f"{n.upper()} {_age(age(entry | {'now': found['now']}, n))}"
                           for n in ("unknown", "retrying"))
        lines.append(f"  {name:<10} {counts} (oldest {oldest})")
    return lines


def render(found: dict[str, Any]) -> str:
    by_status, ages, broker = found["by_status"], found["ages"], found["broker"]
    sweep = found.get("sweep")
    lines = [
        f"workers      {len(found['workers'])} alive: {', '.join(found['workers']) or '-'}",
        f"queue        {sum(broker['queues'].values())} waiting "
        f"({', '.join(f'{q}={n}' for q, n in broker['queues'].items())}), {broker['unacked']} unacked",
        f"UNKNOWN      {by_status.get('UNKNOWN', 0)} (oldest {_age(ages['unknown'])})",
        f"RETRYING     {by_status.get('RETRYING', 0)} (oldest {_age(ages['retrying'])})",
        f"needs_human  {found['needs_human']['count']} (oldest {_age(ages['needs_human'])})",
        f"in flight    {found['non_final']['count']} non-final (longest wait {_age(ages['non_final'])})",
        f"outbox       {found['outbox']['count']} (oldest {_age(ages['outbox'])}), "
        f"{found['stats'].get('outbox_republished', 0)} re-published, "
        f"{found['stats'].get('outbox_given_up', 0)} given up",
        f"open auths   {found['open_auths']['count']} (oldest {_age(ages['open_auths'])}), "
        f"{found.get('stale_auths', 0)} older than STALE_AUTH_AGE",
        "last sweep   " + _sweep_line(found["now"], sweep),
        _webhooks_line(found.get("webhooks") or {}),
        f"gateway      {found['gateway']['url']}: " + _gateway_line(found["gateway"]),
        *(f"  {g['merchant']:<10} {g['url']}: " + _gateway_line(g) for g in found["gateway"].get("merchants", [])),
        *(["guard        " + _guard_line(found["guard"])] if "guard" in found else []),
        *(f"  {g['merchant']:<10} " + _guard_line(g) for g in found.get("guard", {}).get("merchants", [])),
        "records      " + (", ".join(f"{k}={v}" for k, v in sorted(by_status.items())) or "none"),
        *_merchant_lines(found),
        "",
    ]
    if found["attention"]:
        lines.append("NEEDS ATTENTION:")
        lines += [f"  - {item}" for item in found["attention"]]
    else:
        lines.append("OK: nothing needs a human")
    return "\n".join(lines)


def main(svc: Any, app: Any, *, as_json: bool = False, ping_timeout: float = 1.0) -> int:
    found = report(svc, app, ping_timeout=ping_timeout)
    print(json.dumps(found, indent=2, sort_keys=True) if as_json else render(found))
    return 0 if found["ok"] else EXIT_ATTENTION
