"""Webhooks against a real Redis and a real HTTP receiver on loopback that verifies every delivery with the
``standardwebhooks`` package: transitions written by the store's own Lua become signed events; a receiver that
fails 30 % of the time, answers garbage, hangs past the timeout or is down for an hour (injected clock) still gets
every event, with the same id on every attempt; a drain that dies after reading or after claiming loses nothing;
the last attempt puts a delivery in the failed set; an endpoint failing past WEBHOOK_DISABLE_AFTER is disabled;
replay sends again. (The card-data scan of payloads runs in tests/e2e/test_webhooks.py, with a real card.)"""
from __future__ import annotations

from typing import Any

import pytest

from tests.support.clocks import OffsetClock
from tests.support.webhook_receiver import running_receiver
from worker.store import ResultsStore
from worker.webhooks.deliverer import Deliverer
from worker.webhooks.intake import Intake
from worker.webhooks.keys import GROUP
from worker.webhooks.settings import WebhookSettings
from worker.webhooks.signing import new_secret

SALE = {"amount": "3.00", "order_id": "o-1", "masked_account": "xxxxxxxxxxxx1111", "card_type": "VISA"}


def settings(url: str, secret: str, **kw) -> WebhookSettings:
    kw.setdefault("retry_schedule", (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0))
    return WebhookSettings(url=url, secrets=(secret,), timeout=kw.pop("timeout", 1.0), drain_seconds=5.0, **kw)


def approve(store: ResultsStore, pid: str, status: str = "APPROVED", trans_id: str = "") -> None:
    store.claim(pid, "sale", owner="w1", lease_seconds=30, fields=SALE)
    trans_id = trans_id or f"1000{abs(hash(pid)) % 10**8:08d}"
    store.transition(pid, status, owner="w1", sent=True, fields={"trans_id": trans_id, "message": status.lower()})


def void(store: ResultsStore, pid: str, target_pid: str) -> None:
    target = store.get(target_pid)
    assert target is not None
    store.claim(pid, "void", owner="w1", lease_seconds=30, fields={"target": target["trans_id"], "parent": target_pid})
    store.transition(pid, "APPROVED", owner="w1", sent=True, fields={"trans_id": "9" + target["trans_id"]},
                     reflect=True)


def drain_until_quiet(deliverer: Deliverer, clock: OffsetClock, *, step: float = 0.0, rounds: int = 40) -> None:
    for _ in range(rounds):
        deliverer.drain(seconds=2.0)
        if not deliverer.deliveries.health()["undelivered"]:
            return
        if step:
            due: Any = deliverer.redis.zrange(deliverer.keys.due, 0, 0, withscores=True)
            clock.advance(max(0.0, float(due[0][1]) - clock()) + step if due else step)


@pytest.fixture
def store(client, prefix):
    return ResultsStore(client, prefix=prefix)


def test_a_sale_and_its_void_arrive_signed_in_order_with_the_stored_outcomes_fields(client, prefix, store):
    secret = new_secret()
    with running_receiver(secret) as rx:
        clock = OffsetClock()
        d = Deliverer(client, settings(rx.url, secret), prefix=prefix, clock=clock)
        d.drain(seconds=0.5)  # the first drain makes the consumer group
        approve(store, "s1", trans_id="100000000111")
        void(store, "v1", "s1")
        drain_until_quiet(d, clock)
        events = [r.event for r in rx.delivered()]
    assert all(r.verified for r in rx.got)
    of_sale = [e for e in events if e["data"]["payment_id"] == "s1"]
    assert [e["type"] for e in of_sale] == ["payment.approved", "payment.voided"]
    assert [e["data"]["sequence"] for e in of_sale] == [1, 2]
    first = of_sale[0]["data"]
    assert first["status"] == "APPROVED" and first["amount"] == "3.00" and first["trans_id"] == "100000000111"
    assert first["masked_account"] == "xxxxxxxxxxxx1111" and first["operation"] == "sale"
    assert [e["type"] for e in events if e["data"]["payment_id"] == "v1"] == ["payment.approved"]
    assert len({r.headers["webhook-id"] for r in rx.got}) == 3
    assert d.deliveries.health()["stats"]["delivered"] == 3


def test_a_receiver_failing_30_percent_and_answering_garbage_gets_every_event_with_the_same_id_on_each_try(
        client, prefix, store):
    secret = new_secret()
    # 3 of every 10 requests fail (500, a hang past the timeout, a refused-looking 502); one in ten is a 2xx of garbage
    plan: dict[int, int | str] = {0: 500, 3: "hang", 6: 502, 9: "garbage"}
    with running_receiver(secret, lambda n, body: plan.get(n % 10, 200), hang_seconds=1.5,
                          check_timestamp=False) as rx:
        clock = OffsetClock()
        d = Deliverer(client, settings(rx.url, secret, timeout=0.5), prefix=prefix, clock=clock)
        d.drain(seconds=0.5)
        for i in range(20):
            approve(store, f"p{i}", status="APPROVED" if i % 2 else "DECLINED")
        drain_until_quiet(d, clock, step=0.1)
        delivered = rx.delivered()
        tries: dict[str, set[str]] = {}
        for r in rx.got:
            tries.setdefault(r.event["data"]["payment_id"], set()).add(r.headers["webhook-id"])
    assert {r.event["data"]["payment_id"] for r in delivered} == {f"p{i}" for i in range(20)}
    assert all(len(ids) == 1 for ids in tries.values())  # every retry repeats the event's id
    assert all(r.verified for r in rx.got)
    assert len(rx.got) > 20  # some were tried again
    health = d.deliveries.health()
    assert health["undelivered"] == 0 and health["failed"] == 0 and health["stats"]["failed_attempts"] >= 3


