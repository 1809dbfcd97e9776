"""The sealed stq probe (worker/ops/preflight.py) against the sandbox over HTTP: it tells a wrong BLUEPAY_URL or secret
(definite answers, naming the setting) from a gateway that is merely away (an outage), and during payments the
cause is logged at ERROR once per process."""
from __future__ import annotations

import logging
import uuid

import pytest

from tests.support.env import TEST_CARD
from tests.support.ports import closed_port
from tests.support.sandbox import running_sandbox
from worker.config import MerchantAccount, Settings
from worker.gateway import BluePayClient, OutcomeUnknown, RetryPolicy
from worker.ops.preflight import MisconfigurationReporter, check_at_start, probe


@pytest.fixture(scope="module")
def sandbox():
    with running_sandbox() as sb:
        yield sb


def settings_for(sandbox, **changes) -> Settings:
    base = dict(bluepay_url=sandbox.interfaces_url, bluepay_account_id=sandbox.account_id,
                bluepay_secret_key=sandbox.secret_key, connect_timeout=1.0, read_timeout=2.0)
    return Settings(**{**base, **changes}).check()


def test_the_right_settings_pass_the_probe_and_create_nothing(sandbox):
    before = sandbox.stats()["requests"].get("bp10emu", 0)
    assert probe(settings_for(sandbox)).ok
    assert sandbox.stats()["requests"].get("bp10emu", 0) == before  # only stq was asked


def test_a_path_typo_in_bluepay_url_is_a_404_naming_bluepay_url(sandbox):
    result = probe(settings_for(sandbox, bluepay_url=sandbox.url + "/interface/"))
    assert result.misconfigured is not None and result.unreachable is None
    assert result.misconfigured.key == "http-404" and "BLUEPAY_URL" in result.misconfigured.message


def test_a_wrong_secret_is_a_security_error_naming_the_secret_and_never_shows_it(sandbox):
    wrong = "WRONGSECRET" + uuid.uuid4().hex
    result = probe(settings_for(sandbox, bluepay_secret_key=wrong))
    assert result.misconfigured is not None and result.misconfigured.key == "security-error"
    assert "BLUEPAY_SECRET_KEY" in result.misconfigured.message and wrong not in result.misconfigured.message


def test_a_wrong_account_is_a_security_error_too(sandbox):
    result = probe(settings_for(sandbox, bluepay_account_id="100000000999"))
    assert result.misconfigured is not None and "BLUEPAY_ACCOUNT_ID" in result.misconfigured.message


def test_every_merchant_account_is_probed_at_start_and_a_wrong_one_refuses_naming_its_own_setting(sandbox):
    wrong = "WRONGSECRET" + uuid.uuid4().hex
    second = MerchantAccount("second", sandbox.account_id, wrong, url=sandbox.interfaces_url)
    assert probe(settings_for(sandbox, accounts=(second,))).ok  # the default account is right
    with pytest.raises(SystemExit) as refused:
        check_at_start(settings_for(sandbox, accounts=(second,)))
    assert "BLUEPAY_ACCOUNTS['second'].secret_key" in str(refused.value) and wrong not in str(refused.value)
    good = MerchantAccount("third", sandbox.account_id, sandbox.secret_key, url=sandbox.interfaces_url)
    assert check_at_start(settings_for(sandbox, accounts=(good,))) is None


def test_a_gateway_that_refuses_connections_is_an_outage_not_a_misconfiguration():
    result = probe(Settings(bluepay_url=f"http://127.0.0.1:{closed_port()}/interfaces/", connect_timeout=1.0))
    assert result.misconfigured is None and result.unreachable and "NotSent" in result.unreachable


def test_a_gateway_answering_502_is_an_outage_too(sandbox):
    sandbox.set_faults({"sequence": ["http_502"], "endpoints": ["stq"]})
    try:
        result = probe(settings_for(sandbox))
    finally:
        sandbox.set_faults({})
    assert result.misconfigured is None and result.unreachable and "502" in result.unreachable


def test_during_payments_the_cause_is_logged_at_error_once_per_process(sandbox, caplog):
    settings = settings_for(sandbox, bluepay_secret_key="WRONGSECRET0000000000000000000000")
    client = BluePayClient(account_id=settings.bluepay_account_id, secret_key=settings.bluepay_secret_key,
                           base_url=settings.bluepay_url, connect_timeout=1.0, read_timeout=2.0,
                           retry_policy=RetryPolicy(max_attempts=1), on_failure=MisconfigurationReporter(settings))
    caplog.set_level(logging.ERROR, logger="payments.preflight")
    for _ in range(3):
        with pytest.raises(OutcomeUnknown):  # an unauthenticated SECURITY ERROR reply: reconciled, never trusted
            client.sale("3.00", TEST_CARD, order_id=f"it-{uuid.uuid4().hex}")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "BLUEPAY_SECRET_KEY" in errors[0].getMessage()


def test_payments_status_probes_each_merchant_account_and_names_the_wrong_one(sandbox):
    from worker.ops.status import other_accounts

    wrong = "WRONGSECRET" + uuid.uuid4().hex
    accounts = (MerchantAccount("second", sandbox.account_id, wrong, url=sandbox.interfaces_url),
                MerchantAccount("third", sandbox.account_id, sandbox.secret_key, url=sandbox.interfaces_url))
    second, third = other_accounts(settings_for(sandbox, accounts=accounts))
    assert second["merchant"] == "second" and "BLUEPAY_ACCOUNTS['second'].secret_key" in second["misconfigured"]
    assert wrong not in second["misconfigured"]
    assert third == {"merchant": "third", "url": sandbox.interfaces_url, "reachable": True, "error": None,
                     "misconfigured": None}
