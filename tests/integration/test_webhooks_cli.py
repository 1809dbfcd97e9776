"""``payments webhooks ...`` run in-process against a real Redis (private prefix) and a real receiver: add prints a
secret that verifies the deliveries, list/disable/enable/rotate/remove, replay by id and --since sends the same event
id again; Redis keeps the secret encrypted with PAYMENTS_CARD_KEY (another key opens nothing); bad input ends in one
line and exit status 2."""
from __future__ import annotations

import dataclasses
import json

import pytest
from cryptography.fernet import Fernet
from standardwebhooks import Webhook

from tests.support.clocks import OffsetClock
from tests.support.env import INTEGRATION_REDIS_URL
from tests.support.webhook_receiver import running_receiver
from worker.broker.app import create_app, current
from worker.cli.main import main
from worker.config import Settings
from worker.services import services_of
from worker.store import ResultsStore
from worker.webhooks.deliverer import Deliverer
from worker.webhooks.settings import WebhookSettings


@pytest.fixture
def app(prefix, monkeypatch):
    for name in ("PAYMENTS_WEBHOOK_URL", "PAYMENTS_WEBHOOK_SECRET", "WEBHOOK_RETRY_SCHEDULE"):
        monkeypatch.delenv(name, raising=False)
    made = create_app(dataclasses.replace(Settings(), redis_url=INTEGRATION_REDIS_URL, key_prefix=prefix),
                      main="webhooks-cli")
    with current(made):
        yield made
    made.close()


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["webhooks", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_webhooks_commands_manage_endpoints_and_replay_events(app, client, prefix, capsys):
    with running_receiver("whsec_" + "A" * 32) as rx:
        code, out, _ = run(capsys, "add", rx.url, "--events", "payment.approved,payment.voided", "--json")
        added = json.loads(out)
        assert code == 0 and added["secret"].startswith("whsec_") and added["id"].startswith("ep_")
        rx.secret = added["secret"]
        code, out, _ = run(capsys, "list", "--json")
        [shown] = json.loads(out)["endpoints"]
        assert shown["url"] == rx.url and shown["enabled"] and added["secret"] not in out

        clock = OffsetClock()
        # a worker over the same PAYMENTS_CARD_KEY opens the secret, which Redis keeps encrypted only
        assert added["secret"] not in str(client.hgetall(prefix + "wh:endpoints"))
        d = Deliverer(client, WebhookSettings(), prefix=prefix, clock=clock, card_keys=services_of(app).card_keys)
        assert not Deliverer(client, WebhookSettings(), prefix=prefix,
                             card_keys=[Fernet.generate_key().decode()]).endpoints.all()[0].secrets
        store = ResultsStore(client, prefix=prefix)
        store.claim("x1", "sale", owner="w", lease_seconds=30, fields={"amount": "3.00"})
        store.transition("x1", "APPROVED", owner="w", sent=True, fields={"trans_id": "100000000222"})
        store.claim("x2", "sale", owner="w", lease_seconds=30, fields={"amount": "4.00"})
        store.transition("x2", "DECLINED", owner="w", sent=True, fields={"trans_id": "100000000223"})
        d.drain(seconds=1.0)
        assert [r.event["type"] for r in rx.delivered()] == ["payment.approved"]  # the endpoint's --events filter
        event_id = rx.got[0].headers["webhook-id"]

        assert run(capsys, "disable", added["id"], "--reason", "maintenance")[0] == 0
        assert not json.loads(run(capsys, "list", "--json")[1])["endpoints"][0]["enabled"]
        assert run(capsys, "replay", event_id)[1].startswith("replay: 0 event(s)")  # nobody enabled to send to
        assert run(capsys, "enable", added["id"])[0] == 0

        code, out, _ = run(capsys, "rotate", added["id"], "--keep", "1h")
        new_secret = out.rsplit(" ", 1)[1].strip()
        assert code == 0 and new_secret.startswith("whsec_") and new_secret != added["secret"]
        assert run(capsys, "replay", event_id)[1].startswith("replay: 1 event(s), 1 delivery")
        d.drain(seconds=1.0)
        again = rx.got[-1]
        assert again.headers["webhook-id"] == event_id and len(rx.got) == 2
        for secret in (added["secret"], new_secret):  # both sign during the rotation
            Webhook(secret).verify(again.body, again.headers)
        assert run(capsys, "replay", "--since", "1h")[1].startswith("replay: 1 event(s)")

        assert run(capsys, "remove", added["id"])[0] == 0
        assert json.loads(run(capsys, "list", "--json")[1])["endpoints"] == []
        d.drain(seconds=1.0)  # the replayed delivery of a removed endpoint is given up, not sent
        assert len(rx.got) == 2
        code, out, _ = run(capsys, "failed", "--json")
        assert code == 0 and [r["error"] for r in json.loads(out)] == ["endpoint removed"]
        assert run(capsys, "failed", "--clear")[1].startswith("1 failed deliveries forgotten")
        assert json.loads(run(capsys, "failed", "--json")[1]) == []


@pytest.mark.parametrize(("args", "says"), [
    (("add", "ftp://example.test/x"), "not an http(s) URL"),
    (("add", "https://example.test/x", "--events", "payment.exploded"), "unknown event type"),
    (("replay", "evt_nope"), "no event"),
    (("replay",), "EVENT_ID or --since"),
    (("replay", "--since", "yesterday-ish"), "--since"),
    (("remove", "ep_missing"), "no webhook endpoint"),
])
def test_bad_input_is_one_line_and_exit_status_2(app, capsys, args, says):
    code, _out, err = run(capsys, *args)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1


def test_a_rotation_keeps_the_old_secret_signing_for_its_window_only(client, prefix):
    from cryptography.fernet import MultiFernet

    from worker.webhooks.endpoints import Endpoints
    from worker.webhooks.keys import WebhookKeys

    endpoints = Endpoints(client, WebhookKeys(prefix), cipher=MultiFernet([Fernet(Fernet.generate_key())]))
    endpoint, first = endpoints.add("https://example.test/hook", now=1000.0)
    second = endpoints.rotate(endpoint.id, now=1000.0, keep_seconds=60)
    shown = endpoints.get(endpoint.id)
    assert shown is not None and shown.signing_secrets(1030.0) == [second, first]
    assert shown.signing_secrets(1061.0) == [second]
    third = endpoints.rotate(endpoint.id, now=1100.0, keep_seconds=0)
    shown = endpoints.get(endpoint.id)
    assert shown is not None and shown.signing_secrets(1100.0) == [third]
