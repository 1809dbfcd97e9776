from dataclasses import FrozenInstanceError
from datetime import date
from decimal import Decimal

import pytest

from worker.gateway import validation as V
from worker.gateway.errors import InvalidInput, PaymentError

TODAY = date(2025, 11, 27)
VISA = "4111111111111111"


@pytest.mark.parametrize(
    "value,expected",
    [("3.00", "3.00"), ("3", "3.00"), ("3.5", "3.50"), (" 10.01 ", "10.01"), (Decimal("3.1"), "3.10"),
     (3, "3.00"), ("99999.99", "99999.99"), ("0.01", "0.01"), (Decimal("7"), "7.00")],
)
def test_amount_good(value, expected):
    assert V.amount(value) == expected


@pytest.mark.parametrize(
    "value",
    [3.0, 3.5, "3.001", "-1", -1, "abc", "", "0", "0.00", 0, "1e2", "3.", ".5x", "100000.00", True,
     None, Decimal("NaN"), Decimal("3.001"), Decimal("-2"), "1,000.00", "٣.00"],
)
def test_amount_bad(value):
    with pytest.raises(InvalidInput) as ei:
        V.amount(value)
    assert ei.value.field == "amount"
    assert "amount" in str(ei.value)


def test_amount_float_message():
    with pytest.raises(InvalidInput, match="float"):
        V.amount(3.0)


def test_amount_zero_only_when_allowed():
    assert V.amount("0.00", allow_zero=True) == "0.00"
    assert V.amount(0, allow_zero=True) == "0.00"
    with pytest.raises(InvalidInput):
        V.amount("0.00")
    with pytest.raises(InvalidInput):
        V.amount("-0.01", allow_zero=True)


def test_max_amount_constant():
    assert Decimal("99999.99") == V.MAX_AMOUNT


def test_card_good_and_normalised():
    c = V.card({"number": "4111 1111-1111 1111", "expire": "1230", "cvv2": "123"}, today=TODAY)
    assert c == V.Card(VISA, "1230", "123")
    assert c.masked == "xxxxxxxxxxxx1111"
    assert VISA not in repr(c) and "123'" not in repr(c) and VISA not in str(c)
    assert "xxxxxxxxxxxx1111" in repr(c)
    with pytest.raises(FrozenInstanceError):
        c.number = "x"  # type: ignore[misc]  # frozen: the assignment is what must fail


def test_card_cvv_optional_and_this_month_valid():
    c = V.card({"number": VISA, "expire": "1125"}, today=TODAY)
    assert c.cvv2 is None and c.expire == "1125"
    assert V.card({"number": VISA, "expire": "11/25", "cvv2": ""}, today=TODAY).cvv2 is None
    assert V.card(V.Card(VISA, "1230", "1234"), today=TODAY).cvv2 == "1234"


@pytest.mark.parametrize(
    "card,field",
    [
        ({"number": "4111111111111112", "expire": "1230"}, "card.number"),  # Luhn
        ({"number": "4111x11111111111", "expire": "1230"}, "card.number"),
        ({"number": "41111111111", "expire": "1230"}, "card.number"),  # 11 digits
        ({"number": "4" * 20, "expire": "1230"}, "card.number"),
        ({"number": 4111111111111111, "expire": "1230"}, "card.number"),
        ({"expire": "1230"}, "card.number"),
        ({"number": VISA, "expire": "1025"}, "card.expire"),  # past
        ({"number": VISA, "expire": "1324"}, "card.expire"),  # bad month
        ({"number": VISA, "expire": "0030"}, "card.expire"),
        ({"number": VISA, "expire": "123"}, "card.expire"),
        ({"number": VISA, "expire": "2030-12"}, "card.expire"),
        ({"number": VISA}, "card.expire"),
        ({"number": VISA, "expire": "1230", "cvv2": "12"}, "card.cvv2"),
        ({"number": VISA, "expire": "1230", "cvv2": "12345"}, "card.cvv2"),
        ({"number": VISA, "expire": "1230", "cvv2": "12a"}, "card.cvv2"),
        ({"number": VISA, "expire": "1230", "cvv2": 123}, "card.cvv2"),
        ({"number": VISA, "expire": "1230", "pin": "1"}, "card"),
        ("4111111111111111", "card"),
    ],
)
def test_card_bad(card, field):
    with pytest.raises(InvalidInput) as ei:
        V.card(card, today=TODAY)
    assert ei.value.field == field
    assert VISA not in str(ei.value) and "4111x" not in str(ei.value)


