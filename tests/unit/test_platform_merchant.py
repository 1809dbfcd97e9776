"""PLATFORM_MERCHANT_ID (BluePay's C# library 3.0.8: a platform charging for a sub-merchant): sent with every request
and concatenated into every seal right after the account id, as the library's CalcTPS / CalcReportTPS do; without one,
the requests are exactly what they were."""
from __future__ import annotations

from datetime import date

import pytest

from worker.config import ConfigError, Settings
from worker.gateway import InvalidInput, protocol
from worker.gateway.report import report_request

from .gateway_replies import ACCOUNT, SECRET, independent_seal

CARD = {"number": "4111111111111111", "expire": "1230", "cvv2": "123"}
START, END = date(2026, 12, 1), date(2026, 12, 3)


def sale(**extra):
    return protocol.transaction_request(account_id=ACCOUNT, secret_key=SECRET, mode="TEST", hash_type="HMAC_SHA512",
                                        transaction_type="SALE", amount="3.00", card=CARD, order_id="o-1", **extra)


def test_a_sale_for_a_sub_merchant_seals_it_after_the_account_id():
    fields = sale(platform_merchant_id="SUB42")
    assert fields["PLATFORM_MERCHANT_ID"] == "SUB42" and fields["MERCHANT"] == ACCOUNT
    # C# 3.0.8 CalcTPS: accountID + platformMerchantID + transType + amount + doRebill + rebillFirstDate +
    # rebillExpr + rebillCycles + rebillAmount + masterID + mode
    message = f"{ACCOUNT}SUB42SALE3.00TEST"
    assert fields["TAMPER_PROOF_SEAL"] == independent_seal(SECRET, message, "HMAC_SHA512")


def test_stq_and_the_daily_report_seal_it_after_the_account_id():
    stq = protocol.query_request(account_id=ACCOUNT, secret_key=SECRET, mode="TEST", hash_type="SHA256",
                                 order_id="o-1", start=START, end=END, platform_merchant_id="SUB42")
    report = report_request(account_id=ACCOUNT, secret_key=SECRET, mode="TEST", hash_type="SHA256", start=START,
                            end=END, settled=False, platform_merchant_id="SUB42")
    # C# 3.0.8 CalcReportTPS: accountID + platformMerchantID + reportStartDate + reportEndDate
    expected = independent_seal(SECRET, f"{ACCOUNT}SUB422026-12-012026-12-03", "SHA256")
    for fields in (stq, report):
        assert fields["PLATFORM_MERCHANT_ID"] == "SUB42" and fields["TAMPER_PROOF_SEAL"] == expected


def test_without_one_nothing_changes():
    fields = sale()
    assert "PLATFORM_MERCHANT_ID" not in fields
    assert fields["TAMPER_PROOF_SEAL"] == independent_seal(SECRET, f"{ACCOUNT}SALE3.00TEST", "HMAC_SHA512")


@pytest.mark.parametrize("bad", ["SUB 42", "SUB-42", "x" * 65, 42])
def test_a_malformed_one_is_refused_before_anything_is_sent(bad):
    with pytest.raises(InvalidInput, match="platform_merchant_id"):
        sale(platform_merchant_id=bad)


def test_the_setting(monkeypatch):
    monkeypatch.setenv("BLUEPAY_PLATFORM_MERCHANT_ID", "SUB42")
    assert Settings.from_env().bluepay_platform_merchant_id == "SUB42"
    monkeypatch.setenv("BLUEPAY_PLATFORM_MERCHANT_ID", "SUB 42")
    with pytest.raises(ConfigError, match="BLUEPAY_PLATFORM_MERCHANT_ID"):
        Settings.from_env()
