from dataclasses import FrozenInstanceError
from datetime import date
from typing import Any

import pytest

from worker.gateway import protocol as P
from worker.gateway.errors import InvalidInput, OutcomeUnknown, Rejected
from worker.gateway.validation import Card

from . import gateway_replies as R
from .gateway_replies import ACCOUNT, SECRET, TRANS_ID, independent_seal

CARD = {"number": "4111111111111111", "expire": "1230", "cvv2": "123"}


def parse(status, location=None, body=""):
    return P.parse_transaction_reply(status, location, body, secret_key=SECRET)


# ------------------------------------------------------------------ request builders

def test_sale_request_fields_and_seal():
    f = P.transaction_request(
        account_id=ACCOUNT, secret_key=SECRET, mode="test", hash_type="HMAC_SHA512",
        transaction_type="SALE", amount="3", card=CARD, customer={"name1": "Bob", "city": "Testville"},
        order_id="order-1",
    )
    assert f["MERCHANT"] == ACCOUNT and f["TRANSACTION_TYPE"] == "SALE" and f["MODE"] == "TEST"
    assert f["AMOUNT"] == "3.00" and f["PAYMENT_TYPE"] == "CREDIT"
    assert f["CC_NUM"] == "4111111111111111" and f["CC_EXPIRES"] == "1230" and f["CVCCVV2"] == "123"
    assert f["NAME1"] == "Bob" and f["CITY"] == "Testville" and f["ORDER_ID"] == "order-1"
    for name in ("REBILLING", "REB_FIRST_DATE", "REB_EXPR", "REB_CYCLES", "REB_AMOUNT", "RRNO"):
        assert f[name] == ""
    assert int(f["RESPONSEVERSION"]) >= 8
    assert f["TPS_HASH_TYPE"] == "HMAC_SHA512"
    assert "DUPLICATE_OVERRIDE" not in f
    assert f["TAMPER_PROOF_SEAL"] == independent_seal(SECRET, ACCOUNT + "SALE3.00TEST", "HMAC_SHA512")


def test_auth_zero_and_card_object():
    f = P.transaction_request(account_id=ACCOUNT, secret_key=SECRET, mode="LIVE", hash_type="MD5",
                              transaction_type="AUTH", amount="0.00", card=Card("4111111111111111", "1230"),
                              duplicate_override=True)
    assert f["AMOUNT"] == "0.00" and "CVCCVV2" not in f and f["DUPLICATE_OVERRIDE"] == "1"
    assert f["TAMPER_PROOF_SEAL"] == independent_seal(SECRET, ACCOUNT + "AUTH0.00LIVE", "MD5")


def test_void_capture_refund_requests():
    v = P.transaction_request(account_id=ACCOUNT, secret_key=SECRET, mode="TEST", hash_type="SHA256",
                              transaction_type="VOID", rrno=TRANS_ID)
    assert v["AMOUNT"] == "" and v["RRNO"] == TRANS_ID and "CC_NUM" not in v
    assert v["TAMPER_PROOF_SEAL"] == independent_seal(SECRET, ACCOUNT + "VOID" + TRANS_ID + "TEST", "SHA256")
    r = P.transaction_request(account_id=ACCOUNT, secret_key=SECRET, mode="TEST", hash_type="SHA256",
                              transaction_type="REFUND", rrno=TRANS_ID, amount="1.50")
    assert r["TAMPER_PROOF_SEAL"] == independent_seal(SECRET, ACCOUNT + "REFUND1.50" + TRANS_ID + "TEST", "SHA256")
    c = P.transaction_request(account_id=ACCOUNT, secret_key=SECRET, mode="TEST", hash_type=None,
                              transaction_type="CAPTURE", rrno=TRANS_ID)
    assert c["AMOUNT"] == "" and c["TPS_HASH_TYPE"] == "HMAC_SHA512"


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(transaction_type="SALE", amount="3.00"), "card"),
        (dict(transaction_type="SALE", card=CARD), "amount"),
        (dict(transaction_type="SALE", card=CARD, amount="0.00"), "amount"),
        (dict(transaction_type="VOID"), "trans_id"),
        (dict(transaction_type="VOID", rrno=TRANS_ID, amount="1.00"), "amount"),
        (dict(transaction_type="REFUND", rrno="123"), "trans_id"),
        (dict(transaction_type="REFUND", rrno=TRANS_ID, card=CARD), "card"),
        (dict(transaction_type="PAY"), "transaction_type"),
        (dict(transaction_type="SALE", amount="3.00", card=CARD, mode="PROD"), "mode"),
        (dict(transaction_type="SALE", amount="3.00", card=CARD, order_id="x\n"), "order_id"),
    ],
)
def test_transaction_request_refuses(kwargs, field):
    base: dict[str, Any] = dict(account_id=ACCOUNT, secret_key=SECRET, mode="TEST", hash_type="HMAC_SHA512")
    base.update(kwargs)
    with pytest.raises(InvalidInput) as ei:
        P.transaction_request(**base)
    assert ei.value.field == field


