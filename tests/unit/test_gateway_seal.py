import hashlib
import hmac

import pytest

from worker.gateway import seal as S

from .gateway_replies import SECRET, independent_seal, stamped


def test_published_md5_example():
    message = S.transaction_seal_message({"MERCHANT": "demo", "TRANSACTION_TYPE": "SALE", "AMOUNT": "10.00"})
    assert message == "demoSALE10.00"
    got = S.seal("raouhc.jbefiougb", message, "MD5")
    assert got == "9515409f78817e9da5ee396fb24fea7d"
    assert got == hashlib.md5(b"raouhc.jbefiougbdemoSALE10.00").hexdigest()


VECTORS = [
    ("MD5", lambda k, m: hashlib.md5(k + m).hexdigest()),
    ("SHA256", lambda k, m: hashlib.sha256(k + m).hexdigest()),
    ("SHA512", lambda k, m: hashlib.sha512(k + m).hexdigest()),
    ("HMAC_SHA256", lambda k, m: hmac.new(k, m, hashlib.sha256).hexdigest()),
    ("HMAC_SHA512", lambda k, m: hmac.new(k, m, hashlib.sha512).hexdigest()),
]


@pytest.mark.parametrize("hash_type,ref", VECTORS)
def test_every_hash_type_matches_independent_computation(hash_type, ref):
    msg = "100228390579SALE3.00TEST"
    assert S.seal(SECRET, msg, hash_type) == ref(SECRET.encode(), msg.encode())
    assert hash_type in S.HASH_TYPES


def test_known_vectors_fixed():
    # fixed digests, computed once with hashlib/hmac (guards against both sides drifting together)
    assert S.seal("key", "msg", "SHA256") == hashlib.sha256(b"keymsg").hexdigest()
    assert S.seal("key", "msg", "HMAC_SHA256") == (
        "2d93cbc1be167bcb1637a4a23cbff01a7878f0c50ee833954ea5221bb1b8c628"
    )


@pytest.mark.parametrize("ht", ["", None, "SHA1", "bogus"])
def test_unknown_or_empty_type_is_hmac_sha512(ht):
    assert S.seal(SECRET, "abc", ht) == hmac.new(SECRET.encode(), b"abc", hashlib.sha512).hexdigest()
    assert S.DEFAULT_HASH_TYPE == "HMAC_SHA512"


def test_lower_case_type_accepted():
    assert S.seal(SECRET, "abc", "md5") == hashlib.md5(SECRET.encode() + b"abc").hexdigest()


def test_transaction_message_order_and_absent_fields():
    fields = {
        "MODE": "TEST", "RRNO": "100229460097", "REB_AMOUNT": "", "AMOUNT": "3.00",
        "TRANSACTION_TYPE": "REFUND", "MERCHANT": "100228390579", "NAME1": "ignored",
    }
    assert S.transaction_seal_message(fields) == "100228390579REFUND3.00100229460097TEST"


def test_query_message():
    fields = {"REPORT_END_DATE": "2025-02-01", "ACCOUNT_ID": "100228390579", "REPORT_START_DATE": "2025-01-01",
              "id": "1"}
    assert S.query_seal_message(fields) == "1002283905792025-01-012025-02-01"


@pytest.mark.parametrize("hash_type", S.HASH_TYPES)
def test_stamp_matches_every_type(hash_type):
    pairs = stamped({"Result": "APPROVED", "RRNO": "100229460097", "ISSUE_DATE": "2025-11-27"}, hash_type=hash_type)
    assert S.stamp_matches(SECRET, pairs)
    lower = dict(pairs, BP_STAMP=pairs["BP_STAMP"].lower())
    assert S.stamp_matches(SECRET, lower)  # case-insensitive
    assert not S.stamp_matches("other-secret", pairs)
    assert not S.stamp_matches(SECRET, dict(pairs, Result="DECLINED"))


def test_stamp_absent_field_counts_as_empty():
    pairs = stamped({"Result": "DECLINED", "ISSUE_DATE": "x"}, stamp_def="RRNO ISSUE_DATE Result")
    assert S.stamp_matches(SECRET, pairs)
    assert independent_seal(SECRET, "xDECLINED", "HMAC_SHA512").upper() == pairs["BP_STAMP"]


def test_stamp_missing_never_matches():
    assert not S.stamp_matches(SECRET, {"Result": "APPROVED"})
    assert not S.stamp_matches(SECRET, {"Result": "APPROVED", "BP_STAMP": "", "BP_STAMP_DEF": "Result"})
    assert not S.stamp_matches(SECRET, {"Result": "APPROVED", "BP_STAMP": "AB"})
