import logging

import pytest

from worker.gateway import scrub as S


@pytest.mark.parametrize(
    "text,leak,want",
    [
        ("CC_NUM=4111111111111111&AMOUNT=3.00", "4111111111111111", "xxxxxxxxxxxx1111"),
        ("card 4111 1111 1111 1111 exp 1230", "4111 1111 1111 1111", "xxxxxxxxxxxx1111"),
        ("card 4111-1111-1111-1111.", "4111-1111-1111-1111", "xxxxxxxxxxxx1111"),
        ("amex 3782 822463 10005", "822463", "xxxxxxxxxxxx0005"),
        ("{'number': '5500005555555559'}", "5500005555555559", "xxxxxxxxxxxx5559"),
        ("4111 1111 1111 1111 123", "4111 1111 1111 1111", "xxxxxxxxxxxx1111 123"),
        ("x4111111111111111y", "4111111111111111", "xxxxxxxxxxxx1111"),
        ("key ORD-4111111111111111-retry", "4111111111111111", "ORD-xxxxxxxxxxxx1111-retry"),
    ],
)
def test_card_numbers_masked(text, leak, want):
    out = S.scrub(text)
    assert leak not in out and want in out


def test_non_luhn_and_short_runs_kept():
    assert S.scrub("order 4111111111111112 amount 300") == "order 4111111111111112 amount 300"
    # worker.cards.numbers's rule: a 12-digit trans id (even Luhn-valid) and a task id are not card numbers
    assert S.scrub("RRNO=100000000123") == "RRNO=100000000123"
    task_id = "cd27c305-6820-4063-903f-1a2b3c4d5e6f"  # holds the Luhn-valid run 305-6820-4063-903
    assert S.scrub(f"Task payments.sale[{task_id}] succeeded in 0.05183274700085167s") == \
        f"Task payments.sale[{task_id}] succeeded in 0.05183274700085167s"
    assert S.scrub("phone 555-1234") == "phone 555-1234"
    assert S.scrub("2025-11-27 10:00:00") == "2025-11-27 10:00:00"
    assert S.scrub("") == ""


@pytest.mark.parametrize(
    "text,secret",
    [
        ("CVCCVV2=987&CC_EXPIRES=1230", "987"),
        ('{"cvv2": "4567", "expire": "1230"}', "4567"),
        ("{'cvv2': '987', 'expire': '1230'}", "987"),
        ("cvv2=321 rest", "321"),
        ("Card(cvv2='555')", "555"),
        ("TAMPER_PROOF_SEAL=9515409f78817e9da5ee396fb24fea7d&MODE=TEST", "9515409f78817e9da5ee396fb24fea7d"),
        ("BP_STAMP=ABCDEF0123&BP_STAMP_DEF=RRNO+ISSUE_DATE+Result", "ABCDEF0123"),
    ],
)
def test_keyed_values_removed(text, secret):
    out = S.scrub(text)
    assert secret not in out and "***" in out


def test_stamp_def_not_mangled():
    assert "BP_STAMP_DEF=RRNO" in S.scrub("BP_STAMP=AB12&BP_STAMP_DEF=RRNO")


def test_registered_secret_removed():
    S.register_secret("S3cr3t-K3y-XYZ")
    assert S.scrub("key is S3cr3t-K3y-XYZ!") == "key is ***!"
    S.register_secret("ab")  # too short: ignored, would wreck every message
    assert S.scrub("abc") == "abc"


class _UnusedTransport:
    def post(self, url, data):
        raise AssertionError("no request is made")


def test_client_registers_secret():
    from worker.gateway import BluePayClient

    BluePayClient(account_id="100228390579", secret_key="ANOTHER-SECRET-0001", transport=_UnusedTransport())
    assert "ANOTHER-SECRET-0001" not in S.scrub("leak ANOTHER-SECRET-0001")


def test_filter_scrubs_records(caplog):
    S.register_secret("FILTER-SECRET-42")
    log = logging.getLogger("test.gateway.scrub")
    flt = S.ScrubbingFilter()
    log.addFilter(flt)
    try:
        with caplog.at_level(logging.INFO, logger="test.gateway.scrub"):
            log.info("posting %s with key %s and %r", "CC_NUM=4111111111111111&CVCCVV2=123",
                     "FILTER-SECRET-42", {"cvv2": "999", "number": "4111 1111 1111 1111"})
            try:
                raise ValueError("bad card 5500005555555559")
            except ValueError:
                log.exception("failed TAMPER_PROOF_SEAL=deadbeef")
    finally:
        log.removeFilter(flt)
    text = caplog.text
    for leak in ("4111111111111111", "4111 1111 1111 1111", "CVCCVV2=123", "FILTER-SECRET-42",
                 "'999'", "5500005555555559", "deadbeef"):
        assert leak not in text, leak
    assert "xxxxxxxxxxxx1111" in text
    rec = caplog.records[0]
    assert rec.args is None and "xxxxxxxxxxxx1111" in rec.getMessage()


def test_filter_survives_bad_format():
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "bad %d %s", ("4111111111111111",), None)
    assert S.ScrubbingFilter().filter(rec)
    assert "4111111111111111" not in rec.getMessage()


@pytest.mark.parametrize("text, expected", [
    ("invalid input: card.cvv2: must be 3 or 4 digits", "invalid input: card.cvv2: must be 3 or 4 digits"),
    ("cvv2=123", "cvv2=***"),
    ("CVCCVV2=12a4&MODE=TEST", "CVCCVV2=***&MODE=TEST"),
])
def test_a_cvv2_value_is_digits_and_a_message_naming_the_field_is_kept(text, expected):
    assert S.scrub(text) == expected
