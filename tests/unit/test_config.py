"""worker.config: durations, the relations Settings.check enforces, and reading the environment."""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from worker.config import DEFAULT_REDIS_URL, REAL_BLUEPAY_URL, ConfigError, Settings, parse_duration

ENV_NAMES = (
    "REDIS_URL", "PAYMENTS_KEY_PREFIX", "BLUEPAY_ACCOUNT_ID", "BLUEPAY_SECRET_KEY", "BLUEPAY_MODE", "BLUEPAY_URL",
    "BLUEPAY_HASH_TYPE", "PAYMENTS_CARD_KEY", "GATEWAY_CONNECT_TIMEOUT", "GATEWAY_READ_TIMEOUT",
    "GATEWAY_RETRY_ATTEMPTS", "GATEWAY_RETRY_SECONDS", "OUTAGE_RETRIES", "OUTAGE_BACKOFF", "OUTAGE_BACKOFF_MAX",
    "BROKER_VISIBILITY_TIMEOUT", "STALE_AUTH_AGE", "SWEEP_INTERVAL", "RECONCILE_AFTER", "RECONCILE_GIVE_UP",
    "FLOWER_BASIC_AUTH", "GATEWAY_COMMIT_HORIZON", "LEASE_SECONDS",
    "REDIS_SENTINELS", "REDIS_MASTER_NAME", "REDIS_PASSWORD", "REDIS_SENTINEL_PASSWORD", "REDIS_MIN_REPLICAS_ACK",
    "REDIS_REPLICA_ACK_TIMEOUT", "WORKER_METRICS_PORT", "PAYMENTS_ARCHIVE_BATCH", "PAYMENTS_ARCHIVE_PER_SWEEP",
)


