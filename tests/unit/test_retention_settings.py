"""Retention's settings (worker/config.py): PAYMENTS_RETENTION, PAYMENTS_DATA_DIR, PAYMENTS_ARCHIVE_URL, the sweep's
archive bounds and RESULT_EXPIRES, read from the environment and wired into Celery's result_expires."""
from __future__ import annotations

import pytest

from celeryconfig import config_for
from worker.config import MIN_RETENTION, ConfigError, Settings

NAMES = ("PAYMENTS_RETENTION", "PAYMENTS_DATA_DIR", "PAYMENTS_ARCHIVE_URL", "PAYMENTS_ARCHIVE_BATCH",
         "PAYMENTS_ARCHIVE_PER_SWEEP", "RESULT_EXPIRES", "PAYMENTS_KEY_RETENTION")
DAY = 86400


@pytest.fixture
def env(monkeypatch):
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults(env):
    s = Settings.from_env()
    assert s.retention == 30 * 86400 and s.result_expires == 86400
    assert s.archive_url == "sqlite:///.data/archive.sqlite3"
    assert (s.archive_batch, s.archive_per_sweep) == (500, 20_000)
    assert config_for(s)["result_expires"] == 86400


def test_read_from_the_environment_like_the_other_durations(env):
    env.setenv("PAYMENTS_RETENTION", "90d")
    env.setenv("RESULT_EXPIRES", "6h")
    env.setenv("PAYMENTS_DATA_DIR", "/var/lib/payments")
    env.setenv("PAYMENTS_ARCHIVE_BATCH", "200")
    env.setenv("PAYMENTS_ARCHIVE_PER_SWEEP", "5000")
    s = Settings.from_env()
    assert s.retention == 90 * 86400 and s.result_expires == 6 * 3600
    assert s.archive_url == "sqlite:////var/lib/payments/archive.sqlite3"
    assert (s.archive_batch, s.archive_per_sweep) == (200, 5000)
    assert config_for(s)["result_expires"] == 6 * 3600
    env.setenv("PAYMENTS_ARCHIVE_URL", "postgresql+psycopg://payments@db/payments")
    assert Settings.from_env().archive_url == "postgresql+psycopg://payments@db/payments"


def test_zero_turns_retention_off(env):
    env.setenv("PAYMENTS_RETENTION", "0")
    assert Settings.from_env().retention == 0


@pytest.mark.parametrize("value", ["12h", "3600", str(MIN_RETENTION - 1)])
def test_a_retention_shorter_than_a_day_is_refused(env, value):
    env.setenv("PAYMENTS_RETENTION", value)
    with pytest.raises(ConfigError, match=r"PAYMENTS_RETENTION \(.*\) must be at least 86400s"):
        Settings.from_env()


@pytest.mark.parametrize("name,value", [("PAYMENTS_RETENTION", "thirty days"), ("RESULT_EXPIRES", "1w"),
                                        ("PAYMENTS_ARCHIVE_BATCH", "0"), ("PAYMENTS_ARCHIVE_PER_SWEEP", "x")])
def test_bad_values_are_a_clear_config_error(env, name, value):
    env.setenv(name, value)
    with pytest.raises(ConfigError):
        Settings.from_env()


def test_keys_are_honoured_90_days_or_the_retention_when_longer(env):
    assert Settings.from_env().key_retention == 90 * DAY
    env.setenv("PAYMENTS_RETENTION", "120d")
    assert Settings.from_env().key_retention == 120 * DAY
    env.setenv("PAYMENTS_KEY_RETENTION", "400d")
    assert Settings.from_env().key_retention == 400 * DAY


@pytest.mark.parametrize(("retention", "key_retention"), [("30d", "29d"), ("1d", "10d"), ("60d", "45d")])
def test_a_key_retention_shorter_than_stqs_lookback_or_the_retention_is_refused(env, retention, key_retention):
    env.setenv("PAYMENTS_RETENTION", retention)
    env.setenv("PAYMENTS_KEY_RETENTION", key_retention)
    with pytest.raises(ConfigError, match="PAYMENTS_KEY_RETENTION"):
        Settings.from_env()
