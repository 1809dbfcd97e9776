"""``payments webhooks add|list|remove|disable|enable|rotate|failed|replay``: the webhook endpoints and their
deliveries (worker/webhooks/; docs/webhooks.md). ``add`` and ``rotate`` print the secret once: keep it."""
from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from worker.cli.output import CommandError
from worker.config import ConfigError, parse_duration

__all__ = ["add_webhooks_commands"]


def _parts() -> tuple[Any, Any, Any]:
    """(redis client, webhook settings, Deliverer) over the environment's services."""
    from worker.services import services
    from worker.webhooks.deliverer import Deliverer
    from worker.webhooks.settings import WebhookSettings

    svc = services()
    try:
        settings = WebhookSettings.from_env()
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    return svc.redis, settings, Deliverer(svc.redis, settings, prefix=svc.settings.key_prefix,
                                          card_keys=svc.card_keys)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if ts else "-"


def parse_since(text: str, now: float) -> float:
    """An ISO-8601 time (UTC when it names no zone), or a duration meaning that long ago (``2h``)."""
    try:
        return now - parse_duration(text, name="--since")
    except ConfigError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"--since: {text!r} is neither a time (2026-12-07T21:00:00Z) nor a duration (2h)") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def cmd_add(args: Any) -> int:
    _client, _settings, d = _parts()
    try:
        endpoint, secret = d.endpoints.add(args.url, (args.events or "").replace(",", " ").split(), now=d.clock())
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    d.intake.ensure_group(d.clock())  # events from now on (and the last few minutes)
    if args.json:
        print(json.dumps({"id": endpoint.id, "url": endpoint.url, "events": list(endpoint.events), "secret": secret}))
    else:
        print(f"endpoint {endpoint.id} -> {endpoint.url} ({', '.join(endpoint.events) or 'all events'})")
        print(f"secret (shown once; verify webhook-signature with it): {secret}")
    return 0


def cmd_list(args: Any) -> int:
    _client, _settings, d = _parts()
    endpoints = [e.shown() for e in d.endpoints.all()]
    health = d.deliveries.health()
    if args.json:
        print(json.dumps({"endpoints": endpoints, **health}, indent=2, sort_keys=True))
        return 0
    if not endpoints:
        print("no webhook endpoint (PAYMENTS_WEBHOOK_URL, or payments webhooks add URL)")
    for e in endpoints:
        state = "enabled" if e["enabled"] else f"DISABLED ({e['disabled_reason']})"
        print(f"{e['id']}  {e['url']}  {state}  events: {', '.join(e['events'])}")
        if e["failing_since"]:
            print(f"    failing since {_iso(e['failing_since'])}: {e['last_error']}")
        print(f"    last success: {_iso(e['last_success'])}; secrets signing: {e['secrets']}")
    print(f"undelivered: {health['undelivered']} (oldest {health['oldest_undelivered_age']:.0f} s); "
          f"failed: {health['failed']}; counters: {json.dumps(health['stats'], sort_keys=True)}")
    return 0


def _checked(call: Any, *args: Any, **kw: Any) -> Any:
    try:
        return call(*args, **kw)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None


def cmd_remove(args: Any) -> int:
    _client, _settings, d = _parts()
    _checked(d.endpoints.remove, args.endpoint_id)
    print(f"endpoint {args.endpoint_id} removed (its pending deliveries go to the failed set when next due)")
    return 0


def cmd_enable(args: Any) -> int:
    _client, _settings, d = _parts()
    _checked(d.endpoints.set_enabled, args.endpoint_id, args.command_name == "enable", args.reason or "")
    print(f"endpoint {args.endpoint_id} {args.command_name}d")
    return 0


def cmd_rotate(args: Any) -> int:
    _client, _settings, d = _parts()
    keep = _checked(parse_duration, args.keep, name="--keep")
    secret = _checked(d.endpoints.rotate, args.endpoint_id, now=d.clock(), keep_seconds=keep)
    print(f"new secret for {args.endpoint_id} (the old one keeps signing for {keep:g} s): {secret}")
    return 0


