"""Test environment: which Redis databases the tiers use and the settings workers get.

Integration tests use database 9 (private key prefixes), end-to-end tests database 11, which the
e2e fixtures flush. Both are derived from REDIS_URL so that ./dev's throwaway Redis works too.
"""
from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

# A fixed Fernet key for the test run only (producer and workers must share it).
TEST_CARD_KEY = "q8z4Hn1c3l5X1Qd3GzHn8Xb3sMk3yV0cRk8Qm2vJ6pA="

TEST_CARD = {"number": "4111111111111111", "expire": "1230", "cvv2": "7391"}
CUSTOMER = {"name1": "Bob", "name2": "Tester", "addr1": "123 Test St.", "addr2": "Apt #500",
            "city": "Testville", "state": "IL", "zipcode": "54321", "country": "USA"}


def redis_url_with_db(db: int, base: str | None = None) -> str:
    parts = urlsplit(base or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


INTEGRATION_REDIS_URL = os.environ.get("TEST_REDIS_URL") or redis_url_with_db(9)
E2E_REDIS_URL = os.environ.get("TEST_E2E_REDIS_URL") or redis_url_with_db(11)

# Short budgets so that fault scenarios finish in seconds; the relations between them
# (visibility > hard limit > soft limit > gateway budgets) hold as in production.
WORKER_SETTINGS = {
    "REDIS_URL": E2E_REDIS_URL,
    "PAYMENTS_CARD_KEY": TEST_CARD_KEY,
    "BLUEPAY_MODE": "TEST",
    "GATEWAY_CONNECT_TIMEOUT": "1",
    "GATEWAY_READ_TIMEOUT": "2",
    "GATEWAY_RETRY_ATTEMPTS": "3",
    "GATEWAY_RETRY_SECONDS": "2",
    # A request the client gave up on may commit this long after (> connect + read timeouts).
    "GATEWAY_COMMIT_HORIZON": "5",
    "OUTAGE_RETRIES": "4",
    "OUTAGE_BACKOFF": "0.5",
    "OUTAGE_BACKOFF_MAX": "2",
    "BROKER_VISIBILITY_TIMEOUT": "60",
    "RECONCILE_AFTER": "2",
    "STALE_AUTH_AGE": "7d",
}


def apply_to_this_process():
    """Producers in the test process must talk to the same Redis with the same card key."""
    for key, value in WORKER_SETTINGS.items():
        os.environ[key] = value
