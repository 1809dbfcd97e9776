"""worker/ops/preflight.py's pure part: which gateway errors prove a misconfiguration (and name the setting), and the
once-per-cause ERROR log during payments. The probe itself runs against the sandbox (tests/integration)."""
from __future__ import annotations

import logging

import pytest

from worker.config import Settings
from worker.gateway import NotSent, OutcomeUnknown, Rejected, Response
from worker.ops.preflight import MisconfigurationReporter, diagnose

SETTINGS = Settings()


def security_error() -> Rejected:
    return Rejected(Response(status="ERROR", message="SECURITY ERROR"))


@pytest.mark.parametrize("exc,key,setting", [
    (OutcomeUnknown("stq answered HTTP 404", status_code=404), "http-404", "BLUEPAY_URL"),
    (security_error(), "security-error", "BLUEPAY_SECRET_KEY"),
    (OutcomeUnknown("reply BP_STAMP does not verify (SECURITY ERROR: check BLUEPAY_SECRET_KEY)", status_code=200),
     "security-error", "BLUEPAY_SECRET_KEY"),
    (OutcomeUnknown("ERROR reply without BP_STAMP cannot be trusted (SECURITY ERROR)", status_code=400),
     "security-error", "BLUEPAY_SECRET_KEY"),
])
def test_definite_answers_name_the_setting(exc, key, setting):
    found = diagnose(exc, SETTINGS)
    assert found is not None and found.key == key and setting in found.message
    assert SETTINGS.bluepay_secret_key not in found.message


@pytest.mark.parametrize("exc", [
    NotSent("ConnectionRefusedError"), OutcomeUnknown("stq answered HTTP 502", status_code=502),
    OutcomeUnknown("read timeout"), OutcomeUnknown("unparseable stq reply", status_code=200),
    Rejected(Response(status="ERROR", message="INVALID ACCOUNT NUMBER")),
])
def test_outages_and_other_answers_prove_no_misconfiguration(exc):
    assert diagnose(exc, SETTINGS) is None


def test_each_cause_is_logged_at_error_once_per_process(caplog):
    report = MisconfigurationReporter(SETTINGS)
    caplog.set_level(logging.ERROR, logger="payments.preflight")
    for _ in range(3):
        report(OutcomeUnknown("HTTP 404", status_code=404))
        report(security_error())
        report(NotSent("ConnectionRefusedError"))
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(messages) == 2
    assert "BLUEPAY_URL" in messages[0] and "BLUEPAY_SECRET_KEY" in messages[1]