def cmd_failed(args: Any) -> int:
    _client, _settings, d = _parts()
    if args.clear:
        print(f"{d.deliveries.clear_failed()} failed deliveries forgotten (their outcomes stay in the store)")
        return 0
    rows = d.deliveries.failed(limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{_iso(r['at'])}  {r['event_id']}  -> {r['endpoint_id']}: {r['error']}")
    print(f"{len(rows)} failed deliver{'y' if len(rows) == 1 else 'ies'} shown")
    return 0


def cmd_replay(args: Any) -> int:
    _client, _settings, d = _parts()
    if bool(args.event_id) == bool(args.since):
        raise CommandError("give EVENT_ID or --since T (one of them)")
    now = d.clock()
    event_ids = [args.event_id] if args.event_id else d.deliveries.events_since(parse_since(args.since, now))
    endpoints = [e for e in d.endpoints.all() if not e.disabled and (not args.endpoint or e.id == args.endpoint)]
    if args.endpoint and not endpoints:
        raise CommandError(f"no enabled endpoint {args.endpoint!r}")
    scheduled = events = 0
    for event_id in event_ids:
        event = d.deliveries.event(event_id)
        if not event:
            if args.event_id:
                raise CommandError(f"no event {event_id!r} (unknown, or older than WEBHOOK_EVENT_RETENTION)")
            continue
        targets = [e.id for e in endpoints if e.wants(event.get("type", ""))]
        n = d.deliveries.replay(event_id, targets, now=now)
        scheduled += n
        events += 1 if n else 0
    print(f"replay: {events} event(s), {scheduled} deliver{'y' if scheduled == 1 else 'ies'} scheduled")
    return 0


def add_webhooks_commands(sub: Any) -> None:
    """The ``webhooks`` group (one line in worker/cli/main.py's parser registers it)."""
    group = sub.add_parser("webhooks", help="signed outcome webhooks: endpoints, failed deliveries, replay",
                           description="Webhook endpoints and deliveries (docs/webhooks.md).")
    cmds = group.add_subparsers(dest="webhooks_command", required=True)
    p = cmds.add_parser("add", help="add an endpoint; prints its secret (whsec_...) once")
    p.add_argument("url")
    p.add_argument("--events", help="comma-separated event types (default: all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_add)
    p = cmds.add_parser("list", help="endpoints, their state, and the deliveries waiting or failed")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    p = cmds.add_parser("remove", help="remove an endpoint")
    p.add_argument("endpoint_id")
    p.set_defaults(func=cmd_remove)
    for name in ("disable", "enable"):
        p = cmds.add_parser(name, help=f"{name} an endpoint" + (" (and forget its failure streak)"
                                                                  if name == "enable" else ""))
        p.add_argument("endpoint_id")
        p.add_argument("--reason", help="why (disable)")
        p.set_defaults(func=cmd_enable, command_name=name)
    p = cmds.add_parser("rotate", help="a new secret; the old one keeps signing for --keep (both sign meanwhile)")
    p.add_argument("endpoint_id")
    p.add_argument("--keep", default="24h", help="how long the old secret keeps signing (default 24h; 0: stop now)")
    p.set_defaults(func=cmd_rotate)
    p = cmds.add_parser("failed", help="deliveries given up (after the last attempt, or endpoint disabled/removed)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.add_argument("--clear", action="store_true", help="forget them all (not to be sent: replay is the other way)")
    p.set_defaults(func=cmd_failed)
    p = cmds.add_parser("replay", help="send an event again (EVENT_ID), or every event since --since T")
    p.add_argument("event_id", nargs="?")
    p.add_argument("--since", help="an ISO-8601 time, or a duration meaning that long ago (2h)")
    p.add_argument("--endpoint", help="only to this endpoint (default: every enabled endpoint that wants the event)")
    p.set_defaults(func=cmd_replay)
