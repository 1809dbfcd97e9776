"""Several merchant accounts (worker/merchants.py): BLUEPAY_ACCOUNTS as settings, the flow's records and keys bound to
their merchant, the sweep routing each record to its merchant's flow. Fakes only (no Redis, no gateway)."""
from __future__ import annotations

import dataclasses
import json
import types

import pytest

from tests.support.fake_gateway import FakeGateway, reply
from worker.config import ConfigError, Settings
from worker.merchants import DEFAULT

from .test_config import clean_env  # noqa: F401  (fixture)
from .test_flow import CARD, CUSTOMER, make_flow, new_id

SHOP2 = {"account_id": "100000000002", "secret_key": "SHOP2SECRETKEY00000000000000000", "rate_limit": "10/s",
         "breaker_failures": 3, "breaker_cooldown": "5s"}


def test_accounts_inherit_what_they_do_not_say(clean_env):  # noqa: F811
    clean_env.setenv("BLUEPAY_ACCOUNTS", json.dumps({"shop2": SHOP2, "shop3": {"account_id": "100000000003",
                                                                              "secret_key": "S3", "mode": "live",
                                                                              "url": "https://gw.example/interfaces/"}}))
    clean_env.setenv("BLUEPAY_URL", "http://127.0.0.1:8001/interfaces/")
    clean_env.setenv("GATEWAY_BREAKER_FAILURES", "7")
    s = Settings.from_env()
    assert s.merchant_names == (DEFAULT, "shop2", "shop3")
    shop2, shop3 = s.account("shop2"), s.account("shop3")
    assert (shop2.account_id, shop2.mode, shop2.url) == ("100000000002", "TEST", "http://127.0.0.1:8001/interfaces/")
    assert (shop2.guard.rate, shop2.guard.look_rate, shop2.guard.breaker_failures, shop2.guard.cooldown) == (
        8.0, 2.0, 3, 5.0)
    assert (shop3.mode, shop3.guard.breaker_failures, shop3.guard.rate) == ("LIVE", 7, 0.0)
    assert s.account(DEFAULT).account_id == s.bluepay_account_id
    with pytest.raises(KeyError):
        s.account("nope")


def test_accounts_from_a_file(clean_env, tmp_path):  # noqa: F811
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps({"shop2": SHOP2}))
    clean_env.setenv("BLUEPAY_ACCOUNTS", f"@{path}")
    assert Settings.from_env().merchant_names == (DEFAULT, "shop2")


@pytest.mark.parametrize(("accounts", "says"), [
    ("[1]", "JSON object"),
    ("{nope", "not JSON"),
    ('{"default": {}}', "not 'default'"),
    ('{"unknown": {}}', "'unknown' or 'other'"),  # the metrics' merchant label of a refused name
    ('{"other": {}}', "'unknown' or 'other'"),
    ('{"Shop": {}}', "lower-case"),
    ('{"shop2": {"account_id": "1"}}', "secret_key: required"),
    ('{"shop2": {"account_id": "1", "secret_key": "s", "colour": "red"}}', "unknown field"),
    ('{"shop2": {"account_id": "1 2", "secret_key": "s"}}', "account_id"),
    ('{"shop2": {"account_id": "1", "secret_key": "s", "mode": "PROD"}}', "mode"),
    ('{"shop2": {"account_id": "1", "secret_key": "s", "rate_limit": "fast"}}', "rate_limit"),
    ('{"shop2": {"account_id": "100000000002", "secret_key": "s", "mode": "LIVE", "url": "http://gw.example/"}}',
     "https"),
    ("@/nonexistent/accounts.json", "cannot read"),
])
def test_a_bad_account_is_named(clean_env, accounts, says):  # noqa: F811
    clean_env.setenv("BLUEPAY_ACCOUNTS", accounts)
    with pytest.raises(ConfigError, match="BLUEPAY_ACCOUNTS") as raised:
        Settings.from_env()
    assert says in str(raised.value)


