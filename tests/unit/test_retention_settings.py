"""Retention's settings (worker/config.py): PAYMENTS_RETENTION, PAYMENTS_DATA_DIR, PAYMENTS_ARCHIVE_URL, the sweep's
archive bounds and RESULT_EXPIRES, read from the environment and wired into Celery's result_expires."""
from __future__ import annotations

import pytest

from celeryconfig import config_for
from worker.config import MIN_RETENTION, ConfigError, Settings

NAMES = ("PAYMENTS_RETENTION", "PAYMENTS_DATA_DIR", "PAYMENTS_ARCHIVE_URL", "PAYMENTS_ARCHIVE_BATCH",
         "PAYMENTS_ARCHIVE_PER_SWEEP", "RESULT_EXPIRES")


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
