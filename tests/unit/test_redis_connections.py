"""worker.redis_connections: REDIS_SENTINELS parsing, the settings' checks and what Celery is given."""
from __future__ import annotations

import dataclasses

import pytest

from worker.broker.celeryconfig import celery_settings
from worker.config import ConfigError, Settings
from worker.redis_connections import describe, parse_sentinels

SENTINEL = dataclasses.replace(Settings(), redis_url="redis://ignored:1/4", redis_sentinels="10.0.0.1:26379, s2:26380",
                               redis_master_name="pay", redis_password="p@ss:/", redis_sentinel_password="sp")


def test_parse_sentinels():
    assert parse_sentinels("h1:26379, h2:26380,") == [("h1", 26379), ("h2", 26380)]
    assert parse_sentinels("[::1]:26379") == [("::1", 26379)]
    assert parse_sentinels("") == []


@pytest.mark.parametrize("text", ["h1", "h1:", ":26379", "h1:port", "h1:70000", "h1:0"])
def test_parse_sentinels_names_a_bad_entry(text):
    with pytest.raises(ValueError, match="REDIS_SENTINELS"):
        parse_sentinels(text)


def test_replica_acks_default_to_one_under_sentinel_and_zero_on_one_node():
    assert Settings().min_replicas_ack == 0
    assert SENTINEL.min_replicas_ack == 1
    assert dataclasses.replace(SENTINEL, min_replicas_ack_setting=0).min_replicas_ack == 0


@pytest.mark.parametrize("changes,message", [
    ({"redis_sentinels": "nope"}, "REDIS_SENTINELS"),
    ({"redis_master_name": " "}, "REDIS_MASTER_NAME"),
    ({"min_replicas_ack_setting": -1}, "REDIS_MIN_REPLICAS_ACK"),
    ({"replica_ack_timeout": 0.0}, "REDIS_REPLICA_ACK_TIMEOUT"),
])
def test_bad_sentinel_settings_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(SENTINEL, **changes).check()


def test_the_environment_drives_sentinel_settings(monkeypatch):
    monkeypatch.setenv("REDIS_SENTINELS", "a:1,b:2")
    monkeypatch.setenv("REDIS_MASTER_NAME", "m")
    monkeypatch.setenv("REDIS_MIN_REPLICAS_ACK", "2")
    monkeypatch.setenv("REDIS_REPLICA_ACK_TIMEOUT", "0.25")
    s = Settings.from_env()
    assert (s.redis_sentinels, s.redis_master_name, s.min_replicas_ack, s.replica_ack_timeout) == ("a:1,b:2", "m", 2,
                                                                                                    0.25)


def test_one_node_gives_celery_redis_url():
    conf = celery_settings(Settings())
    assert conf["broker_url"] == conf["result_backend"] == Settings().redis_url
    assert conf["broker_transport"] is None and not conf["broker_channel_error_retry"]


def test_sentinel_gives_celery_sentinel_urls_the_master_name_and_the_sentinels_password():
    conf = celery_settings(SENTINEL)
    assert conf["broker_url"] == "sentinel://:p%40ss%3A%2F@10.0.0.1:26379/4;sentinel://:p%40ss%3A%2F@s2:26380/4"
    assert conf["result_backend"].endswith("+" + conf["broker_url"])
    for key in ("broker_transport_options", "result_backend_transport_options"):
        assert conf[key] == {"master_name": "pay", "sentinel_kwargs": {"password": "sp"}}
    assert conf["broker_channel_error_retry"] is True


def test_kombu_and_celery_read_the_password_back():
    from celery import Celery
    from kombu import Connection

    conf = celery_settings(SENTINEL)
    from worker.broker.sentinel import SentinelTransport

    conn = Connection(conf["broker_url"], transport_options=conf["broker_transport_options"])
    assert conn.password == "p@ss:/" and isinstance(conn.transport, SentinelTransport)
    # kombu's failover to the next sentinel URL resolves the scheme again: still ours
    conn.switch(conf["broker_url"].split(";")[1])
    assert isinstance(conn.transport, SentinelTransport)
    app = Celery(set_as_current=False)
    app.conf.update(result_backend=conf["result_backend"],
                    result_backend_transport_options=conf["result_backend_transport_options"])
    assert app.backend.connparams["password"] == "p@ss:/" and app.backend.connparams["db"] == 4


def test_describe_never_shows_a_password():
    assert "p@ss" not in describe(SENTINEL) and "pay" in describe(SENTINEL)
    one = dataclasses.replace(Settings(), redis_url="redis://:secret@h:6390/2")
    assert describe(one) == "redis://h:6390/2"
