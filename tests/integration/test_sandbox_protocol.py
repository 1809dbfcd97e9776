"""The sandbox speaks BluePay 2.0: seals, replies, stamps, TEST-mode rules, stq, follow-ups.

Real HTTP over loopback against ``python -m worker.sandbox`` in a subprocess. Seals and
stamps are computed here with hashlib/hmac directly, from docs/bluepay.md, not with project code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import urllib.parse
import urllib.request
import uuid

import pytest
import requests

from tests.support.sandbox import running_sandbox

CARD = "4111111111111111"
EXP = "1230"
HASH_TYPES = ["MD5", "SHA256", "SHA512", "HMAC_SHA256", "HMAC_SHA512"]
SEAL_ORDER = ["MERCHANT", "TRANSACTION_TYPE", "AMOUNT", "REBILLING", "REB_FIRST_DATE", "REB_EXPR",
              "REB_CYCLES", "REB_AMOUNT", "RRNO", "MODE"]


# ----------------------------------------------------------------- independent helpers
def H(secret: str, message: str, hash_type: str) -> str:
    k, m = secret.encode(), message.encode()
    if hash_type == "MD5":
        return hashlib.md5(k + m).hexdigest()
    if hash_type == "SHA256":
        return hashlib.sha256(k + m).hexdigest()
    if hash_type == "SHA512":
        return hashlib.sha512(k + m).hexdigest()
    if hash_type == "HMAC_SHA256":
        return hmac.new(k, m, hashlib.sha256).hexdigest()
    return hmac.new(k, m, hashlib.sha512).hexdigest()


def stamp_ok(secret: str, reply: dict) -> bool:
    msg = "".join(reply.get(name, "") for name in reply["BP_STAMP_DEF"].split())
    return H(secret, msg, reply["TPS_HASH_TYPE"]).upper() == reply["BP_STAMP"].upper()


def new_order() -> str:
    return "ord-" + uuid.uuid4().hex[:16]


def bp_fields(sb, ttype: str, amount: str = "", rrno: str = "", *, mode: str = "TEST",
              hash_type: str = "HMAC_SHA512", card: bool = True, **extra: str) -> dict:
    f = {"MERCHANT": sb.account_id, "TRANSACTION_TYPE": ttype, "AMOUNT": amount, "RRNO": rrno,
         "MODE": mode, "TPS_HASH_TYPE": hash_type, "PAYMENT_TYPE": "CREDIT",
         "REBILLING": "", "REB_FIRST_DATE": "", "REB_EXPR": "", "REB_CYCLES": "", "REB_AMOUNT": "",
         "RESPONSEVERSION": "20", "NAME1": "Bob", "NAME2": "Tester"}
    if card and ttype in ("SALE", "AUTH"):
        f.update(CC_NUM=CARD, CC_EXPIRES=EXP, CVCCVV2="123", ORDER_ID=new_order())
    f.update(extra)
    f["TAMPER_PROOF_SEAL"] = H(sb.secret_key, "".join(f.get(n, "") for n in SEAL_ORDER), hash_type)
    return f


def post_raw(sb, fields: dict, **kw) -> requests.Response:
    return requests.post(sb.interfaces_url + "bp10emu", data=fields, allow_redirects=False,
                         timeout=kw.pop("timeout", 10), **kw)


def reply_of(resp: requests.Response) -> dict:
    assert resp.status_code == 302, (resp.status_code, resp.text)
    loc = resp.headers["Location"]
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(loc).query, keep_blank_values=True))


def send(sb, ttype: str, amount: str = "", rrno: str = "", **kw) -> dict:
    return reply_of(post_raw(sb, bp_fields(sb, ttype, amount, rrno, **kw)))


def stq_fields(sb, *, start: str | None = None, end: str | None = None, hash_type: str = "HMAC_SHA512",
               **query: str) -> dict:
    today = dt.date.today()
    start = start or today.isoformat()
    end = end or (today + dt.timedelta(days=1)).isoformat()
    f = {"ACCOUNT_ID": sb.account_id, "REPORT_START_DATE": start, "REPORT_END_DATE": end,
         "TPS_HASH_TYPE": hash_type, "MODE": "TEST"}
    f["TAMPER_PROOF_SEAL"] = H(sb.secret_key, sb.account_id + start + end, hash_type)
    f.update(query)
    return f


def stq(sb, **kw) -> requests.Response:
    return requests.post(sb.interfaces_url + "stq", data=stq_fields(sb, **kw), timeout=10)


@pytest.fixture(scope="module")
def sb():
    with running_sandbox() as s:
        yield s


# ----------------------------------------------------------------- seal
def test_published_md5_example_is_accepted():
    """docs/bluepay.md: secret raouhc.jbefiougb, MERCHANT=demo, SALE 10.00, no MODE -> 9515409f..."""
    assert H("raouhc.jbefiougb", "demoSALE10.00", "MD5") == "9515409f78817e9da5ee396fb24fea7d"
    with running_sandbox(account_id="demo", secret_key="raouhc.jbefiougb") as demo:
        f = {"MERCHANT": "demo", "TRANSACTION_TYPE": "SALE", "AMOUNT": "10.00", "TPS_HASH_TYPE": "MD5",
             "TAMPER_PROOF_SEAL": "9515409f78817e9da5ee396fb24fea7d", "CC_NUM": CARD,
             "CC_EXPIRES": EXP}
        r = reply_of(post_raw(demo, f))
        assert r["MESSAGE"] == "Declined Sale" and r["Result"] == "DECLINED"  # 10 is even
        assert r["MODE"] == "TEST" and r["TPS_HASH_TYPE"] == "MD5"


@pytest.mark.parametrize("hash_type", HASH_TYPES)
def test_each_hash_type_seal_and_stamp(sb, hash_type):
    r = send(sb, "SALE", "3.00", hash_type=hash_type)
    assert (r["Result"], r["STATUS"], r["MESSAGE"]) == ("APPROVED", "1", "Approved Sale")
    assert r["TPS_HASH_TYPE"] == hash_type
    assert stamp_ok(sb.secret_key, r)


@pytest.mark.parametrize("given", ["", "NOPE"])
def test_unknown_or_empty_hash_type_means_hmac_sha512(sb, given):
    f = bp_fields(sb, "SALE", "3.00", hash_type="HMAC_SHA512")
    f["TPS_HASH_TYPE"] = given
    r = reply_of(post_raw(sb, f))
    assert r["Result"] == "APPROVED"
    assert r["TPS_HASH_TYPE"] == "HMAC_SHA512" and stamp_ok(sb.secret_key, r)


def test_seal_compared_case_insensitively(sb):
    f = bp_fields(sb, "SALE", "3.00", hash_type="SHA256")
    f["TAMPER_PROOF_SEAL"] = f["TAMPER_PROOF_SEAL"].upper()
    assert reply_of(post_raw(sb, f))["Result"] == "APPROVED"


def test_bad_seal_is_security_error_and_not_recorded(sb):
    f = bp_fields(sb, "SALE", "3.00")
    f["TAMPER_PROOF_SEAL"] = "00" + f["TAMPER_PROOF_SEAL"][2:]
    r = reply_of(post_raw(sb, f))
    assert (r["Result"], r["STATUS"], r["MESSAGE"]) == ("ERROR", "E", "SECURITY ERROR")
    assert "TRANS_ID" not in r and stamp_ok(sb.secret_key, r)
    assert sb.ledger(order_id=f["ORDER_ID"]) == []
    # the seal covers AMOUNT: changing it after sealing is caught
    f = bp_fields(sb, "SALE", "3.00")
    f["AMOUNT"] = "5.00"
    assert reply_of(post_raw(sb, f))["MESSAGE"] == "SECURITY ERROR"


def test_unknown_merchant_is_security_error(sb):
    f = bp_fields(sb, "SALE", "3.00", MERCHANT="999999999999")
    f["TAMPER_PROOF_SEAL"] = H(sb.secret_key, "999999999999SALE3.00TEST", "HMAC_SHA512")
    assert reply_of(post_raw(sb, f))["MESSAGE"] == "SECURITY ERROR"


def test_tps_def_is_honoured(sb):
    f = bp_fields(sb, "SALE", "3.00")
    f["TPS_DEF"] = "MERCHANT ORDER_ID AMOUNT"
    f["TAMPER_PROOF_SEAL"] = H(sb.secret_key, f["MERCHANT"] + f["ORDER_ID"] + "3.00", "HMAC_SHA512")
    assert reply_of(post_raw(sb, f))["Result"] == "APPROVED"
    f["ORDER_ID"] = new_order()  # now the seal no longer matches
    assert reply_of(post_raw(sb, f))["MESSAGE"] == "SECURITY ERROR"


# ----------------------------------------------------------------- reply shapes
def test_302_relative_location_to_wlcatch(sb):
    resp = post_raw(sb, bp_fields(sb, "SALE", "3.00"))
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith("/interfaces/wlcatch?")
    r = reply_of(resp)
    for name in ("Result", "STATUS", "MESSAGE", "TRANS_ID", "RRNO", "ID", "TRANS_TYPE", "AMOUNT",
                 "AUTH_CODE", "AVS", "CVV2", "PAYMENT_ACCOUNT", "CARD_TYPE", "BANK_NAME", "CARD_EXPIRE",
                 "ORDER_ID", "INVOICE_ID", "MODE", "FLAGS", "ISSUE_DATE", "BP_STAMP",
                 "BP_STAMP_DEF", "TPS_HASH_TYPE"):
        assert name in r, name
    assert re.fullmatch(r"\d{12}", r["TRANS_ID"]) and r["TRANS_ID"] == r["RRNO"] == r["ID"]
    assert len(r["AUTH_CODE"]) == 6
    assert r["PAYMENT_ACCOUNT"] == "xxxxxxxxxxxx1111" and r["CARD_TYPE"] == "VISA"
    assert r["AMOUNT"] == "3.00" and r["TRANS_TYPE"] == "SALE" and r["CARD_EXPIRE"] == EXP
    assert r["MODE"] == "TEST"


def test_wlcatch_answers_200(sb):
    resp = requests.get(sb.interfaces_url + "wlcatch?Result=APPROVED&MESSAGE=x", timeout=5)
    assert resp.status_code == 200 and "text/html" in resp.headers["Content-Type"]


def test_direct_response_body(sb):
    f = bp_fields(sb, "SALE", "5.00", RESPONSETYPE="DIRECT")
    resp = post_raw(sb, f)
    assert resp.status_code == 200
    r = dict(urllib.parse.parse_qsl(resp.text, keep_blank_values=True))
    assert r["Result"] == "APPROVED" and r["ORDER_ID"] == f["ORDER_ID"] and stamp_ok(sb.secret_key, r)


def test_approved_and_declined_urls(sb):
    def sale_with_urls(amount: str) -> dict:
        return bp_fields(sb, "SALE", amount, APPROVED_URL="http://shop.example/ok?x=1",
                         DECLINED_URL="http://shop.example/no", MISSING_URL="http://shop.example/missing")

    loc = post_raw(sb, sale_with_urls("3.00")).headers["Location"]
    assert loc.startswith("http://shop.example/ok?x=1&") and "Result=APPROVED" in loc
    loc = post_raw(sb, sale_with_urls("4.00")).headers["Location"]
    assert loc.startswith("http://shop.example/no?") and "Result=DECLINED" in loc
    loc = post_raw(sb, sale_with_urls("3.001")).headers["Location"]
    assert loc.startswith("http://shop.example/missing?")


def test_request_bp_stamp_def_is_used(sb):
    r = send(sb, "SALE", "3.00", BP_STAMP_DEF="RRNO ISSUE_DATE Result")
    assert r["BP_STAMP_DEF"] == "RRNO ISSUE_DATE Result"
    assert r["BP_STAMP"] == H(sb.secret_key, r["RRNO"] + r["ISSUE_DATE"] + "APPROVED", "HMAC_SHA512").upper()


def test_ids_are_unique_12_digits(sb):
    ids = {send(sb, "SALE", a)["TRANS_ID"] for a in ("1.00", "2.00", "3.00", "4.00", "5.00")}
    assert len(ids) == 5 and all(re.fullmatch(r"\d{12}", i) for i in ids)


@pytest.mark.parametrize("number,ctype", [
    ("4111111111111111", "VISA"), ("5555555555554444", "MC"), ("2223003122003222", "MC"),
    ("378282246310005", "AMEX"), ("6011111111111117", "DISC"), ("3530111333300000", "JCB")])
def test_card_type_by_prefix(sb, number, ctype):
    r = send(sb, "SALE", "3.00", CC_NUM=number)
    assert r["CARD_TYPE"] == ctype and r["PAYMENT_ACCOUNT"] == "xxxxxxxxxxxx" + number[-4:]


def test_ledger_never_holds_card_number_or_cvv(sb):
    f = bp_fields(sb, "SALE", "3.00", CVCCVV2="987")
    reply_of(post_raw(sb, f))
    text = requests.get(sb.url + "/sandbox/ledger", timeout=5).text
    assert CARD not in text
    (row,) = sb.ledger(order_id=f["ORDER_ID"])
    assert "987" not in [str(v) for v in row.values()]
    assert row["payment_account"] == "xxxxxxxxxxxx1111"


# ----------------------------------------------------------------- TEST-mode rules
@pytest.mark.parametrize("ttype,amount,result,message", [
    ("SALE", "3.00", "APPROVED", "Approved Sale"),
    ("SALE", "1.99", "APPROVED", "Approved Sale"),
    ("SALE", "4.00", "DECLINED", "Declined Sale"),
    ("SALE", "0.50", "DECLINED", "Declined Sale"),
    ("SALE", "101.00", "APPROVED", "Approved Sale"),
    ("AUTH", "5.00", "APPROVED", "Approved Auth"),
    ("AUTH", "2.00", "DECLINED", "Declined Auth"),
    ("AUTH", "0.00", "APPROVED", "INFORMATION STORED"),
])
def test_amount_decides(sb, ttype, amount, result, message):
    r = send(sb, ttype, amount)
    assert (r["Result"], r["MESSAGE"]) == (result, message)
    assert r["STATUS"] == ("1" if result == "APPROVED" else "0")
    assert re.fullmatch(r"\d{12}", r["TRANS_ID"])  # declines get an id too
    (row,) = sb.ledger(order_id=r["ORDER_ID"])
    assert row["id"] == r["TRANS_ID"] and row["status"] == r["STATUS"]


@pytest.mark.parametrize("overrides,result,message,missing", [
    ({"AMOUNT": "0.00"}, "ERROR", "Amount may not be zero.", ""),
    ({"CC_NUM": "4111111111111112"}, "ERROR", "CARD ACCOUNT NOT VALID", ""),
    ({"CC_NUM": "41111111abc11111"}, "ERROR", "CARD ACCOUNT NOT VALID", ""),
    ({"CC_EXPIRES": "0120"}, "ERROR", "Card Expired", ""),
    ({"CC_NUM": ""}, "MISSING", "Missing CC_NUM", "CC_NUM"),
    ({"CC_EXPIRES": ""}, "MISSING", "Expiration date required for CREDIT", "CC_EXPIRES"),
    ({"AMOUNT": "3.001"}, "ERROR", "INVALID AMOUNT FORMAT", ""),
    ({"AMOUNT": "abc"}, "ERROR", "INVALID AMOUNT FORMAT", ""),
    ({"AMOUNT": "-3.00"}, "ERROR", "INVALID AMOUNT FORMAT", ""),
    ({"AMOUNT": ""}, "MISSING", "Missing AMOUNT", "AMOUNT"),
    ({"CVCCVV2": "12"}, "ERROR", "Invalid CVV2", ""),
    ({"CVCCVV2": "12a"}, "ERROR", "Invalid CVV2", ""),
])
def test_validation_errors_create_no_entry(sb, overrides, result, message, missing):
    amount = overrides.pop("AMOUNT", "3.00")
    f = bp_fields(sb, "SALE", amount, **overrides)
    r = reply_of(post_raw(sb, f))
    # MISSING is output "only when Result=MISSING" (bp10emu text)
    assert (r["Result"], r["STATUS"], r["MESSAGE"], r.get("MISSING", "")) == (result, "E", message, missing)
    assert "TRANS_ID" not in r and stamp_ok(sb.secret_key, r)
    assert sb.ledger(order_id=f["ORDER_ID"]) == []


def test_update_sets_the_new_amount_of_a_sale(sb):
    # BluePay's library: update(transaction_id, amount); the update is a transaction of its own (docs/tokens.md)
    sale = send(sb, "SALE", "3.00")
    r = send(sb, "UPDATE", "5.75", sale["RRNO"])
    assert (r["Result"], r["TRANS_TYPE"], r["AMOUNT"]) == ("APPROVED", "UPDATE", "5.75") and r["RRNO"] != sale["RRNO"]
    again = send(sb, "UPDATE", "6.00", sale["RRNO"])
    assert again["MESSAGE"] == "Cannot UPDATE an updated transaction, UPDATE the update instead."


# ----------------------------------------------------------------- follow-ups
def test_void_rules(sb):
    sale = send(sb, "SALE", "3.00")
    assert send(sb, "VOID", "1.00", sale["RRNO"])["MESSAGE"] == "Cannot VOID except for full amount."
    v = send(sb, "VOID", "", sale["RRNO"])
    assert (v["Result"], v["MESSAGE"], v["TRANS_TYPE"], v["AMOUNT"]) == ("APPROVED", "Approved Void", "VOID", "3.00")
    assert v["TRANS_ID"] != sale["TRANS_ID"] and stamp_ok(sb.secret_key, v)
    assert v["PAYMENT_ACCOUNT"] == "xxxxxxxxxxxx1111"
    assert send(sb, "VOID", "", sale["RRNO"])["MESSAGE"] == "Already Voided"
    declined = send(sb, "SALE", "4.00")
    r = send(sb, "VOID", "", declined["RRNO"])
    assert (r["Result"], r["MESSAGE"]) == ("ERROR", "Can only REFUND or VOID approved transactions")
    r = send(sb, "VOID", "", "")
    assert r["Result"] in ("MISSING", "ERROR") and r["MESSAGE"] == "Master ID required for VOID"
    r = send(sb, "VOID", "", "999999999999")
    assert (r["Result"], r["MESSAGE"]) == ("ERROR", "COULD NOT LOCATE ORIGINAL TRANSACTION")
    (row,) = sb.ledger(order_id=sale["ORDER_ID"])
    assert row["voided"] is True


def test_settled_sale_cannot_be_voided_but_refunded(sb):
    sale = send(sb, "SALE", "7.00")
    assert sb.settle([sale["RRNO"]]) == [sale["RRNO"]]
    assert send(sb, "VOID", "", sale["RRNO"])["MESSAGE"] == "Cannot VOID a settled transaction."
    r1 = send(sb, "REFUND", "2.00", sale["RRNO"])
    assert (r1["Result"], r1["MESSAGE"], r1["TRANS_TYPE"]) == ("APPROVED", "Approved Return", "REFUND")
    r2 = send(sb, "REFUND", "5.01", sale["RRNO"])
    assert r2["MESSAGE"] == "Refund/VOID amount cannot exceed original charge amount"
    r3 = send(sb, "REFUND", "", sale["RRNO"])  # the rest
    assert r3["MESSAGE"] == "Approved Return" and r3["AMOUNT"] == "5.00"
    assert send(sb, "REFUND", "0.01", sale["RRNO"])["MESSAGE"] == \
        "Refund/VOID amount cannot exceed original charge amount"


def test_refund_of_unsettled_sale_becomes_void(sb):
    sale = send(sb, "SALE", "9.00")
    r = send(sb, "REFUND", "", sale["RRNO"])
    assert (r["Result"], r["MESSAGE"], r["TRANS_TYPE"]) == ("APPROVED", "Approved Void", "VOID")
    assert [e["voided"] for e in sb.ledger(order_id=sale["ORDER_ID"])] == [True]
    assert send(sb, "REFUND", "", sale["RRNO"])["MESSAGE"] == "Already Voided"
    big = send(sb, "SALE", "9.00")
    assert send(sb, "REFUND", "10.00", big["RRNO"])["MESSAGE"] == \
        "Refund/VOID amount cannot exceed original charge amount"


def test_refund_type_rules(sb):
    auth = send(sb, "AUTH", "5.00")
    assert send(sb, "REFUND", "", auth["RRNO"])["MESSAGE"] == "Cannot REFUND a AUTH"
    sale = send(sb, "SALE", "3.00")
    v = send(sb, "VOID", "", sale["RRNO"])
    assert send(sb, "REFUND", "", v["RRNO"])["MESSAGE"] == "Cannot REFUND a VOID"
    declined = send(sb, "SALE", "6.00")
    assert send(sb, "REFUND", "", declined["RRNO"])["MESSAGE"] == \
        "Can only REFUND or VOID approved transactions"


def test_capture_rules(sb):
    auth = send(sb, "AUTH", "5.00")
    cap = send(sb, "CAPTURE", "4.00", auth["RRNO"])
    assert (cap["Result"], cap["MESSAGE"], cap["AMOUNT"], cap["TRANS_TYPE"]) == \
        ("APPROVED", "Approved Capture", "4.00", "CAPTURE")
    assert send(sb, "CAPTURE", "", auth["RRNO"])["MESSAGE"] == "Already Captured"
    assert send(sb, "VOID", "", auth["RRNO"])["MESSAGE"] == \
        "Cannot VOID a CAPTURED AUTH (void the CAPTURE instead)."
    assert send(sb, "VOID", "", cap["RRNO"])["MESSAGE"] == "Approved Void"
    assert send(sb, "VOID", "", auth["RRNO"])["MESSAGE"] == "Approved Void"
    assert send(sb, "CAPTURE", "", auth["RRNO"])["MESSAGE"] == "This AUTH is VOID"
    sale = send(sb, "SALE", "3.00")
    assert send(sb, "CAPTURE", "", sale["RRNO"])["MESSAGE"] == "Only AUTH can be CAPTURED"
    auth2 = send(sb, "AUTH", "7.00")
    full = send(sb, "CAPTURE", "", auth2["RRNO"])
    assert full["MESSAGE"] == "Approved Capture" and full["AMOUNT"] == "7.00"
    auth3 = send(sb, "AUTH", "7.00")
    assert send(sb, "CAPTURE", "7.01", auth3["RRNO"])["Result"] == "ERROR"


def test_follow_up_must_match_mode(sb):
    sale = send(sb, "SALE", "3.00")
    r = send(sb, "VOID", "", sale["RRNO"], mode="LIVE")
    assert r["MESSAGE"] == "COULD NOT LOCATE ORIGINAL TRANSACTION"


# ----------------------------------------------------------------- duplicates
def test_duplicate_scrubbing_and_override(sb):
    f = bp_fields(sb, "SALE", "3.00")
    first = reply_of(post_raw(sb, f))
    assert first["MESSAGE"] == "Approved Sale"
    dup = reply_of(post_raw(sb, f))
    assert (dup["Result"], dup["MESSAGE"]) == ("APPROVED", "DUPLICATE")
    assert not dup.get("TRANS_ID") and not dup.get("RRNO") and stamp_ok(sb.secret_key, dup)
    assert len(sb.ledger(order_id=f["ORDER_ID"])) == 1
    over = dict(f, DUPLICATE_OVERRIDE="1")
    again = reply_of(post_raw(sb, over))
    assert again["MESSAGE"] == "Approved Sale" and again["TRANS_ID"] != first["TRANS_ID"]
    assert len(sb.ledger(order_id=f["ORDER_ID"])) == 2
    # a declined attempt is scrubbed too, with its own Result
    d = bp_fields(sb, "SALE", "4.00")
    reply_of(post_raw(sb, d))
    ddup = reply_of(post_raw(sb, d))
    assert (ddup["Result"], ddup["STATUS"], ddup["MESSAGE"]) == ("DECLINED", "0", "DUPLICATE")
    # different amount, type or order id: not a duplicate
    f2 = bp_fields(sb, "SALE", "5.00", ORDER_ID=f["ORDER_ID"])
    assert reply_of(post_raw(sb, f2))["MESSAGE"] == "Approved Sale"
    f3 = bp_fields(sb, "AUTH", "3.00", ORDER_ID=f["ORDER_ID"])
    assert reply_of(post_raw(sb, f3))["MESSAGE"] == "Approved Auth"


def test_duplicate_window_expires():
    with running_sandbox(duplicate_window=0.5) as s:
        f = bp_fields(s, "SALE", "3.00")
        assert reply_of(post_raw(s, f))["MESSAGE"] == "Approved Sale"
        assert reply_of(post_raw(s, f))["MESSAGE"] == "DUPLICATE"
        import time
        time.sleep(0.7)
        assert reply_of(post_raw(s, f))["MESSAGE"] == "Approved Sale"
    with running_sandbox(duplicate_window=0) as s:
        f = bp_fields(s, "SALE", "3.00")
        assert reply_of(post_raw(s, f))["MESSAGE"] == "Approved Sale"
        assert reply_of(post_raw(s, f))["MESSAGE"] == "Approved Sale"


# ----------------------------------------------------------------- stq
def _pairs(resp) -> dict:
    return dict(urllib.parse.parse_qsl(resp.text, keep_blank_values=True))


@pytest.mark.parametrize("hash_type", ["MD5", "HMAC_SHA256", "HMAC_SHA512"])
def test_stq_by_id(sb, hash_type):
    sale = send(sb, "SALE", "3.00")
    resp = stq(sb, id=sale["RRNO"], hash_type=hash_type)
    assert resp.status_code == 200
    p = _pairs(resp)
    assert p["id"] == sale["RRNO"] and p["trans_type"] == "SALE" and p["amount"] == "3.00"
    assert p["status"] == "1" and p["message"] == "Approved Sale" and p["order_id"] == sale["ORDER_ID"]
    assert p["payment_account"] == "xxxxxxxxxxxx1111" and p["card_type"] == "VISA"
    assert p["settle_date"] == "" and p["f_void"] == "" and p["origin"] == "bp10emu"
    # BluePay's stq text lists no stamp: by default none is sent
    assert not {"TPS_HASH_TYPE", "BP_STAMP", "BP_STAMP_DEF"} & set(p)


def test_stq_stamped_dialect(sb):
    sale = send(sb, "SALE", "3.00")
    sb.set_dialect(stq_stamp="on")
    try:
        p = _pairs(stq(sb, id=sale["RRNO"], hash_type="HMAC_SHA256"))
        assert p["TPS_HASH_TYPE"] == "HMAC_SHA256" and stamp_ok(sb.secret_key, p)
    finally:
        sb.set_dialect(stq_stamp="off")


def test_stq_by_order_id_returns_newest(sb):
    order = new_order()
    declined = send(sb, "SALE", "4.00", ORDER_ID=order)
    approved = send(sb, "SALE", "3.00", ORDER_ID=order)
    p = _pairs(stq(sb, order_id=order))
    assert p["id"] == approved["RRNO"] and p["status"] == "1"
    assert declined["RRNO"] != approved["RRNO"]
    assert _pairs(stq(sb, order_id=order, id=declined["RRNO"]))["status"] == "0"


def test_stq_reflects_void_settle_and_origin(sb):
    sale = send(sb, "SALE", "3.00")
    v = send(sb, "VOID", "", sale["RRNO"], ORDER_ID="void-" + sale["ORDER_ID"])
    assert _pairs(stq(sb, id=sale["RRNO"]))["f_void"] == "1"
    pv = _pairs(stq(sb, id=v["RRNO"]))
    assert pv["trans_type"] == "VOID" and pv["master_id"] == sale["RRNO"] and pv["origin"] == "bp10emu"
    s2 = send(sb, "SALE", "5.00")
    sb.settle([s2["RRNO"]])
    assert _pairs(stq(sb, id=s2["RRNO"]))["settle_date"] != ""


def test_stq_absent_is_empty_200(sb):
    resp = stq(sb, order_id="no-such-order-" + uuid.uuid4().hex)
    assert resp.status_code == 200 and resp.text == ""
    sale = send(sb, "SALE", "3.00")
    # outside the window
    resp = stq(sb, id=sale["RRNO"], start="2020-01-01", end="2020-01-02")
    assert resp.status_code == 200 and resp.text == ""
    # MODE defaults to LIVE: a TEST transaction is not found by a LIVE query
    f = stq_fields(sb, id=sale["RRNO"])
    del f["MODE"]
    resp = requests.post(sb.interfaces_url + "stq", data=f, timeout=5)
    assert resp.status_code == 200 and resp.text == ""


def test_stq_bad_seal_and_bad_dates_are_400(sb):
    f = stq_fields(sb, id="123456789012")
    f["TAMPER_PROOF_SEAL"] = "deadbeef"
    resp = requests.post(sb.interfaces_url + "stq", data=f, timeout=5)
    assert resp.status_code == 400 and _pairs(resp)["STATUS"] == "E"
    assert _pairs(resp)["MESSAGE"] == "SECURITY ERROR"
    for start, end in (("2026/01/01", "2026/01/02"), ("2026-01-02", "2026-01-01"), ("x", "")):
        resp = stq(sb, id="123456789012", start=start, end=end)
        assert resp.status_code == 400 and _pairs(resp)["STATUS"] == "E", (start, end)


# ----------------------------------------------------------------- BluePay's own library style
def test_bluepay_python_library_style_redirect_following(sb):
    """Like BluePay.py: urllib POST, follow the 302 to wlcatch, parse geturl()'s query string."""
    fields = {"MODE": "TEST", "RRNO": "", "RESPONSEVERSION": "20", "MERCHANT": sb.account_id,
              "TRANSACTION_TYPE": "SALE", "PAYMENT_TYPE": "CREDIT", "AMOUNT": "3.00",
              "NAME1": "Bob", "NAME2": "Tester", "ADDR1": "123 Test St.", "ADDR2": "Apt #500",
              "CITY": "Testville", "STATE": "IL", "ZIPCODE": "54321", "COUNTRY": "USA", "EMAIL": "",
              "COMPANY_NAME": "", "PHONE": "", "CUSTOM_ID": "", "CUSTOM_ID2": "", "INVOICE_ID": "",
              "ORDER_ID": new_order(), "COMMENT": "", "AMOUNT_TAX": "", "AMOUNT_TIP": "",
              "AMOUNT_FOOD": "", "AMOUNT_MISC": "", "REBILLING": "", "REB_FIRST_DATE": "",
              "REB_EXPR": "", "REB_CYCLES": "", "REB_AMOUNT": "", "SWIPE": "", "STORED_INDICATOR": "",
              "STORED_TYPE": "", "STORED_ID": "", "TPS_HASH_TYPE": "HMAC_SHA512",
              "CC_NUM": CARD, "CC_EXPIRES": EXP, "CVCCVV2": "123"}
    fields["TAMPER_PROOF_SEAL"] = hmac.new(
        sb.secret_key.encode(), (sb.account_id + "SALE3.00" + "TEST").encode(), hashlib.sha512).hexdigest()
    data = urllib.parse.urlencode({k: str(v).replace(",", "") for k, v in fields.items()}).encode()
    req = urllib.request.Request(sb.interfaces_url + "bp10emu", data, headers={
        "User-Agent": "BluepPay Python Library/3.0.7",
        "Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        final = resp.geturl()
        assert resp.status == 200
    assert urllib.parse.urlparse(final).path == "/interfaces/wlcatch"
    parsed = urllib.parse.parse_qs(urllib.parse.urlparse(final).query)
    assert parsed["Result"][0] == "APPROVED" and parsed["MESSAGE"][0] != "DUPLICATE"
    assert re.fullmatch(r"\d{12}", parsed["RRNO"][0])
    assert parsed["PAYMENT_ACCOUNT"][0] == "xxxxxxxxxxxx1111" and parsed["CARD_TYPE"][0] == "VISA"
    # and its stq call shape: lower-case query fields, empty ones ignored
    stq_data = stq_fields(sb, id=parsed["RRNO"][0], payment_type="", trans_type="", amount="",
                          name1="", name2="", EXCLUDE_ERRORS="", IGNORE_NULL_STR="1", RRNO="")
    body = urllib.request.urlopen(urllib.request.Request(
        sb.interfaces_url + "stq", urllib.parse.urlencode(stq_data).encode()), timeout=10).read()
    assert urllib.parse.parse_qs(body.decode())["id"][0] == parsed["RRNO"][0]


# ----------------------------------------------------------------- control API
def test_control_api(sb):
    assert sb.health()["ok"] is True
    r = requests.post(sb.url + "/sandbox/faults", json={"probabilities": {"nope": 1}}, timeout=5)
    assert r.status_code == 400
    r = requests.post(sb.url + "/sandbox/faults", json={"probabilities": {"refuse": 0.7, "http_502": 0.7}},
                      timeout=5)
    assert r.status_code == 400
    assert requests.get(sb.url + "/sandbox/nothing", timeout=5).status_code == 404
    stats = sb.stats()
    assert stats["requests"]["bp10emu"] > 0 and stats["connections"]["total"] > 0


def test_reset_and_settle_all():
    with running_sandbox() as s:
        sale = send(s, "SALE", "3.00")
        auth = send(s, "AUTH", "3.00")
        send(s, "SALE", "4.00")
        assert s.settle() == [sale["RRNO"]]  # AUTHs and declines do not settle
        assert {e["id"]: e["settled"] for e in s.ledger()}[auth["RRNO"]] is False
        s.reset()
        assert s.ledger() == [] and s.stats()["requests"].get("bp10emu", 0) == 0
        after = send(s, "SALE", "3.00")
        assert int(after["RRNO"]) > int(sale["RRNO"])  # ids are never reused
        r = send(s, "VOID", "", sale["RRNO"])
        assert r["MESSAGE"] == "COULD NOT LOCATE ORIGINAL TRANSACTION"


def test_settle_after_auto_settles():
    import time
    with running_sandbox(extra_args=("--settle-after", "0.2")) as s:
        sale = send(s, "SALE", "3.00")
        deadline = time.monotonic() + 5
        while not s.ledger(order_id=sale["ORDER_ID"])[0]["settled"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert send(s, "VOID", "", sale["RRNO"])["MESSAGE"] == "Cannot VOID a settled transaction."


def test_in_process_serve_and_cli_errors():
    import subprocess
    import sys

    from worker.sandbox.server import serve

    srv = serve("127.0.0.1", 0, duplicate_window=0)
    try:
        assert srv.url == f"http://127.0.0.1:{srv.port}"
        assert requests.get(srv.url + "/sandbox/health", timeout=5).json()["ok"] is True

        class _Sb:
            account_id, secret_key, interfaces_url = srv.engine.account_id, srv.engine.secret_key, srv.interfaces_url
        assert send(_Sb, "SALE", "3.00")["Result"] == "APPROVED"
    finally:
        srv.shutdown()
    bad = subprocess.run([sys.executable, "-m", "worker.sandbox", "--port", "0", "--faults", '{"x": 1}'],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown keys" in bad.stderr


def test_ledger_and_orders_by_order_id(sb):
    """What a harness needs to count charges per ORDER_ID."""
    sale = send(sb, "SALE", "3.00")
    oid = sale["ORDER_ID"]
    send(sb, "SALE", "3.00", ORDER_ID=oid, DUPLICATE_OVERRIDE="1")
    send(sb, "SALE", "4.00", ORDER_ID=oid)
    send(sb, "VOID", "", sale["RRNO"], ORDER_ID=oid)
    rows = sb.ledger(order_id=oid)
    assert [(r["trans_type"], r["status"], r["order_id"]) for r in rows] == [
        ("SALE", "1", oid), ("SALE", "1", oid), ("SALE", "0", oid), ("VOID", "1", oid)]
    assert sb.ledger(order_id="no-such-order") == []
    assert sb.orders(oid) == {oid: {"entries": 4, "approved": {"SALE": 2, "VOID": 1}, "declined": {"SALE": 1},
                                    "voided": {"SALE": 1}, "held": 0}}
    assert sb.charges(oid) == 2 and sb.charges(oid, "AUTH") == 0 and sb.charges("no-such-order") == 0
    assert sb.orders("no-such-order") == {}
    assert oid in sb.orders() and len(sb.orders()) >= 1
    stats = sb.stats()
    assert stats["ledger_size"] >= 4 and stats["late_commits"] == {"held": 0, "committed": 0}
    assert stats["duplicate_window"] == 120.0


def _start_cli(env_extra: dict, *args: str):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k not in ("SANDBOX_FAULTS", "SANDBOX_DUPLICATE_WINDOW")}
    env.update(env_extra)
    env["PYTHONPATH"] = str(root)
    return subprocess.Popen([sys.executable, "-m", "worker.sandbox", "--port", "0", *args], cwd=str(root),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("env_window,args,expected", [
    ("0", (), 0.0), ("30", (), 30.0), ("0", ("--duplicate-window", "45"), 45.0), ("", (), 120.0)])
def test_duplicate_window_from_env_or_flag(env_window, args, expected):
    proc = _start_cli({"SANDBOX_DUPLICATE_WINDOW": env_window}, *args)
    try:
        line = proc.stdout.readline().strip()
        url = line.rsplit(" ", 1)[-1]
        assert line.startswith("sandbox listening on "), (line, proc.stderr.read() if proc.poll() else "")
        assert requests.get(url + "/sandbox/duplicates", timeout=5).json() == {"window": expected,
                                                                                "enabled": expected > 0}
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize("env_window,args", [("soon", ()), ("-1", ()), ("", ("--duplicate-window", "-5"))])
def test_bad_duplicate_window_is_refused_at_start(env_window, args):
    proc = _start_cli({"SANDBOX_DUPLICATE_WINDOW": env_window}, *args)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "duplicate window" in err


def test_late_commit_fault_from_the_command_line():
    with running_sandbox(faults={"sequence": ["late_commit"], "late_commit_seconds": 0.3},
                         duplicate_window=0) as s:
        assert s.duplicates()["enabled"] is False
        f = bp_fields(s, "SALE", "3.00")
        with pytest.raises(requests.ReadTimeout):
            post_raw(s, f, timeout=(2, 0.1))
        assert s.ledger(order_id=f["ORDER_ID"]) == []
        s.wait_no_held(timeout=3)
        assert s.charges(f["ORDER_ID"]) == 1


# ----------------------------------------------------------------- TRANSACTION TIMESTAMP (bp10emu text)
def central(seconds_ago: float) -> str:
    """Now minus ``seconds_ago`` as BluePay's TRANS_SUBMIT_TIMESTAMP: US Central time, YYYY-MM-DD HH:MM:SS."""
    from zoneinfo import ZoneInfo

    when = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds_ago)
    return when.astimezone(ZoneInfo("America/Chicago")).strftime("%Y-%m-%d %H:%M:%S")


def test_an_expired_submit_timestamp_is_too_old_and_not_saved(sb):
    fields = bp_fields(sb, "SALE", "3.00", TRANS_SUBMIT_TIMESTAMP=central(6 * 60), TRANS_EXPIRE_PERIOD="5 MINUTES")
    r = send_fields(sb, fields)
    assert r["Result"] == "ERROR" and r["MESSAGE"] == "TRANSACTION TOO OLD" and stamp_ok(sb.secret_key, r)
    assert not r.get("TRANS_ID") and sb.ledger(order_id=fields["ORDER_ID"]) == []


def test_a_fresh_submit_timestamp_is_processed_and_the_fields_are_outside_the_seal(sb):
    fields = bp_fields(sb, "SALE", "3.00", TRANS_SUBMIT_TIMESTAMP=central(4 * 60), TRANS_EXPIRE_PERIOD="5 MINUTES")
    r = send_fields(sb, fields)  # sealed over the documented bp10emu fields only
    assert r["Result"] == "APPROVED" and len(sb.ledger(order_id=fields["ORDER_ID"])) == 1


def test_the_timestamp_is_read_as_central_time_not_utc(sb):
    # Central is 5-6 hours behind UTC: a UTC "now" read as Central lies hours in the future (never too old), and
    # a Central "now" read as UTC would be hours old (too old): only the Central reading accepts this one.
    fields = bp_fields(sb, "SALE", "3.00", TRANS_SUBMIT_TIMESTAMP=central(30), TRANS_EXPIRE_PERIOD="1 MINUTES")
    assert send_fields(sb, fields)["Result"] == "APPROVED"


def test_a_follow_up_is_fenced_too(sb):
    sale = send(sb, "SALE", "3.00")
    fields = bp_fields(sb, "VOID", rrno=sale["RRNO"], card=False, TRANS_SUBMIT_TIMESTAMP=central(3 * 60),
                       TRANS_EXPIRE_PERIOD="2 MINUTES")
    r = send_fields(sb, fields)
    assert r["MESSAGE"] == "TRANSACTION TOO OLD"
    assert send(sb, "VOID", rrno=sale["RRNO"], card=False)["Result"] == "APPROVED"  # the sale was not voided


def test_a_gateway_clock_ahead_refuses_what_ours_would_accept():
    with running_sandbox(extra_args=("--clock-offset", "120")) as skewed:
        fields = bp_fields(skewed, "SALE", "3.00", TRANS_SUBMIT_TIMESTAMP=central(0), TRANS_EXPIRE_PERIOD="1 MINUTES")
        assert send_fields(skewed, fields)["MESSAGE"] == "TRANSACTION TOO OLD"


def send_fields(sb, fields: dict) -> dict:
    return reply_of(post_raw(sb, fields))