def test_query_request():
    q = P.query_request(account_id=ACCOUNT, secret_key=SECRET, mode="TEST", hash_type="HMAC_SHA256",
                        order_id="order-1", start=date(2025, 1, 1), end=date(2025, 2, 1))
    assert q["ACCOUNT_ID"] == ACCOUNT and q["MODE"] == "TEST" and q["order_id"] == "order-1"
    assert q["REPORT_START_DATE"] == "2025-01-01" and q["REPORT_END_DATE"] == "2025-02-01"
    assert q["TAMPER_PROOF_SEAL"] == independent_seal(SECRET, ACCOUNT + "2025-01-012025-02-01", "HMAC_SHA256")
    q2 = P.query_request(account_id=ACCOUNT, secret_key=SECRET, mode="LIVE", hash_type="MD5",
                         trans_id=TRANS_ID, start=date(2025, 1, 1), end=date(2025, 2, 1))
    assert q2["id"] == TRANS_ID and "order_id" not in q2
    with pytest.raises(InvalidInput):
        P.query_request(account_id=ACCOUNT, secret_key=SECRET, mode="TEST", hash_type="MD5",
                        trans_id=TRANS_ID, order_id="x", start=date(2025, 1, 1), end=date(2025, 2, 1))
    with pytest.raises(InvalidInput):
        P.query_request(account_id=ACCOUNT, secret_key=SECRET, mode="TEST", hash_type="MD5",
                        start=date(2025, 1, 1), end=date(2025, 2, 1))


# ------------------------------------------------------------------ bp10emu replies

@pytest.mark.parametrize("absolute", [False, True])
def test_approved_302_location(absolute):
    r = parse(302, R.location(R.approved(), absolute=absolute))
    assert r.approved and r.status == "APPROVED" and r.message == "Approved Sale"
    assert r.trans_id == TRANS_ID and r.auth_code == "AR1234" and r.masked_account == "xxxxxxxxxxxx1111"
    assert r.card_type == "VISA" and r.avs == "_" and r.cvv2 == "_" and r.amount == "3.00"
    assert r.order_id == "order-1" and r.bank_name == "TEST BANK" and r.trans_type == "SALE"
    assert r.raw["FLAGS"] == "T"
    assert r.settled is None and r.voided is None


def test_approved_200_direct_body_and_bytes():
    r = parse(200, None, R.body(R.approved()))
    assert r.approved
    assert parse(200, None, R.body(R.approved()).encode()).approved


def test_lower_case_stamp_accepted():
    pairs = R.stamped({"Result": "APPROVED", "MESSAGE": "Approved Sale", "RRNO": TRANS_ID, "ISSUE_DATE": "d"},
                      upper=False, hash_type="SHA512")
    assert parse(302, R.location(pairs)).approved


def test_declined_is_returned():
    r = parse(302, R.location(R.declined()))
    assert r.status == "DECLINED" and not r.approved and r.trans_id == "100229460098"
    assert r.message == "Declined Sale"


def test_stamped_security_error_is_rejected():
    with pytest.raises(Rejected) as ei:
        parse(302, R.location(R.error("SECURITY ERROR")))
    assert ei.value.response.status == "ERROR"
    assert ei.value.response.message == "SECURITY ERROR"
    assert "SECURITY ERROR" in str(ei.value)


def test_stamped_missing_is_rejected():
    with pytest.raises(Rejected) as ei:
        parse(302, R.location(R.missing("CC_NUM")))
    assert ei.value.response.status == "MISSING" and ei.value.response.missing_field == "CC_NUM"


def test_stamped_error_keeps_the_gateways_message():
    with pytest.raises(Rejected) as ei:
        parse(302, R.location(R.error("Already Voided")))
    assert ei.value.response.message == "Already Voided"


