"""Webhooks, pure parts: which transitions are events, the body, the retry schedule, the settings, and signatures
as the ``standardwebhooks`` package itself verifies them (rotation: either secret verifies)."""
from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from worker.config import ConfigError
from worker.webhooks.events import event_body, event_data, event_type
from worker.webhooks.schedule import attempts_allowed, next_delay, total_span
from worker.webhooks.settings import DEFAULT_RETRY_SCHEDULE, WebhookSettings, parse_schedule
from worker.webhooks.signing import check_secret, headers, new_secret


def entry(before: str, after: str, note: str = "") -> dict[str, str]:
    return {"payment_id": "p1", "operation": "sale", "from": before, "to": after, "note": note,
            "at": "2026-12-07T21:00:00.000Z", "trans_id": "100200300400"}


@pytest.mark.parametrize(("before", "after", "kind"), [
    ("PENDING", "APPROVED", "payment.approved"), ("UNKNOWN", "DECLINED", "payment.declined"),
    ("PENDING", "ERROR", "payment.error"), ("PENDING", "SKIPPED", "payment.skipped"),
    ("APPROVED", "VOIDED", "payment.voided"), ("APPROVED", "CAPTURED", "payment.captured"),
    ("APPROVED", "PARTIALLY_REFUNDED", "payment.partially_refunded"),
    ("PARTIALLY_REFUNDED", "REFUNDED", "payment.refunded"), ("CAPTURED", "APPROVED", "payment.reopened"),
    ("", "PENDING", None), ("PENDING", "UNKNOWN", None), ("PENDING", "RETRYING", None), ("APPROVED", "APPROVED", None),
])
def test_final_outcomes_and_later_changes_are_events_and_in_flight_states_are_not(before, after, kind):
    assert event_type(entry(before, after)) == kind


def test_an_error_that_needs_a_human_and_an_operators_resolution_have_their_own_types():
    assert event_type(entry("UNKNOWN", "ERROR"), needs_human=True) == "payment.needs_human"
    assert event_type(entry("ERROR", "APPROVED", "resolved by ann: checked the console (report)")) == "payment.resolved"


def test_the_body_is_the_stored_outcome_masked_with_the_transitions_status_and_a_sequence():
    record = {"payment_id": "p1", "operation": "sale", "status": "VOIDED", "amount": "3.00", "trans_id": "100200300400",
              "masked_account": "xxxxxxxxxxxx1111", "message": "card 4111 1111 1111 1111 approved",
              "lease_owner": "w1", "created_ts": "1.0"}
    data = event_data(entry("PENDING", "APPROVED"), record)
    body = json.loads(event_body("payment.approved", "2026-12-07T21:00:00.000Z", data, 3))
    assert body["type"] == "payment.approved" and body["timestamp"] == "2026-12-07T21:00:00.000Z"
    assert body["data"]["status"] == "APPROVED" and body["data"]["previous_status"] == "PENDING"
    assert body["data"]["sequence"] == 3 and body["data"]["amount"] == "3.00"
    assert "4111 1111 1111 1111" not in json.dumps(body) and "lease_owner" not in body["data"]


def test_an_event_made_after_the_record_moved_on_does_not_tell_the_later_change():
    record = {"payment_id": "p1", "operation": "sale", "status": "VOIDED", "amount": "3.00", "voided_by": "v1",
              "updated_at": "2026-12-07T21:00:05.000Z"}
    approved = event_data(entry("PENDING", "APPROVED"), record)
    assert approved["status"] == "APPROVED" and "voided_by" not in approved
    assert approved["updated_at"] == "2026-12-07T21:00:00.000Z"
    voided = event_data(entry("APPROVED", "VOIDED"), record)
    assert voided["voided_by"] == "v1" and voided["updated_at"] == "2026-12-07T21:00:05.000Z"


