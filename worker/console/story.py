"""A payment's story for its page: states with their times, the attempt journal, the follow-ups and the chain, the
audit entries and what the kept reconciliation reports say. Read through the store, the archive and the
reconciliations the CLI reads (never a second copy of their rules); the page masks whatever it shows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from worker.archive import ArchiveUnavailable

#: Fields naming another payment: (field, how it relates).
LINKS = (("target", "follow-up of"), ("parent", "chained after"), ("captured_by", "captured by"),
         ("refunded_by", "refunded by"), ("voided_by", "voided by"))
#: What the gateway said, shown as it is (masked card, AVS and CVV2 result codes: never the CVV2 itself).
GATEWAY_FIELDS = ("trans_id", "auth_code", "message", "masked_account", "card_type", "bank_name", "avs", "cvv2")
DETAIL_FIELDS = ("operation", "status", "amount", "refunded_amount", "order_id", "invoice_id", "idempotency_key",
                 "created_at", "updated_at", "needs_human", "not_charged", "refund_needed", "reconciled",
                 "error_class", "reason", "then_void", "resolved_by", "resolved_at")


@dataclass
class Story:
    record: dict[str, Any]
    where: str
    history: list[dict[str, Any]]
    journal: list[tuple[str, str]]
    links: list[tuple[str, str, str | None]]
    follow_ups: list[dict[str, Any]]
    audit: list[dict[str, Any]]
    reports: list[tuple[str, list[dict[str, str]] | None]]
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def needs_human(self) -> bool:
        return self.where == "redis" and self.record.get("needs_human") == "1"

    @property
    def stq_lookups(self) -> list[dict[str, Any]]:
        """The states the flow and the sweep noted from asking the gateway (stq by ORDER_ID): adopted, cannot
        tell yet, no row provably ours, not charged."""
        return [h for h in self.history if "stq" in str(h.get("note", "")).lower()]

    def details(self) -> list[tuple[str, str]]:
        return [(f, str(self.record[f])) for f in DETAIL_FIELDS if self.record.get(f) not in (None, "")]

    def gateway(self) -> list[tuple[str, str]]:
        return [(f, str(self.record[f])) for f in GATEWAY_FIELDS if self.record.get(f) not in (None, "")]


def when(epoch: Any) -> str:
    try:
        value = float(epoch)
    except (TypeError, ValueError):
        return ""
    if value <= 0:
        return ""
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def journal(record: dict[str, Any]) -> list[tuple[str, str]]:
    """The attempt journal in words: how many attempts, which may have reached the gateway, and whether one is
    in flight now (noted but not yet ended)."""
    sends = int(record.get("sends") or 0)
    rows = [("attempts", str(record.get("attempts") or 0)),
            ("money-moving sends noted", str(sends))]
    if record.get("attempt_ts"):
        rows.append(("last attempt noted at", when(record["attempt_ts"])))
    if record.get("sent_ts"):
        rows.append(("may have been sent (left by)", when(record["sent_ts"])))
    elif sends:
        rows.append(("may have been sent", "no: none may have reached the gateway"))
    if record.get("in_flight") == "1":
        rows.append(("in flight", "an attempt is noted and has not ended: it may have been sent"))
    if record.get("next_check_ts"):
        rows.append(("next stq check at", when(record["next_check_ts"])))
    if record.get("lease_owner"):
        rows.append(("lease held by", f"{record['lease_owner']} until {when(record.get('lease_until'))}"))
    return rows


def _get(svc: Any, payment_id: str) -> tuple[dict[str, Any] | None, str | None]:
    record = svc.store.get(payment_id)
    if record is not None:
        return record, "redis"
    try:
        return svc.archive.get(payment_id), "archive"
    except ArchiveUnavailable:
        return None, None


def build(svc: Any, record: dict[str, Any], where: str) -> Story:
    from worker.payments.decisions import kept_rows
    from worker.store.reconciliations import Reconciliations

    pid = record["payment_id"]
    notes: list[str] = []
    links: list[tuple[str, str, str | None]] = []
    follow_ups: list[dict[str, Any]] = []
    for name, how in LINKS:
        other = str(record.get(name) or "")
        if not other:
            continue
        linked, _ = _get(svc, other)
        links.append((how, other, linked.get("status") if linked else None))
        if linked and name in ("captured_by", "refunded_by", "voided_by"):
            follow_ups.append(linked)
    for suffix in (":void", ":void-stale"):
        chained, _ = _get(svc, pid + suffix)
        if chained and all(f["payment_id"] != chained["payment_id"] for f in follow_ups):
            follow_ups.append(chained)
    audit = svc.store.audit_of(pid)
    try:
        audit = svc.archive.audit(payment_id=pid, limit=500) + audit
    except ArchiveUnavailable as exc:
        notes.append(f"the archive's audit entries cannot be read: {exc}")
    unique: dict[str, dict[str, Any]] = {}
    for entry in audit:  # an entry copied to the archive and still in the stream is shown once
        unique.setdefault(str(entry.get("id")), entry)
    audit = list(unique.values())
    rows, checked = kept_rows(Reconciliations(svc.store), record)
    reports = [(checked, rows)]
    return Story(record=record, where=where, history=list(record.get("history") or []), journal=journal(record),
                 links=links, follow_ups=follow_ups, audit=audit, reports=reports,
                 webhooks=webhook_deliveries(svc, audit, notes), notes=notes)


def webhook_deliveries(svc: Any, audit: list[dict[str, Any]], notes: list[str]) -> list[dict[str, Any]]:
    """The webhook deliveries of the payment's events (one event per audit entry a merchant is told of), each
    endpoint's state, through the webhook wing's own reads; events past WEBHOOK_EVENT_RETENTION are not kept."""
    from worker.config import ConfigError
    from worker.webhooks.deliveries import Deliveries
    from worker.webhooks.endpoints import Endpoints
    from worker.webhooks.events import event_id
    from worker.webhooks.keys import WebhookKeys
    from worker.webhooks.settings import WebhookSettings

    try:
        settings = WebhookSettings.from_env()
    except ConfigError as exc:
        notes.append(f"webhook deliveries not shown: {exc}")
        return []
    keys = WebhookKeys(svc.store.prefix)
    endpoints = Endpoints(svc.store.redis, keys, static_url=settings.url, static_secrets=settings.secrets,
                          static_events=settings.events).all()
    if not endpoints:
        return []
    deliveries, found = Deliveries(svc.store.redis, keys), []
    for entry in audit:
        if "-" not in str(entry.get("id", "")):
            continue
        eid = event_id(str(entry["id"]))
        kind = deliveries.event(eid).get("type")  # the event made of this entry, if one was (and is still kept)
        if not kind:
            continue
        for row in deliveries.of_event(eid, [e.id for e in endpoints if e.wants(kind)]):
            found.append(dict(row, type=kind, at=entry.get("at", "")))
    return found