def test_duplicate_is_outcome_unknown():
    with pytest.raises(OutcomeUnknown) as ei:
        parse(302, R.location(R.duplicate()))
    assert ei.value.duplicate is True
    assert ei.value.response is not None and ei.value.response.message == "DUPLICATE"


# Issue 12: a reply whose BP_STAMP is missing or does not verify never settles anything, whatever its Result:
# an unauthenticated APPROVED, DECLINED, ERROR, MISSING, SECURITY ERROR or DUPLICATE is OutcomeUnknown
# (reconciled through stq), and an unverified DUPLICATE is not the "verified duplicate" the flow may override.
UNVERIFIED_REPLIES = {
    "approved-unstamped": R.unstamped(R.approved()),
    "declined-unstamped": R.unstamped(R.declined()),
    "security-error-unstamped": dict(R.SECURITY_ERROR),
    "missing-unstamped": dict(R.MISSING),
    "already-voided-unstamped": R.unstamped(R.error("Already Voided")),
    "settled-refusal-unstamped": R.unstamped(R.error("Cannot VOID a settled transaction.")),
    "duplicate-unstamped": {"Result": "APPROVED", "MESSAGE": "DUPLICATE"},
    "approved-other-secret": R.stamped(R.unstamped(R.approved()), secret="someone-else"),
    "declined-other-secret": R.stamped(R.unstamped(R.declined()), secret="someone-else"),
    "security-error-other-secret": R.error("SECURITY ERROR", secret="the-real-secret"),
    "missing-other-secret": R.stamped(dict(R.MISSING), secret="someone-else"),
    "duplicate-other-secret": R.stamped({"Result": "APPROVED", "MESSAGE": "DUPLICATE", "ISSUE_DATE": "d"},
                                        secret="someone-else"),
    "stamp-without-def": {**R.unstamped(R.approved()), "BP_STAMP": R.approved()["BP_STAMP"]},
    "stamp-garbage": {**R.approved(), "BP_STAMP": "not-a-hash"},
}


@pytest.mark.parametrize("pairs", list(UNVERIFIED_REPLIES.values()), ids=list(UNVERIFIED_REPLIES))
def test_a_reply_without_a_valid_stamp_is_outcome_unknown_never_final(pairs):
    with pytest.raises(OutcomeUnknown) as ei:
        parse(302, R.location(pairs))
    assert not isinstance(ei.value, Rejected)
    assert ei.value.duplicate is False
    assert "BP_STAMP" in str(ei.value)


@pytest.mark.parametrize("pairs,outcome", [
    (R.approved(), "APPROVED"),
    (R.declined(), "DECLINED"),
    (R.error("SECURITY ERROR"), Rejected),
    (R.missing("CC_NUM"), Rejected),
    (R.error("Already Voided"), Rejected),
    (R.duplicate(), "DUPLICATE"),
], ids=["approved", "declined", "security-error", "missing", "already-voided", "duplicate"])
def test_the_same_replies_with_a_valid_stamp_are_taken_as_they_say(pairs, outcome):
    if outcome is Rejected:
        with pytest.raises(Rejected):
            parse(302, R.location(pairs))
    elif outcome == "DUPLICATE":
        with pytest.raises(OutcomeUnknown) as ei:
            parse(302, R.location(pairs))
        assert ei.value.duplicate is True
    else:
        assert parse(302, R.location(pairs)).status == outcome


def test_unstamped_error_names_the_gateways_message_for_the_log():
    with pytest.raises(OutcomeUnknown) as ei:
        parse(302, R.location(R.SECURITY_ERROR))
    assert "SECURITY ERROR" in str(ei.value) and "BP_STAMP" in str(ei.value)


def test_unverifiable_security_error_hints_at_the_secret_key():
    # a wrong secret on our side: the gateway stamps with the real one, we cannot verify it. Still not final
    # (an impostor could send the same), but the message says what to check.
    with pytest.raises(OutcomeUnknown) as ei:
        parse(302, R.location(R.error("SECURITY ERROR", secret="the-real-secret")))
    assert "BLUEPAY_SECRET_KEY" in str(ei.value)


def test_tampered_stamp():
    pairs = R.approved()
    pairs["AMOUNT"] = "3.00"
    pairs["RRNO"] = "100229460099"  # covered by BP_STAMP_DEF
    with pytest.raises(OutcomeUnknown) as ei:
        parse(302, R.location(pairs))
    assert not ei.value.duplicate


