"""Our sandbox against what BluePay's texts document (tests/conformance/corpus.py): every field name of every
reply to every verb is one a source names, stq and the report carry no stamp by default, and each answer the
sources leave open is a dialect switch that our client reads correctly. Real HTTP over loopback."""
from __future__ import annotations

import datetime as dt
import re
import urllib.parse

import pytest
import requests

from tests.conformance import corpus as C
from tests.integration.test_sandbox_protocol import bp_fields, new_order, post_raw, reply_of, send, stq, stq_fields
from tests.support.sandbox import running_sandbox
from worker.gateway import protocol as P
from worker.gateway.errors import OutcomeUnknown, Rejected


@pytest.fixture(scope="module")
def sb():
    with running_sandbox(duplicate_window=120) as s:
        yield s


def _every_bp10emu_reply(sb) -> dict[str, dict]:
    """One reply of each kind the sandbox gives (approvals, declines, follow-ups, refusals, duplicate)."""
    out = {"sale": send(sb, "SALE", "3.00"), "declined-sale": send(sb, "SALE", "4.00"),
           "auth": send(sb, "AUTH", "5.00"), "zero-auth": send(sb, "AUTH", "0.00")}
    out["capture"] = send(sb, "CAPTURE", "", out["auth"]["RRNO"])
    sale2 = send(sb, "SALE", "7.00")
    out["refund"] = send(sb, "REFUND", "1.00", sale2["RRNO"])
    out["void"] = send(sb, "VOID", "", out["sale"]["RRNO"])
    out["already-voided"] = send(sb, "VOID", "", out["sale"]["RRNO"])
    out["missing"] = send(sb, "SALE", "3.00", card=False)
    out["bad-card"] = send(sb, "SALE", "3.00", CC_NUM="4111111111111112")
    out["security-error"] = reply_of(post_raw(sb, dict(bp_fields(sb, "SALE", "3.00"), TAMPER_PROOF_SEAL="0" * 32)))
    order = new_order()
    send(sb, "SALE", "9.00", ORDER_ID=order)
    out["duplicate"] = send(sb, "SALE", "9.00", ORDER_ID=order)
    direct = post_raw(sb, bp_fields(sb, "SALE", "3.00", RESPONSETYPE="DIRECT"))
    out["direct"] = dict(urllib.parse.parse_qsl(direct.text))
    return out


def test_every_bp10emu_reply_names_only_documented_fields(sb):
    replies = _every_bp10emu_reply(sb)
    assert replies["duplicate"]["MESSAGE"] == "DUPLICATE" and replies["missing"]["Result"] == "MISSING"
    for kind, pairs in replies.items():
        undocumented = set(pairs) - C.BP10EMU_FIELDS
        assert not undocumented, f"{kind}: {sorted(undocumented)} named by no source"
        assert ("MISSING" in pairs) == (pairs["Result"] == "MISSING"), kind  # "Only output when Result=MISSING"


def test_every_bp10emu_message_is_one_bluepay_lists(sb):
    sale = send(sb, "SALE", "3.00")
    void = send(sb, "VOID", "", sale["RRNO"])
    declined_auth = send(sb, "AUTH", "4.00")
    stored = send(sb, "AUTH", "0.00")
    extra = {"void-of-void": send(sb, "VOID", "", void["RRNO"]),
             "capture-declined": send(sb, "CAPTURE", "", declined_auth["RRNO"]),
             "capture-zero-auth": send(sb, "CAPTURE", "", stored["RRNO"]),
             "token-sale": send(sb, "SALE", "3.00", stored["RRNO"], card=False),  # docs/tokens.md
             "unknown-token": send(sb, "SALE", "3.00", "999999999999", card=False),
             "unknown-customer-token": send(sb, "SALE", "3.00", card=False, CUST_TOKEN="nobody")}
    for kind, pairs in {**_every_bp10emu_reply(sb), **extra}.items():
        message = pairs["MESSAGE"]
        assert message in C.MESSAGES or any(re.fullmatch(p, message) for p in C.MESSAGE_PATTERNS), (kind, message)


def test_bp10emu_stamps_by_the_definition_seen_live(sb):
    for kind, pairs in _every_bp10emu_reply(sb).items():
        assert pairs["BP_STAMP_DEF"] == "RRNO ISSUE_DATE Result", kind
        message = "".join(pairs.get(n, "") for n in pairs["BP_STAMP_DEF"].split())
        assert C.hmac_sha512(sb.secret_key, message) == pairs["BP_STAMP"], kind


def _stq_pairs(resp: requests.Response) -> list[dict[str, str]]:
    return [dict(urllib.parse.parse_qsl(line, keep_blank_values=True)) for line in resp.text.splitlines() if line]


def test_stq_rows_name_only_the_texts_fields_and_carry_no_stamp(sb):
    sale = send(sb, "SALE", "3.00")
    void = send(sb, "VOID", "", sale["RRNO"])
    for trans_id in (sale["RRNO"], void["RRNO"]):
        (row,) = _stq_pairs(stq(sb, id=trans_id))
        assert set(row) <= C.STQ_FIELDS, sorted(set(row) - C.STQ_FIELDS)
    refused = stq(sb, id=sale["RRNO"], TAMPER_PROOF_SEAL="0" * 128)
    assert refused.status_code == 400 and "BP_STAMP" not in refused.text