def test_luhn():
    assert V.luhn_ok("4111111111111111")
    assert V.luhn_ok("5500005555555559")
    assert V.luhn_ok("378282246310005")
    assert not V.luhn_ok("4111111111111121")


CUSTOMER = {"name1": "Bob", "name2": "Tester", "addr1": "123 Test St.", "addr2": "Apt #500",
            "city": "Testville", "state": "IL", "zipcode": "54321", "country": "USA"}


def test_customer_mapping():
    out = V.customer(CUSTOMER | {"phone": "555-1234", "email": "bob@example.com", "company_name": "ACME"})
    assert out == {"NAME1": "Bob", "NAME2": "Tester", "ADDR1": "123 Test St.", "ADDR2": "Apt #500",
                   "CITY": "Testville", "STATE": "IL", "ZIPCODE": "54321", "COUNTRY": "USA",
                   "PHONE": "555-1234", "EMAIL": "bob@example.com", "COMPANY_NAME": "ACME"}
    assert V.customer(None) == {} and V.customer({}) == {}
    assert V.customer(out) == out  # idempotent: BluePay names accepted as well
    with pytest.raises(InvalidInput):
        V.customer({"NAME1": "x" * 65})
    assert set(V.CUSTOMER_FIELDS) == {"name1", "name2", "addr1", "addr2", "city", "state", "zipcode",
                                      "country", "phone", "email", "company_name"}


@pytest.mark.parametrize(
    "value,field",
    [({"name1": "Bob\nX"}, "customer.name1"), ({"city": "a\x00b"}, "customer.city"),
     ({"addr1": "x\u2028y"}, "customer.addr1"),
     ({"zipcode": "1" * 17}, "customer.zipcode"), ({"nickname": "b"}, "customer.nickname"),
     ({"name1": 5}, "customer.name1"), (["name1"], "customer")],
)
def test_customer_bad(value, field):
    with pytest.raises(InvalidInput) as ei:
        V.customer(value)
    assert ei.value.field == field


def test_trans_id():
    assert V.trans_id("100229460097") == "100229460097"
    assert V.trans_id(100229460097) == "100229460097"
    for bad in ("10022946009", "1002294600971", "10022946009a", "", None, True, 1.5):
        with pytest.raises(InvalidInput) as ei:
            V.trans_id(bad)
        assert ei.value.field == "trans_id"


def test_order_id():
    assert V.order_id("order-1#2") == "order-1#2"
    assert V.order_id("x" * 128) == "x" * 128
    # a space anywhere: a gateway may trim or collapse it when it stores or searches (stq), so never sent
    for bad in ("", "x" * 129, "a\nb", "tab\t", None, 5, "é", "order-1 #2", "key ", " key", "a\x00b", "a\x7fb"):
        with pytest.raises(InvalidInput) as ei:
            V.order_id(bad)
        assert ei.value.field == "order_id"


@pytest.mark.parametrize("bad", ["", "key ", " key", "two words", "tab\tkey", "line\nkey", "nul\x00", "del\x7f",
                                 "nbsp\u00a0", "x" * 101, None, 5])
def test_an_idempotency_key_with_spaces_or_control_characters_is_refused_not_normalised(bad):
    with pytest.raises(InvalidInput) as ei:
        V.idempotency_key(bad)
    assert ei.value.field == "idempotency_key"


def test_an_idempotency_key_is_kept_as_given():
    for good in ("checkout-8f2c", "a", "x" * 100, "ORD:42/7~!"):
        assert V.idempotency_key(good) == good
    with pytest.raises(InvalidInput) as ei:
        V.idempotency_key("a b", "task_id")
    assert ei.value.field == "task_id"


def test_invalid_input_is_payment_error():
    e = InvalidInput("amount", "bad")
    assert isinstance(e, PaymentError) and e.field == "amount" and "amount" in str(e)