def test_tampered_stamp_on_decline_and_error():
    d = R.declined()
    d["Result"] = "DECLINED"
    d["BP_STAMP"] = "0" * 128
    with pytest.raises(OutcomeUnknown):
        parse(302, R.location(d))
    e = R.stamped({"Result": "ERROR", "STATUS": "E", "MESSAGE": "Already Voided"}, secret="someone-else")
    with pytest.raises(OutcomeUnknown):
        parse(302, R.location(e))


def test_wrong_secret_fails_stamp():
    with pytest.raises(OutcomeUnknown):
        P.parse_transaction_reply(302, R.location(R.approved()), "", secret_key="another")


def test_approved_without_stamp():
    pairs = R.approved()
    for k in ("BP_STAMP", "BP_STAMP_DEF", "TPS_HASH_TYPE"):
        pairs.pop(k)
    with pytest.raises(OutcomeUnknown, match="BP_STAMP"):
        parse(302, R.location(pairs))


@pytest.mark.parametrize(
    "status,location,body",
    [
        (200, None, ""),
        (200, None, "<html><body>Service temporarily unavailable</body></html>"),
        (200, None, "Result=MAYBE"),
        (200, None, "STATUS=1&MESSAGE=Approved"),  # no Result
        (302, None, ""),
        (302, "/interfaces/wlcatch", ""),
        (302, "/interfaces/wlcatch?", ""),
        (500, None, "Result=APPROVED"),
        (502, None, ""),
        (503, "/x?Result=ERROR", ""),
        (404, None, "Not Found"),
        (400, None, "Result=APPROVED"),
    ],
)
def test_unparseable_or_5xx_is_outcome_unknown(status, location, body):
    with pytest.raises(OutcomeUnknown) as ei:
        parse(status, location, body)
    assert not ei.value.duplicate


def test_400_error_body_is_rejected_only_when_stamped():
    with pytest.raises(Rejected) as ei:
        parse(400, None, R.body(R.stamped({"STATUS": "E", "MESSAGE": "INVALID AMOUNT FORMAT"})))
    assert ei.value.response.message == "INVALID AMOUNT FORMAT"
    with pytest.raises(OutcomeUnknown) as eu:
        parse(400, None, "STATUS=E&MESSAGE=INVALID+AMOUNT+FORMAT")
    assert not isinstance(eu.value, Rejected) and eu.value.duplicate is False


def test_raw_drops_sensitive_keys():
    pairs = R.approved()
    pairs["CC_NUM"] = "4111111111111111"
    r = parse(302, R.location(pairs))
    assert "CC_NUM" not in r.raw
    assert "4111111111111111" not in repr(r)


def test_response_is_frozen():
    r = parse(302, R.location(R.approved()))
    with pytest.raises(FrozenInstanceError):
        r.status = "DECLINED"  # the assignment is what must fail


# ------------------------------------------------------------------ stq replies

def q(status, body):
    return P.parse_query_reply(status, body, secret_key=SECRET)


def test_stq_empty_200_is_absent():
    assert q(200, "") is None
    assert q(200, b"") is None
    assert q(200, "\r\n") is None


def test_stq_found():
    r = q(200, R.body(R.stq_row()))
    assert r.status == "APPROVED" and r.approved and r.trans_id == TRANS_ID and r.order_id == "order-1"
    assert r.masked_account == "xxxxxxxxxxxx1111" and r.card_type == "VISA" and r.amount == "3.00"
    assert r.settled is False and r.voided is False


def test_stq_status_mapping_and_flags():
    assert q(200, R.body(R.stq_stamped(status="0"))).status == "DECLINED"
    assert q(200, R.body(R.stq_stamped(status="E"))).status == "ERROR"
    r = q(200, R.body(R.stq_stamped(settle_date="2025-11-28 02:00:00", f_void="1")))
    assert r.settled is True and r.voided is True
    row = R.stq_row()
    del row["settle_date"], row["f_void"]
    r = q(200, R.body(R.stamped(row, stamp_def=R.STQ_STAMP_DEF)))
    assert r.settled is None and r.voided is None


def test_stq_stamp_verified():
    good = R.stamped(R.stq_row(), stamp_def="id status amount")
    assert q(200, R.body(good)).approved
    bad = dict(good, amount="300.00")
    with pytest.raises(OutcomeUnknown):
        q(200, R.body(bad))