def test_the_default_schedule_is_svixs_and_gives_up_after_eight_attempts():
    assert DEFAULT_RETRY_SCHEDULE == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert attempts_allowed(DEFAULT_RETRY_SCHEDULE) == 8
    assert [next_delay(DEFAULT_RETRY_SCHEDULE, n) for n in range(1, 9)] == [5, 300, 1800, 7200, 18000, 36000, 36000,
                                                                           None]
    assert total_span(DEFAULT_RETRY_SCHEDULE) == pytest.approx(27.6 * 3600, rel=0.01)


def test_settings_read_the_schedule_and_refuse_what_cannot_work():
    s = WebhookSettings.from_env({"WEBHOOK_RETRY_SCHEDULE": "1s, 2m ,1h", "WEBHOOK_DISABLE_AFTER": "2d"})
    assert s.retry_schedule == (1.0, 120.0, 3600.0) and s.disable_after == 172800.0
    with pytest.raises(ConfigError, match="WEBHOOK_RETRY_SCHEDULE"):
        parse_schedule("5s, soon")
    with pytest.raises(ConfigError, match="PAYMENTS_WEBHOOK_SECRET"):
        WebhookSettings.from_env({"PAYMENTS_WEBHOOK_URL": "https://example.test/hook"})
    with pytest.raises(ConfigError, match="whsec_"):
        WebhookSettings.from_env({"PAYMENTS_WEBHOOK_URL": "https://example.test/h", "PAYMENTS_WEBHOOK_SECRET": "abc"})
    with pytest.raises(ConfigError, match="unknown event type"):
        WebhookSettings.from_env({"PAYMENTS_WEBHOOK_EVENTS": "payment.approved,payment.paid"})
    two = WebhookSettings.from_env({"PAYMENTS_WEBHOOK_URL": "https://example.test/h",
                                    "PAYMENTS_WEBHOOK_SECRET": f"{new_secret()} {new_secret()}"})
    assert len(two.secrets) == 2


def test_signatures_verify_with_the_standardwebhooks_package_and_both_secrets_sign_during_a_rotation():
    old, new = new_secret(), new_secret()
    body = b'{"type":"payment.approved"}'
    now = int(datetime.now(UTC).timestamp())
    sent = headers([new, old], "evt_1-0", now, body)
    assert sent["webhook-signature"].count("v1,") == 2
    for secret in (old, new):
        assert Webhook(secret).verify(body, sent) == {"type": "payment.approved"}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, sent)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(body + b" ", sent)


def test_secrets_are_whsec_and_long_enough():
    assert check_secret(new_secret()).startswith("whsec_")
    with pytest.raises(ConfigError):
        check_secret("whsec_c2hvcnQ=")


def test_event_ids_are_one_per_audit_entry_and_never_card_like():
    from worker.cards.numbers import contains_card_number
    from worker.webhooks.events import event_id

    ids = {event_id(f"{ms}-{seq}") for ms in (1796679738299, 4111111111111) for seq in (0, 1, 11)}
    assert len(ids) == 6 and not any(contains_card_number(i) for i in ids)


def test_the_exporter_serves_the_webhook_counters_ages_and_failed_set_and_status_asks_for_a_human():
    import types

    from prometheus_client import CollectorRegistry, generate_latest

    from worker.config import Settings
    from worker.guard import GuardSettings
    from worker.ops.exporter import PaymentsCollector
    from worker.ops.monitor import attention
    from worker.ops.status import _webhooks_line

    hooks = {"undelivered": 3, "oldest_undelivered_age": 42.0, "failed": 2, "intake_lag": 5,
             "stats": {"delivered": 7, "failed_attempts": 4, "exhausted": 1, "abandoned": 1, "events": 9}}
    from tests.support.redis_store import new_store

    store = new_store()
    found = dict(store.health.snapshot(stale_auth_age=1.0), broker={"queues": {"celery": 0}, "unacked": 0},
                 webhooks=hooks, sweep={"finished": store.clock()})
    registry = CollectorRegistry(auto_describe=False)
    # the breaker off (on by default): no Redis here for its gauge to read (tests/unit/test_exporter.py has one)
    settings = Settings(guard=GuardSettings(breaker_failures=0))
    registry.register(PaymentsCollector(types.SimpleNamespace(settings=settings), None, read=lambda: found))
    text = generate_latest(registry).decode()
    for line in ('payments_webhook_deliveries_total{result="delivered"} 7.0',
                 'payments_webhook_deliveries_total{result="failed_attempt"} 4.0',
                 'payments_webhook_deliveries_total{result="exhausted"} 1.0', "payments_webhook_events_total 9.0",
                 "payments_webhook_undelivered 3.0", "payments_webhook_oldest_undelivered_age_seconds 42.0",
                 "payments_webhook_failed 2.0", "payments_webhook_intake_lag 5.0"):
        assert line in text, line
    assert any("2 webhook deliveries failed" in a for a in attention(found, Settings()))
    assert _webhooks_line(hooks) == "webhooks     3 undelivered (oldest 42s), 2 failed for good"