def test_a_merchants_records_name_it_and_its_keys_are_its_own(store):
    pid = new_id("key")
    shop2 = dataclasses.replace(make_flow(store, FakeGateway([reply()])), merchant="shop2")
    outcome = shop2.charge("sale", pid, amount="3.00", card=dict(CARD), customer=CUSTOMER)
    assert outcome["status"] == "APPROVED" and outcome["merchant"] == "shop2"
    assert store.get(pid)["merchant"] == "shop2"
    again = dataclasses.replace(make_flow(store, FakeGateway()), merchant="shop2")
    assert again.charge("sale", pid, amount="3.00", card=dict(CARD), customer=CUSTOMER)["status"] == "APPROVED"
    # the same key and request under another merchant account: refused, nothing sent
    default = make_flow(store, FakeGateway())
    other = default.charge("sale", pid, amount="3.00", card=dict(CARD), customer=CUSTOMER)
    assert other["error_class"] == "IdempotencyMismatch" and default.gateway.sends == []
    plain = new_id("key")
    assert "merchant" not in make_flow(store, FakeGateway([reply()])).charge(
        "sale", plain, amount="3.00", card=dict(CARD), customer=CUSTOMER)  # the default account's: as ever


def test_the_sweep_takes_each_record_to_its_merchants_flow():
    from worker.payments.sweep import flow_of

    default, shop2 = object(), object()
    settings = types.SimpleNamespace(merchant_names=(DEFAULT, "shop2"))
    svc = types.SimpleNamespace(settings=settings, flow=default, flow_for=lambda name: {"shop2": shop2}[name])
    assert flow_of(svc, {"payment_id": "a"}) is default
    assert flow_of(svc, {"payment_id": "b", "merchant": "shop2"}) is shop2
    assert flow_of(svc, {"payment_id": "c", "merchant": "gone"}) is None  # no longer configured: left alone


def test_a_merchants_misconfiguration_names_its_own_settings():
    from worker.config import MerchantAccount
    from worker.gateway import OutcomeUnknown
    from worker.ops.preflight import diagnose

    settings = dataclasses.replace(Settings(), accounts=(MerchantAccount("shop2", "100000000002", "S2",
                                                                         url="https://gw.example/interfaces/"),))
    refused = OutcomeUnknown("unverified reply: SECURITY ERROR")
    found = diagnose(refused, settings, "shop2")
    assert found is not None and "BLUEPAY_ACCOUNTS['shop2'].secret_key" in found.message
    assert "100000000002" in found.message and "BLUEPAY_SECRET_KEY" not in found.message
    missing = diagnose(OutcomeUnknown("HTTP 404", status_code=404), settings, "shop2")
    assert missing is not None and "BLUEPAY_ACCOUNTS['shop2'].url" in missing.message
    default = diagnose(refused, settings)
    assert default is not None and "BLUEPAY_SECRET_KEY" in default.message  # the default account: as ever


def test_each_account_has_its_own_cap_in_flight(clean_env):  # noqa: F811
    clean_env.setenv("GATEWAY_MAX_IN_FLIGHT", "4")
    clean_env.setenv("BLUEPAY_ACCOUNTS", json.dumps({"shop2": {**SHOP2, "max_in_flight": 2},
                                                     "shop3": {"account_id": "100000000003", "secret_key": "S3"}}))
    s = Settings.from_env()
    assert (s.guard.max_in_flight, s.account("shop2").guard.max_in_flight,
            s.account("shop3").guard.max_in_flight) == (4, 2, 4)
    for bad in (-1, "2", 1.5, True):
        clean_env.setenv("BLUEPAY_ACCOUNTS", json.dumps({"shop2": {**SHOP2, "max_in_flight": bad}}))
        with pytest.raises(ConfigError, match=r"BLUEPAY_ACCOUNTS\['shop2'\].max_in_flight"):
            Settings.from_env()