# Issue 23: BluePay documents no stamp on stq rows: an unstamped row is found...
@pytest.mark.parametrize("row,status", [
    (R.stq_row(), "APPROVED"), (R.stq_row(status="0"), "DECLINED"), (R.stq_row(status="E"), "ERROR"),
    (R.unstamped(R.stq_stamped()), "APPROVED"),
    ({k.upper(): v for k, v in R.stq_row().items()}, "APPROVED"),  # names as BluePay's Python library reads them
], ids=["approved", "declined", "error", "stamp-stripped", "upper-case-names"])
def test_stq_row_without_a_stamp_is_found(row, status):
    r = q(200, R.body(row))
    assert r.status == status and r.trans_id == TRANS_ID and r.order_id == "order-1"


def test_stq_upper_case_row_with_a_stamp_verifies():
    row = {k.upper(): v for k, v in R.stq_row().items()}
    assert q(200, R.body(R.stamped(row, stamp_def="ID STATUS AMOUNT"))).approved


# ... and a row that carries a stamp that does not verify never settles a record: "cannot tell", not found.
@pytest.mark.parametrize("row", [
    R.stq_stamped(secret="someone-else"),
    dict(R.stq_stamped(), BP_STAMP="0" * 128),
    dict(R.stq_stamped(), order_id="order-2"),  # a field the stamp covers, changed
    {k: v for k, v in R.stq_stamped().items() if k != "BP_STAMP_DEF"},
    {k: v for k, v in R.stq_stamped().items() if k != "BP_STAMP"},
], ids=["other-secret", "zero-stamp", "tampered-order-id", "no-stamp-def", "def-without-stamp"])
def test_stq_row_with_a_stamp_that_fails_is_outcome_unknown(row):
    with pytest.raises(OutcomeUnknown) as ei:
        q(200, R.body(row))
    assert not isinstance(ei.value, Rejected)


def test_stq_rows_on_lines_and_run_together_are_all_read():
    one, two = R.stq_row(status="0"), R.stq_row(id="100229460099")
    for body in (R.body(one) + "\n" + R.body(two), R.body(one) + "&" + R.body(two)):
        rows = P.parse_query_rows(200, body, secret_key=SECRET)
        assert [(r.trans_id, r.status) for r in rows] == [(TRANS_ID, "DECLINED"), ("100229460099", "APPROVED")]


@pytest.mark.parametrize("rows,asked,expected", [
    ([], "order-1", None),
    ([("1", "0", "order-1", "2025-01-01 10:00:00"), ("2", "0", "order-1", "2025-01-01 11:00:00")], "order-1", "2"),
    ([("1", "0", "order-1", "2025-01-01 12:00:00"), ("2", "1", "order-1", "2025-01-01 11:00:00")], "order-1", "2"),
    ([("1", "1", "order-1 ", "x"), ("2", "1", "order-10", "x")], "order-1", OutcomeUnknown),
    ([("1", "1", "order-1", "x"), ("2", "1", "order-1", "x")], "order-1", OutcomeUnknown),
    ([("1", "1", "order-1", "x"), ("1", "1", "order-1", "x")], "order-1", "1"),
], ids=["none", "newest-decline", "the-approval", "not-ours", "two-approvals", "same-row-twice"])
def test_choose_query_row(rows, asked, expected):
    responses = [P.Response(status={"1": "APPROVED", "0": "DECLINED"}[s], trans_id=i, order_id=o,
                            raw={"issue_date": d}) for i, s, o, d in rows]
    if expected is OutcomeUnknown:
        with pytest.raises(OutcomeUnknown):
            P.choose_query_row(responses, order_id=asked)
    else:
        chosen = P.choose_query_row(responses, order_id=asked)
        assert (chosen.trans_id if chosen else None) == expected


def test_stq_400_of_one_line_is_a_refusal_naming_it():
    """The daily report's text: a refusal is a single line naming the reason (stq's own text is silent)."""
    with pytest.raises(Rejected) as ei:
        q(400, "SECURITY ERROR\n")
    assert ei.value.response.message == "SECURITY ERROR"


def test_stq_400_status_e_rejected():
    with pytest.raises(Rejected) as ei:
        q(400, "STATUS=E&MESSAGE=SECURITY+ERROR")
    assert ei.value.response.message == "SECURITY ERROR"


@pytest.mark.parametrize(
    "status,body",
    [(200, "<html>oops</html>"), (200, "status=1"), (200, "id=100229460097&status=X"), (500, ""),
     (503, "STATUS=E"), (400, "<html>bad request</html>"), (404, ""), (302, ""), (200, "message=no+match")],
)
def test_stq_cannot_tell(status, body):
    with pytest.raises(OutcomeUnknown):
        q(status, body)