def test_beat_drains_the_webhook_schedule_every_second_on_its_own_queue_which_a_default_worker_consumes():
    from worker.broker.celeryconfig import config_for
    from worker.config import Settings

    conf = config_for(Settings())
    entry = conf["beat_schedule"]["payments-webhooks"]
    assert entry["task"] == "payments.webhooks.drain" and entry["schedule"] == 1.0
    assert entry["options"]["queue"] == "webhooks" and entry["options"]["expires"] <= 10
    assert conf["task_routes"]["payments.webhooks.*"] == {"queue": "webhooks"}
    assert {q.name for q in conf["task_queues"]} == {"celery", "webhooks"}
    assert config_for(Settings(webhook_drain_interval=2.5))["beat_schedule"]["payments-webhooks"]["schedule"] == 2.5


def test_a_bad_webhook_setting_stops_the_drain_with_a_logged_error_not_the_worker(monkeypatch, caplog):
    import types

    from worker.tasks import webhooks as task

    monkeypatch.setenv("PAYMENTS_WEBHOOK_URL", "https://example.test/hook")
    monkeypatch.delenv("PAYMENTS_WEBHOOK_SECRET", raising=False)
    monkeypatch.setattr(task, "_deliverers", {})
    monkeypatch.setattr(task, "_last_complaint", [0.0])
    monkeypatch.setattr(task, "services_of", lambda app: object())
    with caplog.at_level("ERROR", logger="payments.webhooks"):
        bound = types.SimpleNamespace(app=None)  # the Task the worker binds
        assert "PAYMENTS_WEBHOOK_SECRET" in task.drain(bound)["error"]
        task.drain(bound)
    assert len([r for r in caplog.records if "not delivering" in r.getMessage()]) == 1


def test_webhook_drain_interval_is_a_setting_and_must_be_positive(monkeypatch):
    from worker.config import ConfigError, Settings

    monkeypatch.setenv("WEBHOOK_DRAIN_INTERVAL", "2s")
    assert Settings.from_env().webhook_drain_interval == 2.0
    monkeypatch.setenv("WEBHOOK_DRAIN_INTERVAL", "0")
    with pytest.raises(ConfigError, match="WEBHOOK_DRAIN_INTERVAL"):
        Settings.from_env()


def test_celerys_info_lines_about_drains_are_dropped_and_its_errors_kept():
    import logging

    from worker.tasks.webhooks import QuietDrains

    def record(level: int, msg: str, args: object) -> logging.LogRecord:
        return logging.LogRecord("celery.app.trace", level, __file__, 1, msg, args, None)  # type: ignore[arg-type]  # a tuple of one dict, as logging passes it

    quiet = QuietDrains()
    assert not quiet.filter(record(logging.INFO, "Task %(name)s[%(id)s] succeeded",
                                   ({"name": "payments.webhooks.drain", "id": "x"},)))
    assert not quiet.filter(record(logging.INFO, "Scheduler: Sending due task %s (%s)",
                                   ("payments-webhooks", "payments.webhooks.drain")))
    assert quiet.filter(record(logging.ERROR, "Task %(name)s[%(id)s] raised", ({"name": "payments.webhooks.drain"},)))
    assert quiet.filter(record(logging.INFO, "Task %(name)s[%(id)s] succeeded", ({"name": "payments.sale"},)))