def test_a_receiver_down_for_an_hour_gets_the_event_on_the_schedules_next_try(client, prefix, store):
    secret = new_secret()
    clock = OffsetClock()
    start = clock()
    with running_receiver(secret, lambda n, body: 503 if clock() < start + 3600 else 204,
                          check_timestamp=False) as rx:
        d = Deliverer(client, settings(rx.url, secret), prefix=prefix, clock=clock)
        d.drain(seconds=0.5)
        approve(store, "down1")
        drain_until_quiet(d, clock, step=0.01)
    # tries at 0, 5 s, 5 min 5 s, 35 min 5 s (all down), then 2 h 35 min 5 s: delivered
    assert [r.status for r in rx.got] == [503, 503, 503, 503, 204]
    assert len({r.headers["webhook-id"] for r in rx.got}) == 1 and all(r.verified for r in rx.got)
    assert d.deliveries.health()["undelivered"] == 0


def test_the_last_attempt_puts_the_delivery_in_the_failed_set_the_endpoint_is_disabled_and_replay_sends_again(
        client, prefix, store):
    secret = new_secret()
    up = {"now": False}
    with running_receiver(secret, lambda n, body: 200 if up["now"] else 500, check_timestamp=False) as rx:
        clock = OffsetClock()
        d = Deliverer(client, settings(rx.url, secret, retry_schedule=(1.0, 2.0), disable_after=2.5), prefix=prefix,
                      clock=clock)
        d.drain(seconds=0.5)
        approve(store, "f1")
        drain_until_quiet(d, clock, step=0.01)
        health = d.deliveries.health()
        assert len(rx.got) == 3 and health["failed"] == 1 and health["stats"]["exhausted"] == 1
        [failed] = d.deliveries.failed()
        assert failed["error"] == "HTTP 500"
        static = d.endpoints.get("static")
        assert static is not None and static.disabled and "WEBHOOK_DISABLE_AFTER" in static.disabled_reason
        up["now"] = True
        d.endpoints.set_enabled("static", True)
        assert d.deliveries.replay(failed["event_id"], ["static"], now=clock()) == 1
        drain_until_quiet(d, clock)
        assert rx.got[-1].status == 200 and rx.got[-1].headers["webhook-id"] == failed["event_id"]
        assert d.deliveries.health()["failed"] == 0


def test_a_reader_that_dies_before_scheduling_and_a_drain_that_dies_after_claiming_lose_nothing(
        client, prefix, store):
    secret = new_secret()
    with running_receiver(secret, check_timestamp=False) as rx:
        clock = OffsetClock()
        s = settings(rx.url, secret)
        d = Deliverer(client, s, prefix=prefix, clock=clock)
        d.intake.reclaim_after = 0.0  # a dead reader's entries are taken over at once (60 s in production)
        d.drain(seconds=0.5)
        approve(store, "c1")
        # a reader reads the transition and dies before recording its event (no ack)
        read = client.xreadgroup(GROUP, "dead-reader", {prefix + "audit": ">"}, count=10)
        assert read and read[0][1]
        approve(store, "c2")
        # a drain records and claims c2's delivery, then dies before POSTing it
        dead = Intake(client, d.keys, d.deliveries, retention=s.event_retention, consumer="dead-drain",
                      reclaim_after=3600)
        endpoints = d.endpoints.all()
        dead.run(endpoints, now=clock())
        claimed = d.deliveries.claim(now=clock(), until=clock() + s.claim_seconds, limit=10)
        assert [c.event_id for c in claimed]
        d.drain(seconds=1.0)
        assert {r.event["data"]["payment_id"] for r in rx.delivered()} == {"c1"}  # c2 waits for its claim to lapse
        clock.advance(s.claim_seconds + 1)
        drain_until_quiet(d, clock)
        got = [r.event["data"]["payment_id"] for r in rx.delivered()]
    assert sorted(got) == ["c1", "c2"]
    assert client.xpending(prefix + "audit", GROUP)["pending"] == 0


def test_a_worker_without_an_endpoint_reads_nothing_so_a_worker_with_one_still_tells(client, prefix, store):
    secret = new_secret()
    with running_receiver(secret) as rx:
        clock = OffsetClock()
        bare = Deliverer(client, WebhookSettings(), prefix=prefix, clock=clock)  # started without the settings
        told = Deliverer(client, settings(rx.url, secret), prefix=prefix, clock=clock)
        told.drain(seconds=0.5)
        approve(store, "n1")
        bare.drain(seconds=0.5)
        assert rx.got == [] and client.xpending(prefix + "audit", GROUP)["pending"] == 0
        assert told.deliveries.health()["intake_lag"] == 2  # the claim and the approval wait for a worker with one
        drain_until_quiet(told, clock)
        assert [r.event["data"]["payment_id"] for r in rx.delivered()] == ["n1"]
        assert told.deliveries.health()["intake_lag"] == 0
