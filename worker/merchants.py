"""Merchant accounts: the one configured by ``BLUEPAY_*`` (named ``default``) and the others ``BLUEPAY_ACCOUNTS`` names.

``BLUEPAY_ACCOUNTS`` is a JSON object, or ``@/path/to/file.json`` holding one::

    {"shop2": {"account_id": "100000000002", "secret_key": "...", "mode": "TEST",
               "url": "https://secure.bluepay.com/interfaces/", "hash_type": "HMAC_SHA512",
               "platform_merchant_id": "", "rate_limit": "10/s", "stq_rate_limit": "2/s",
               "breaker_failures": 5, "breaker_cooldown": "30s"}}

``account_id`` and ``secret_key`` are required; the rest default to the ``BLUEPAY_*`` / ``GATEWAY_*`` settings. Each
account has its own gateway client, rate limit and circuit breaker (worker/guard/): one merchant's outage or limit
never holds another's payments. Payments name theirs with ``merchant=NAME`` (docs/merchants.md).
"""
from __future__ import annotations

from worker.config import DEFAULT, MerchantAccount, parse_accounts, valid_name

__all__ = ["DEFAULT", "MerchantAccount", "parse_accounts", "valid_name"]