@pytest.fixture
def clean_env(monkeypatch):
    """No setting from the test process (tests/conftest.py sets the e2e ones) leaks into from_env()."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("text,seconds", [
    ("90", 90.0),
    ("0", 0.0),
    ("1.5", 1.5),
    ("1s", 1.0),
    ("45S", 45.0),
    ("5m", 300.0),
    ("1.5h", 5400.0),
    ("2H", 7200.0),
    ("7d", 604800.0),
    (" 10 s ", 10.0),
    ("0.25s", 0.25),
    (90, 90.0),
    (2.5, 2.5),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", " ", "abc", "5w", "-5", "-5s", "1e3", "5ms", "m", "5 m s", "1,5h", "1:30",
                                  "five", "s5"])
def test_parse_duration_refuses_what_is_not_a_duration(text):
    with pytest.raises(ConfigError) as info:
        parse_duration(text, name="SWEEP_INTERVAL")
    assert "SWEEP_INTERVAL" in str(info.value)


def test_defaults_pass_the_check_and_keep_the_time_budgets_nested():
    s = Settings().check()
    assert s.redis_url == DEFAULT_REDIS_URL and s.bluepay_url == REAL_BLUEPAY_URL and s.bluepay_mode == "TEST"
    one_call = s.connect_timeout + s.read_timeout + s.retry_seconds
    # send, reconcile, send again each fit in the soft limit; the hard limit follows it; the broker must not
    # redeliver a payment that is still running.
    assert 3 * one_call < s.soft_time_limit < s.hard_time_limit < s.visibility_timeout
    assert s.call_budget == one_call
    # no gateway call starts after the operation budget, and the last one ends before the soft limit
    assert s.operation_budget > 0 and s.operation_budget + s.call_budget < s.soft_time_limit
    # the lease is a setting renewed by a heartbeat (every third of it), not derived from the time limits
    assert s.lease_seconds == 30.0
    assert s.commit_horizon == 2 * s.read_timeout + 30 == 60.0
    assert s.commit_horizon > s.connect_timeout + s.read_timeout
    assert s.stale_auth_age == 7 * 86400 and s.sweep_interval == 300 and s.reconcile_after == 600


@pytest.mark.parametrize("mode", ["test", "Live", "", "PROD"])
def test_check_refuses_a_mode_other_than_test_or_live(mode):
    with pytest.raises(ConfigError, match="BLUEPAY_MODE"):
        Settings(bluepay_mode=mode).check()


LIVE_ACCOUNT: dict[str, Any] = {"bluepay_account_id": "100228390579",
                                "bluepay_secret_key": "MERCHANTSOWNSECRET00000000000001"}


def test_check_accepts_live_with_the_merchants_own_account():
    assert Settings(bluepay_mode="LIVE", **LIVE_ACCOUNT).check().bluepay_mode == "LIVE"


@pytest.mark.parametrize("account", [
    {},  # the defaults: the sandbox's demo account and secret
    {"bluepay_account_id": "100228390579"},  # the demo secret left behind
    {"bluepay_secret_key": "MERCHANTSOWNSECRET00000000000001"},  # the demo account left behind
])
def test_live_mode_refuses_the_sandbox_demo_credentials(account: dict[str, Any]):
    with pytest.raises(ConfigError, match="BLUEPAY_MODE=LIVE with the sandbox's demo"):
        Settings(bluepay_mode="LIVE", **account).check()
    assert Settings(bluepay_mode="TEST", **account).check()  # TEST against the sandbox is what they are for


@pytest.mark.parametrize("url,ok", [
    ("https://secure.bluepay.com/interfaces/", True),
    ("http://127.0.0.1:8001/interfaces/", True),  # a local TLS-terminating proxy or the sandbox on loopback
    ("http://gateway.internal/interfaces/", False),
])
def test_live_mode_wants_https_off_loopback(url, ok):
    s = Settings(bluepay_mode="LIVE", bluepay_url=url, **LIVE_ACCOUNT)
    if ok:
        assert s.check()
    else:
        with pytest.raises(ConfigError, match=r"BLUEPAY_URL.*https"):
            s.check()


@pytest.mark.parametrize("value,needle", [
    ("HMAC-SHA512", "did you mean HMAC_SHA512?"),
    ("SHA-256", "did you mean SHA256?"),
    ("SHA1", "is not one of MD5, SHA256, SHA512, HMAC_SHA256, HMAC_SHA512"),
])
def test_an_unknown_hash_type_is_refused_with_a_suggestion(value, needle):
    with pytest.raises(ConfigError, match="BLUEPAY_HASH_TYPE") as info:
        Settings(bluepay_hash_type=value).check()
    assert needle in str(info.value)


@pytest.mark.parametrize("url", ["htp:/secure.bluepay.com/interfaces/", "secure.bluepay.com/interfaces/",
                                 "https:///interfaces/", "ftp://secure.bluepay.com/"])
def test_a_bluepay_url_that_is_not_an_http_url_is_refused(url):
    with pytest.raises(ConfigError, match="BLUEPAY_URL"):
        Settings(bluepay_url=url).check()


@pytest.mark.parametrize("secret", ["SECRET\n", " SECRET", "SEC RET", ""])
def test_a_secret_key_with_whitespace_or_empty_is_refused(secret):
    with pytest.raises(ConfigError, match="BLUEPAY_SECRET_KEY"):
        Settings(bluepay_secret_key=secret).check()


def test_check_refuses_a_visibility_timeout_not_above_the_hard_time_limit():
    hard = Settings().hard_time_limit
    with pytest.raises(ConfigError, match="BROKER_VISIBILITY_TIMEOUT"):
        Settings(visibility_timeout=hard).check()
    with pytest.raises(ConfigError, match="BROKER_VISIBILITY_TIMEOUT"):
        Settings(visibility_timeout=60).check()
    assert Settings(visibility_timeout=hard + 1).check()


def test_shorter_gateway_budgets_allow_a_shorter_visibility_timeout():
    # the e2e settings (tests/support/env.py): 1 s connect, 2 s read, 2 s retries, 5 s horizon, 60 s visibility
    s = Settings(connect_timeout=1, read_timeout=2, retry_seconds=2, visibility_timeout=60,
                 commit_horizon_setting=5).check()
    assert s.hard_time_limit < 60 and s.commit_horizon == 5


# ---- GATEWAY_COMMIT_HORIZON: how long a request the client gave up on may still commit ------------------

@pytest.mark.parametrize("read_timeout,horizon", [(15.0, 60.0), (2.0, 34.0), (0.5, 31.0), (60.0, 150.0)])
def test_commit_horizon_defaults_to_twice_the_read_timeout_plus_30_s(read_timeout, horizon):
    s = Settings(read_timeout=read_timeout)
    assert s.commit_horizon_setting is None and s.commit_horizon == horizon
    assert s.check().commit_horizon == horizon


@pytest.mark.parametrize("connect,read,horizon,ok", [
    (3.05, 15.0, 18.05, False),  # equal to connect + read: a request given up on at the read timeout may commit
    (3.05, 15.0, 18.0, False),
    (3.05, 15.0, 0.0, False),
    (1.0, 2.0, 3.0, False),
    (3.05, 15.0, 18.06, True),
    (1.0, 2.0, 5.0, True),
    (3.05, 15.0, 3600.0, True),
], ids=["equal", "below", "zero", "e2e-equal", "just-above", "e2e", "an-hour"])
def test_commit_horizon_must_exceed_the_connect_and_read_timeouts(connect, read, horizon, ok):
    s = Settings(connect_timeout=connect, read_timeout=read, commit_horizon_setting=horizon)
    if ok:
        assert s.check().commit_horizon == horizon
    else:
        with pytest.raises(ConfigError, match="GATEWAY_COMMIT_HORIZON"):
            s.check()


@pytest.mark.parametrize("text,seconds", [("90", 90.0), ("2m", 120.0), ("45s", 45.0), ("1h", 3600.0)])
def test_commit_horizon_from_env(clean_env, text, seconds):
    clean_env.setenv("GATEWAY_COMMIT_HORIZON", text)
    assert Settings.from_env().commit_horizon == seconds


def test_commit_horizon_from_env_unset_or_blank_is_derived(clean_env):
    assert Settings.from_env().commit_horizon == 60.0
    clean_env.setenv("GATEWAY_COMMIT_HORIZON", "  ")
    clean_env.setenv("GATEWAY_READ_TIMEOUT", "5")
    assert Settings.from_env().commit_horizon == 40.0


@pytest.mark.parametrize("value", ["0", "10", "18", "soon", "-5"])
def test_commit_horizon_from_env_refused(clean_env, value):
    clean_env.setenv("GATEWAY_COMMIT_HORIZON", value)
    with pytest.raises(ConfigError, match="GATEWAY_COMMIT_HORIZON"):
        Settings.from_env()


# ---- LEASE_SECONDS: a setting (renewed by the heartbeat every third of it), at least 3 s -----------------

@pytest.mark.parametrize("lease,ok", [
    (3.0, True),
    (30.0, True),
    (600.0, True),  # renewed while a call is in flight: no relation to the visibility timeout is required
    (2.9, False),
    (1.0, False),
    (0.0, False),
])
def test_lease_seconds_must_be_at_least_3_s(lease, ok):
    s = Settings(lease_seconds=lease)
    if ok:
        assert s.check().lease_seconds == lease
    else:
        with pytest.raises(ConfigError, match="LEASE_SECONDS"):
            s.check()


def test_lease_seconds_is_a_plain_setting_not_derived_from_the_time_limits():
    # it used to be a property derived from the hard time limit; now it is a field read from LEASE_SECONDS
    assert "lease_seconds" in {f.name for f in dataclasses.fields(Settings)}
    assert Settings(lease_seconds=12).lease_seconds == 12.0
    assert Settings(read_timeout=100, visibility_timeout=1000).lease_seconds == 30.0


def test_lease_seconds_from_env(clean_env):
    clean_env.setenv("LEASE_SECONDS", "45s")
    assert Settings.from_env().lease_seconds == 45.0
    clean_env.setenv("LEASE_SECONDS", "1")
    with pytest.raises(ConfigError, match="LEASE_SECONDS"):
        Settings.from_env()
    clean_env.setenv("LEASE_SECONDS", "a while")
    with pytest.raises(ConfigError, match="LEASE_SECONDS"):
        Settings.from_env()


def test_from_env_reads_every_setting(clean_env):
    values = {
        "REDIS_URL": "redis://example:6380/3", "PAYMENTS_KEY_PREFIX": "p2:", "BLUEPAY_ACCOUNT_ID": "123456789012",
        "BLUEPAY_SECRET_KEY": "S" * 32, "BLUEPAY_MODE": "live", "BLUEPAY_URL": "http://127.0.0.1:8001/interfaces/",
        "BLUEPAY_HASH_TYPE": "hmac_sha256", "PAYMENTS_CARD_KEY": "k", "GATEWAY_CONNECT_TIMEOUT": "2",
        "GATEWAY_READ_TIMEOUT": "20s", "GATEWAY_RETRY_ATTEMPTS": "6", "GATEWAY_RETRY_SECONDS": "8",
        "OUTAGE_RETRIES": "7", "OUTAGE_BACKOFF": "1s", "OUTAGE_BACKOFF_MAX": "2m",
        "BROKER_VISIBILITY_TIMEOUT": "1h", "STALE_AUTH_AGE": "3d", "SWEEP_INTERVAL": "1m",
        "RECONCILE_AFTER": "15m", "RECONCILE_GIVE_UP": "2d", "FLOWER_BASIC_AUTH": "ops:pw",
        "GATEWAY_COMMIT_HORIZON": "90s", "LEASE_SECONDS": "20",
    }
    for name, value in values.items():
        clean_env.setenv(name, value)
    s = Settings.from_env()
    assert (s.redis_url, s.key_prefix, s.bluepay_account_id, s.bluepay_secret_key) == (
        "redis://example:6380/3", "p2:", "123456789012", "S" * 32)
    assert (s.bluepay_mode, s.bluepay_url, s.bluepay_hash_type, s.card_key) == (
        "LIVE", "http://127.0.0.1:8001/interfaces/", "HMAC_SHA256", "k")
    assert (s.connect_timeout, s.read_timeout, s.retry_attempts, s.retry_seconds) == (2.0, 20.0, 6, 8.0)
    assert (s.outage_retries, s.outage_backoff, s.outage_backoff_max) == (7, 1.0, 120.0)
    assert (s.visibility_timeout, s.stale_auth_age, s.sweep_interval) == (3600.0, 3 * 86400.0, 60.0)
    assert (s.reconcile_after, s.reconcile_give_up, s.flower_basic_auth) == (900.0, 2 * 86400.0, "ops:pw")
    assert (s.commit_horizon, s.lease_seconds) == (90.0, 20.0)


def test_from_env_uses_the_defaults_for_unset_or_blank_values(clean_env):
    clean_env.setenv("STALE_AUTH_AGE", "   ")
    clean_env.setenv("REDIS_URL", "")
    assert Settings.from_env() == Settings()


@pytest.mark.parametrize("name,value", [
    ("STALE_AUTH_AGE", "a week"),
    ("SWEEP_INTERVAL", "5 minutes"),
    ("RECONCILE_AFTER", "-1"),
    ("BROKER_VISIBILITY_TIMEOUT", "300ms"),
    ("GATEWAY_RETRY_ATTEMPTS", "four"),
    ("OUTAGE_RETRIES", "2.5"),
    ("BLUEPAY_MODE", "SANDBOX"),
    ("BROKER_VISIBILITY_TIMEOUT", "30"),
    ("REDIS_MIN_REPLICAS_ACK", "one"),
    ("WORKER_METRICS_PORT", "http"),
    ("PAYMENTS_ARCHIVE_BATCH", "lots"),
    ("PAYMENTS_ARCHIVE_PER_SWEEP", "1e4"),
    ("GATEWAY_RETRY_ATTEMPTS", "0"),
    ("OUTAGE_RETRIES", "-1"),
    ("GATEWAY_CONNECT_TIMEOUT", "0"),
    ("BLUEPAY_HASH_TYPE", "HMAC-SHA512"),
    ("BLUEPAY_URL", "htp:/secure.bluepay.com/interfaces/"),
    ("BLUEPAY_ACCOUNT_ID", "1002 2839 0579"),
    ("REDIS_URL", "127.0.0.1:6379"),
    ("FLOWER_BASIC_AUTH", "admin"),
])
def test_from_env_turns_bad_values_into_a_config_error_naming_the_setting(clean_env, name, value):
    clean_env.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        Settings.from_env()
    assert name in str(info.value)


def test_repr_never_shows_secrets():
    s = Settings(bluepay_secret_key="TOPSECRETKEY", card_key="CARDKEY", flower_basic_auth="ops:pw")
    text = repr(s) + str(s)
    for secret in ("TOPSECRETKEY", "CARDKEY", "ops:pw"):
        assert secret not in text
    assert DEFAULT_REDIS_URL in text


def test_describe_was_removed():
    # dead code, removed on purpose: repr (secrets excluded) is what the CLI and logs use
    assert not hasattr(Settings, "describe")


def test_submit_expiry_and_skew_margin_defaults():
    s = Settings().check()
    assert s.submit_expiry == 180.0 and s.submit_expiry_minutes == 3 and s.clock_skew_margin == 60.0


@pytest.mark.parametrize("expiry,margin,ok", [
    (60.0, 0.0, True),
    (120.0, 60.0, True),
    (90.0, 0.0, False),   # not whole minutes: TRANS_EXPIRE_PERIOD is "N MINUTES"
    (0.0, 0.0, False),
    (60.0, 45.0, False),  # one attempt (18.05 s) + 45 s > 60 s: a gateway clock that far ahead refuses everything
    (180.0, -1.0, False),
])
def test_submit_expiry_must_be_whole_minutes_longer_than_an_attempt_plus_the_margin(expiry, margin, ok):
    s = Settings(submit_expiry=expiry, clock_skew_margin=margin)
    if ok:
        assert s.check().submit_expiry == expiry
    else:
        with pytest.raises(ConfigError, match=r"GATEWAY_SUBMIT_EXPIRY|GATEWAY_CLOCK_SKEW_MARGIN"):
            s.check()


def test_submit_expiry_and_margin_from_env(clean_env):
    clean_env.setenv("GATEWAY_SUBMIT_EXPIRY", "5m")
    clean_env.setenv("GATEWAY_CLOCK_SKEW_MARGIN", "30s")
    s = Settings.from_env()
    assert s.submit_expiry_minutes == 5 and s.clock_skew_margin == 30.0
    clean_env.setenv("GATEWAY_SUBMIT_EXPIRY", "soon")
    with pytest.raises(ConfigError, match="GATEWAY_SUBMIT_EXPIRY"):
        Settings.from_env()


def test_the_flow_gets_the_expiry_and_margin():
    from worker.services import Services

    flow = Services(Settings(submit_expiry=120.0, clock_skew_margin=15.0)).flow
    assert flow.expire_minutes == 2 and flow.skew_margin == 15.0


def test_the_hash_types_config_accepts_are_the_ones_the_gateway_computes():
    # config imports nothing of ours (tests/unit/test_import_rules.py), so it names them itself
    from worker.config import HASH_TYPES
    from worker.gateway.seal import HASH_TYPES as COMPUTED

    assert HASH_TYPES == COMPUTED