def test_stq_accepts_the_texts_date_time_form(sb):
    """The stq text writes REPORT_START_DATE as YYYY-MM-DD HH:MM:SS."""
    sale = send(sb, "SALE", "3.00")
    fields = stq_fields(sb, start=f"{sale['ISSUE_DATE'][:10]} 00:00:00", end="2999-01-01 00:00:00", id=sale["RRNO"])
    resp = requests.post(sb.interfaces_url + "stq", data=fields, timeout=10)
    assert resp.status_code == 200 and _stq_pairs(resp)[0]["id"] == sale["RRNO"]


def _client_reads(sb, resp: requests.Response, order_id: str):
    try:
        rows = P.parse_query_rows(resp.status_code, resp.text, secret_key=sb.secret_key)
        return P.choose_query_row(rows, order_id=order_id) if rows else "absent"
    except Rejected:
        return "rejected"
    except OutcomeUnknown:
        return "cannot_tell"


@pytest.mark.parametrize("dialect,expected", [
    ({}, "absent"), ({"stq_no_match": "error"}, "rejected"), ({"stq_no_match": "blank_row"}, "cannot_tell"),
])
def test_each_no_match_answer_is_read_safely(sb, dialect, expected):
    """Only the documented convention (an empty 200) is "absent"; any other answer proves nothing, so a
    payment waits (the flow treats a refused query as "cannot tell") instead of being sent again."""
    sb.reset()
    sb.set_dialect(**dialect)
    try:
        assert _client_reads(sb, stq(sb, order_id="nothing-" + new_order()), "x") == expected
    finally:
        sb.reset()


@pytest.mark.parametrize("dialect", [{}, {"stq_matches": "oldest"}, {"stq_matches": "all"},
                                     {"stq_names": "upper"}, {"stq_stamp": "on"},
                                     {"stq_matches": "all", "stq_names": "upper", "stq_stamp": "on"}])
def test_the_client_finds_the_approval_in_every_stq_dialect(sb, dialect):
    """A declined attempt and an approved one under one ORDER_ID (the duplicate rule off): whichever the
    gateway returns, the client never reads "absent"; given the approval it adopts it."""
    sb.reset()
    sb.set_duplicate_window(0)
    sb.set_dialect(**dialect)
    try:
        order = new_order()
        declined = send(sb, "SALE", "4.00", ORDER_ID=order)
        approved = send(sb, "SALE", "3.00", ORDER_ID=order)
        found = _client_reads(sb, stq(sb, order_id=order), order)
        assert found not in ("absent", "cannot_tell", "rejected")
        assert found.trans_id in (declined["RRNO"], approved["RRNO"])
        if dialect.get("stq_matches") != "oldest":
            assert found.trans_id == approved["RRNO"] and found.approved
    finally:
        sb.reset()


def test_a_stamp_that_does_not_verify_is_never_adopted(sb):
    sale = send(sb, "SALE", "3.00")
    sb.set_faults({"sequence": ["bad_stamp"], "endpoints": ["stq"]})
    try:
        assert _client_reads(sb, stq(sb, order_id=sale["ORDER_ID"]), sale["ORDER_ID"]) == "cannot_tell"
    finally:
        sb.reset()


def test_the_report_names_only_documented_columns_and_escapes_as_its_text_says(sb):
    sb.reset()
    try:
        sb.book("3.00", order_id="a,b")
        today = send(sb, "SALE", "5.00")["ISSUE_DATE"][:10]
        end = (dt.date.fromisoformat(today) + dt.timedelta(days=1)).isoformat()
        fields = stq_fields(sb, start=today, end=end)
        resp = requests.post(sb.interfaces_url + "bpdailyreport2", data=fields, timeout=10)
        header, *lines = resp.text.splitlines()
        assert set(header.split(",")) <= C.REPORT_FIELDS
        assert any("a\\,b" in line for line in lines) and '"' not in resp.text
        refused = requests.post(sb.interfaces_url + "bpdailyreport2", data=dict(fields, TAMPER_PROOF_SEAL="0"),
                                timeout=10)
        assert refused.status_code == 400 and "=" not in refused.text and len(refused.text.splitlines()) == 1
    finally:
        sb.reset()


def test_a_gateway_that_trims_search_values_never_hands_the_client_another_payment(sb):
    """BluePay does not say whether stq trims what it searches for. With ``stq_values=trimmed`` a lookup for
    ``k`` finds a transaction booked under ``k `` (someone else's ORDER_ID): the client must not adopt it."""
    sb.reset()
    sb.set_duplicate_window(0)
    sb.set_dialect(stq_values="trimmed")
    try:
        order = new_order()
        sb.book("3.00", order_id=order + " ")
        answer = stq(sb, order_id=order)
        assert _stq_pairs(answer)[0]["order_id"] == order + " "  # the gateway answered with the other one
        assert _client_reads(sb, answer, order) == "cannot_tell"
        sb.set_dialect(stq_values="exact")
        assert _client_reads(sb, stq(sb, order_id=order), order) == "absent"
    finally:
        sb.reset()
