"""worker.cards.numbers: the one rule for "is this a card number", as tables (the module docstring's table first)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from decimal import Decimal

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from worker.cards import numbers as C

# A task id whose digits hold a Luhn-valid 14-digit dash-grouped run (305-6820-4063-903).
TASK_ID = "cd27c305-6820-4063-903f-1a2b3c4d5e6f"
LUHN_ORDER = "1234567890123452"  # a 16-digit id that passes Luhn, like ~1 in 10 numeric order ids


def luhn_independent(digits: str) -> bool:
    """Luhn, written out differently from worker.cards.numbers (double every second digit from the right)."""
    doubled = [int(d) * (2 if i % 2 else 1) for i, d in enumerate(reversed(digits))]
    return sum(d // 10 + d % 10 for d in doubled) % 10 == 0


def test_the_fixtures_are_what_they_claim():
    assert luhn_independent("3056820406390" "3") and luhn_independent(LUHN_ORDER)
    assert luhn_independent("4111111111111111") and not luhn_independent("4111111111111112")
    assert luhn_independent("100000000123")  # a 12-digit trans id that passes Luhn


# ---- the docstring's table: (text, is it a card number) ----------------------------------------------
TEXT_TABLE = [
    # counts
    ("4111111111111111", True),
    ("4111 1111 1111 1111", True),
    ("4111-1111-1111-1111", True),
    ("3782 822463 10005", True),  # Amex grouping 4-6-5
    ("378282246310005", True),  # 15 digits
    ("6011000990139424", True),
    ("4222222222222", True),  # 13 digits (old Visa)
    ("6011000990139424009", True),  # 19 digits
    ("6011 0009 9013 9424 009", True),
    ("ORD-4111111111111111", True),  # glued to letters and a separator
    ("ORD-4111111111111111-retry2", True),
    ("x4111111111111111", True),
    ("x4111111111111111y", True),
    ("card=4111111111111111&x=1", True),
    ('{"number": "4111111111111111"}', True),
    ("4111 1111 1111 1111 123", True),  # a card among longer groups (a CVV2 written after it)
    ("qty 1 4111111111111111", True),
    ("4111111111111111.00", True),  # the integer part of a decimal is read
    ("1.5 4111 1111 1111 1111", True),  # only the fraction's own digits are skipped
    (TASK_ID + "-4111111111111111", True),  # a card next to a task id is still a card
    ("a4111111111111111b", True),  # short hex-looking token: not an identifier
    # any separator run joins groups of 3-6 digits (issue 25: six spellings went into the broker in clear)
    ("5555.5555.5555.4444", True),
    ("5555/5555/5555/4444", True),
    ("5555_5555_5555_4444", True),
    ("5555\t5555\t5555\t4444", True),  # tabs
    (repr("5555\t5555\t5555\t4444"), True),  # the same in a repr (a written \t)
    ("5555+5555+5555+4444", True),
    ("5555   5555  5555    4444", True),  # several spaces
    ("5555%205555%205555%204444", True),  # URL-encoded spaces
    ("5555%2D5555%2d5555%2F4444", True),  # other escapes, any case
    ("5555 -_ 5555./5555\t+4444", True),  # mixed
    ("card=%205555555555554444&x=1", True),  # an escape before the number is no digit of it
    ("1234.5678.9012.3452", True),  # groups after a dot join like any others
    ("x 5555-_-_-_-_-_-_5555 5555 4444", True),  # a separator run of 12
    # does not count
    ("4111111111111112", False),  # fails Luhn
    ("4111 1111 1111 1112", False),
    ("100000000123", False),  # a 12-digit BluePay trans id, whatever its Luhn
    ("trans 100000000123 at 1764213456.123 xxxxxxxxxxxx1111", False),
    ("411111111111", False),  # 12 digits
    (TASK_ID, False),  # a UUID: 305-6820-4063-903 passes Luhn but is part of the id
    (TASK_ID.upper(), False),
    (f"celery-task-meta-{TASK_ID}", False),
    (f"{TASK_ID}:void", False),
    ("order-cd27c30568204063903f1a2b3c4d5e6f", False),  # uuid4().hex
    ("sha256 " + hashlib.sha256(b"x").hexdigest(), False),
    ("0.00585255199985113", False),  # a float's fractional digits
    ("succeeded in 0.05183274700085167s", False),
    ("12345678901234567890123", False),  # one run of more than 19 digits
    ("2025-11-27 10:00:00", False),
    ("phone 555-1234, zip 54321", False),
    ("4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1", False),  # groups of one digit (the documented price)
    ("41 11 11 11 11 11 11 11", False),  # groups of two
    ('<path d="M8 12a4 4 0 1 0 0-8 4 4 0 0 0 0 8Zm0-11.5a.5.5 0 0 1 "/>', False),  # SVG path data (Flower)
    ("trans 100000000123 3.00", False),  # 12 + 1 digits: a trans id and an amount
    ("100000000123 4567", False),  # a 12-digit group does not join others
    ("4111 11111111 1111", False),  # an 8-digit group does not either
    ("5555-_-_-_-_-_-_-5555 5555 4444", False),  # a separator run of 13 separates
    ("5555\n5555\n5555\n4444", False),  # lines are not joined
    ("5555,5555,5555,4444", False),  # a comma lists numbers
    ("1764213456.1234567 and 0.12345678", False),  # timestamps and fractions
    ("192.168.100.200 10.0.0.1", False),  # IP addresses
    ("%5555555555554444", True),  # a percent sign before a card is no escape of a separator
    ("%205%20555", False),
    ("", False),
    ("xxxxxxxxxxxx1111", False),
    ("٤١١١١١١١١١١١١١١١", False),  # Arabic-Indic digits are not card digits here
    ("４１１１１１１１１１１１１１１１", False),  # full-width
]


@pytest.mark.parametrize("text,is_card", TEXT_TABLE)
def test_what_counts_as_a_card_number(text, is_card):
    assert C.contains_card_number(text) is is_card
    assert bool(C.find_card_numbers(text)) is is_card
    masked = C.mask_text(text)
    if is_card:
        assert masked != text and "xxxxxxxxxxxx" in masked
    else:
        assert masked == text


@pytest.mark.parametrize("text,spans", [
    ("4111111111111111", [(0, 16)]),
    ("ORD-4111111111111111", [(4, 20)]),
    ("4111 1111 1111 1111 123", [(0, 19)]),
    ("a 4111111111111111 b 5500005555555559", [(2, 18), (21, 37)]),
    ("qty 1 4111111111111111", [(6, 22)]),
    (TASK_ID, []),
])
def test_spans(text, spans):
    assert C.find_card_numbers(text) == spans


def test_uuids_are_never_card_numbers():
    for _ in range(20_000):
        u = uuid.uuid4()
        assert not C.contains_card_number(str(u))
        assert not C.contains_card_number(f"payments:op:{u}:void")
        assert not C.contains_card_number(f"order-{u.hex}")


def test_every_12_digit_trans_id_is_not_a_card_number_luhn_or_not():
    ids = [f"1000000001{n:02d}" for n in range(100)]
    assert any(luhn_independent(i) for i in ids)  # some of them pass Luhn
    assert not any(C.contains_card_number(i) for i in ids)


@pytest.mark.parametrize("digits,ok", [
    ("4111111111111111", True), ("5500005555555559", True), ("378282246310005", True), ("0", True),
    ("4111111111111121", False), ("", False), ("41x1", False), ("٤١١١", False), ("4111 1111", False),
])
def test_luhn(digits, ok):
    assert C.luhn_ok(digits) is ok
    if ok and digits:
        assert luhn_independent(digits)


# ---- masking -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("number,masked", [
    ("4111111111111111", "xxxxxxxxxxxx1111"),
    ("4111 1111 1111 1111", "xxxxxxxxxxxx1111"),
    (4111111111111111, "xxxxxxxxxxxx1111"),
    ("378282246310005", "xxxxxxxxxxxx0005"),
    (None, "xxxxxxxxxxxx"),
    ("", "xxxxxxxxxxxx"),
])
def test_mask_number(number, masked):
    assert C.mask_number(number) == masked


@pytest.mark.parametrize("text,masked", [
    ("card 4111-1111-1111-1111.", "card xxxxxxxxxxxx1111."),
    ("ORD-4111111111111111-x", "ORD-xxxxxxxxxxxx1111-x"),
    ("4111 1111 1111 1111 123", "xxxxxxxxxxxx1111 123"),
    ("a 4111111111111111 b 5500005555555559", "a xxxxxxxxxxxx1111 b xxxxxxxxxxxx5559"),
    (f"task {TASK_ID} trans 100000000123", f"task {TASK_ID} trans 100000000123"),
])
def test_mask_text(text, masked):
    assert C.mask_text(text) == masked


# ---- structured values: where card data sits (identifiers are not exempt here: the producer encrypts them) -----
FIELD_TABLE = [
    # (field, value, where the card data is: None = none)
    ("order_id", int(LUHN_ORDER), "order_id"),  # an int is no exception (issue 25)
    ("order_id", LUHN_ORDER, "order_id"),
    ("chain[0].kwargs.order_id", int(LUHN_ORDER), "chain[0].kwargs.order_id"),
    ("chain[0].kwargs.order_id", LUHN_ORDER, "chain[0].kwargs.order_id"),
    ("order_id", 4111111111111111, "order_id"),
    ("order_id", "ORD-2026-0042", None),
    ("order_id", 42, None),
    ("amount", int(LUHN_ORDER), "amount"),
    ("amount", float(LUHN_ORDER), "amount"),
    ("amount", Decimal(LUHN_ORDER), "amount"),
    ("amount", "3.00", None),
    ("trans_id", "100000000123", None),  # 12 digits
    ("trans_id", 100000000123, None),
    ("trans_id", "4111111111111111", "trans_id"),
    ("idempotency_key", "ORD-4111111111111111-retry", "idempotency_key"),
    ("idempotency_key", TASK_ID, None),
    ("idempotency_key", f"order-{uuid.UUID(TASK_ID).hex}", None),
    ("customer", {"name1": "Bob", "addr1": "123 Test St."}, None),
    ("customer", {"name1": "4111 1111 1111 1111"}, "customer.name1"),
    ("customer", {"name1": "Bob", "addr1": "x4111111111111111"}, "customer.addr1"),
    ("customer", {"4111111111111111": "x"}, "customer.xxxxxxxxxxxx1111"),  # a key: named masked
    ("customer", {"order_id": int(LUHN_ORDER)}, "customer.order_id"),
    ("args", ["3.00", {"nested": ["a", "4111111111111111"]}], "args[1].nested[1]"),
    ("flag", True, None),
    ("nothing", None, None),
    ("raw", b"4111111111111111", "raw"),
]


@pytest.mark.parametrize("field,value,where", FIELD_TABLE)
def test_card_data_field_and_refusal(field, value, where):
    assert C.card_data_field(value, field) == where
    if where is None:
        C.refuse_card_data(field, value)
    else:
        with pytest.raises(C.CardDataRefused) as exc:
            C.refuse_card_data(field, value)
        assert exc.value.field == where
        assert isinstance(exc.value, ValueError)
        message = str(exc.value)
        assert where in message
        for leak in ("4111111111111111", "4111 1111", LUHN_ORDER, "x4111"):
            assert leak not in message


@pytest.mark.parametrize("field,identifier", [
    ("order_id", True), ("chain[1].kwargs.order_id", True), ("idempotency_key", True), ("invoice_id", True),
    ("callbacks[0].kwargs.idempotency_key", True), ("amount", False), ("my_order_id", False),
    ("customer.name1", False), ("task_id", False), ("headers.order_id", True),
])
def test_is_identifier_field(field, identifier):
    assert C.is_identifier_field(field) is identifier


@pytest.mark.parametrize("value,card_like", [
    (int(LUHN_ORDER), True), (LUHN_ORDER, True), ("ORD-4111111111111111", True), (4111111111111111, True),
    (42, False), ("ORD-2026-0042", False), (TASK_ID, False), (True, False), (None, False), (4111111111111111.0, False),
    ({"sealed_id": "x", "masked": "xxxxxxxxxxxx3452"}, False),
])
def test_is_card_like_identifier(value, card_like):
    assert C.is_card_like_identifier(value) is card_like


def test_refusal_never_names_the_value_even_in_a_field_name():
    exc = C.CardDataRefused("customer.4111111111111111")
    assert exc.field == "customer.xxxxxxxxxxxx1111" and "4111111111111111" not in str(exc)


# ---- keyed ids of card-like identifiers ----------------------------------------------------------------
def test_keyed_ids_are_keyed_hashes_in_key_order_and_never_card_like():
    ids = C.keyed_ids(LUHN_ORDER, [KEY_A, KEY_B])
    expected = []
    for key in (KEY_A, KEY_B):
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                       info=b"payments identifier digest v1").derive(base64.urlsafe_b64decode(key))
        expected.append("kh-" + hmac.new(derived, LUHN_ORDER.encode(), hashlib.sha256).hexdigest())
    assert ids == expected
    assert C.keyed_ids(int(LUHN_ORDER), [KEY_A]) == ids[:1]  # an int key is its digits
    assert C.keyed_ids("1234 5678 9012 3452", [KEY_A]) != ids[:1]  # identifiers compare exactly
    assert ids[0][3:] != C.card_fingerprints(LUHN_ORDER, [KEY_A])[0]  # another derived key than the card's
    assert not any(C.contains_card_number(i) or LUHN_ORDER in i for i in ids)


# ---- fingerprints ------------------------------------------------------------------------------------
KEY_A = "q8z4Hn1c3l5X1Qd3GzHn8Xb3sMk3yV0cRk8Qm2vJ6pA="
KEY_B = Fernet.generate_key().decode()


def independent_fingerprint(number: str, key: str) -> str:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=b"payments card fingerprint v1").derive(base64.urlsafe_b64decode(key))
    return hmac.new(derived, "".join(ch for ch in number if ch.isdigit()).encode(), hashlib.sha256).hexdigest()


def test_fingerprints_are_keyed_hashes_in_key_order():
    fps = C.card_fingerprints("4111111111111111", [KEY_A, KEY_B])
    assert fps == [independent_fingerprint("4111111111111111", KEY_A),
                   independent_fingerprint("4111111111111111", KEY_B)]
    assert all(len(fp) == 64 and int(fp, 16) >= 0 for fp in fps)


def test_fingerprints_are_stable_and_depend_on_digits_and_key():
    one = C.card_fingerprints("4111111111111111", [KEY_A])
    assert one == C.card_fingerprints("4111 1111 1111 1111", [KEY_A])
    assert one == C.card_fingerprints("4111-1111-1111-1111", [KEY_A])
    assert one != C.card_fingerprints("5500005555555559", [KEY_A])
    assert one != C.card_fingerprints("4111111111111111", [KEY_B])
    assert one[0] != hashlib.sha256(b"4111111111111111").hexdigest()  # keyed, not a plain hash
    assert C.card_fingerprints("4111111111111111", f"{KEY_A}, {KEY_B}") == \
        C.card_fingerprints("4111111111111111", [KEY_A, KEY_B])  # the PAYMENTS_CARD_KEY text works too


def test_fingerprints_never_hold_the_number():
    for fp in C.card_fingerprints("4111111111111111", [KEY_A, KEY_B]):
        assert "4111111111111111" not in fp and not C.contains_card_number(fp)


def test_a_value_without_digits_still_gets_a_fingerprint():  # bad input: validation refuses it, not this
    assert C.card_fingerprints("no digits", [KEY_A]) == C.card_fingerprints("", [KEY_A]) == \
        [independent_fingerprint("", KEY_A)]


@pytest.mark.parametrize("number,keys", [("4111111111111111", []), ("4111111111111111", ["not-a-fernet-key"]),
                                         ("4111111111111111", [KEY_A[:-4]])])
def test_fingerprints_refuse_bad_input_without_echoing_it(number, keys):
    with pytest.raises(ValueError) as exc:
        C.card_fingerprints(number, keys)
    assert "not-a-fernet-key" not in str(exc.value) and "4111" not in str(exc.value)
