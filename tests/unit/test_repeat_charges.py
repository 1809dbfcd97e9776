"""Repeat charges without card data (docs/tokens.md): the plan of a sale/auth per case, the stored-credential flags,
customer token names. Pure logic, tables."""
from __future__ import annotations

import pytest

from worker.gateway import InvalidInput, protocol
from worker.gateway.tokens import StoredCredential, customer_token, generated_customer_token, stored_credential
from worker.payments.repeat import RepeatCharge, plan_repeat

TOKEN = "100000000123"


@pytest.mark.parametrize("operation,repeat,card,amount,flags,sent", [
    ("sale", RepeatCharge(), True, "3.00", None, {}),
    ("auth", RepeatCharge(), True, "5.00", None, {}),
    ("auth", RepeatCharge(), True, "0.00", ("F", "C"), {}),
    ("auth", RepeatCharge(initiator="merchant"), True, "0.00", ("F", "M"), {}),
    ("sale", RepeatCharge(token=TOKEN), False, "3.00", ("S", "M"), {"token": TOKEN}),
    ("auth", RepeatCharge(token=TOKEN, initiator="customer"), False, "3.00", ("S", "C"), {"token": TOKEN}),
    ("sale", RepeatCharge(token=TOKEN, initiator="merchant", scheduled=True), False, "3.00", ("S", "R"),
     {"token": TOKEN}),
    ("sale", RepeatCharge(customer_token="bob-1"), False, "3.00", ("S", "M"), {"customer_token": "bob-1"}),
    ("auth", RepeatCharge(new_customer_token="bob-1"), True, "0.00", ("F", "C"), {"new_customer_token": "bob-1"}),
    ("auth", RepeatCharge(new_customer_token="bob-1"), True, "1.00", ("F", "C"), {"new_customer_token": "bob-1"}),
], ids=["card-sale", "card-auth", "store", "store-merchant", "token-sale", "token-auth-customer", "token-scheduled",
        "customer-token-sale", "new-customer-token", "new-customer-token-charging"])
def test_the_plan_of_each_kind_of_charge(operation, repeat, card, amount, flags, sent):
    plan = plan_repeat(operation, "pid-1", repeat, card_given=card, amount=amount)
    stored = plan.gateway_kwargs.pop("stored", None)
    assert plan.gateway_kwargs == sent
    assert (None if stored is None else (stored.indicator, stored.type)) == flags
    assert ("token:" in plan.target) == ("token" in sent)


@pytest.mark.parametrize("operation,repeat,card,named", [
    ("sale", RepeatCharge(), False, "card"),
    ("sale", RepeatCharge(token=TOKEN), True, "card"),
    ("sale", RepeatCharge(token=TOKEN, customer_token="bob"), False, "card"),
    ("sale", RepeatCharge(token="12345"), False, "token"),
    ("sale", RepeatCharge(token=TOKEN, initiator="robot"), False, "initiator"),
    ("sale", RepeatCharge(token=TOKEN, initiator="customer", scheduled=True), False, "scheduled"),
    ("sale", RepeatCharge(token=TOKEN, scheduled="yes"), False, "scheduled"),
    ("sale", RepeatCharge(new_customer_token="bob"), True, "new_customer_token"),
    ("auth", RepeatCharge(token=TOKEN, new_customer_token="bob"), False, "new_customer_token"),
    ("auth", RepeatCharge(new_customer_token="has space"), True, "new_customer_token"),
    ("sale", RepeatCharge(customer_token=""), False, "customer_token"),
    ("sale", RepeatCharge(initiator="merchant"), True, "initiator"),
], ids=["nothing", "card-and-token", "two-tokens", "short-token", "bad-initiator", "customer-scheduled",
        "scheduled-not-bool", "new-token-on-sale", "new-token-without-card", "bad-name", "empty-name",
        "flags-on-plain-card"])
def test_a_wrong_request_is_refused_naming_its_argument(operation, repeat, card, named):
    with pytest.raises(InvalidInput) as raised:
        plan_repeat(operation, "pid-1", repeat, card_given=card, amount="3.00")
    assert raised.value.field == named


def test_a_generated_customer_token_is_the_same_on_every_delivery():
    first = plan_repeat("auth", "pid-9", RepeatCharge(new_customer_token=True), card_given=True, amount="0.00")
    again = plan_repeat("auth", "pid-9", RepeatCharge(new_customer_token=True), card_given=True, amount="0.00")
    other = plan_repeat("auth", "pid-10", RepeatCharge(new_customer_token=True), card_given=True, amount="0.00")
    name = first.gateway_kwargs["new_customer_token"]
    assert name == again.gateway_kwargs["new_customer_token"] == generated_customer_token("pid-9")
    assert len(name) == 16 and int(name, 16) >= 0 and name != other.gateway_kwargs["new_customer_token"]


def test_the_stored_id_is_sent_on_later_charges_only():
    later = plan_repeat("sale", "p", RepeatCharge(token=TOKEN), card_given=False, amount="3.00", stored_id="TESTID1")
    assert later.gateway_kwargs["stored"].fields() == {"STORED_INDICATOR": "S", "STORED_TYPE": "M",
                                                       "STORED_ID": "TESTID1"}
    assert stored_credential(first=True).fields() == {"STORED_INDICATOR": "F", "STORED_TYPE": "C"}


def test_the_key_is_bound_to_the_token_and_the_flags():
    one = plan_repeat("sale", "p", RepeatCharge(token=TOKEN), card_given=False, amount="3.00")
    other = plan_repeat("sale", "p", RepeatCharge(token="100000000124"), card_given=False, amount="3.00")
    scheduled = plan_repeat("sale", "p", RepeatCharge(token=TOKEN, initiator="merchant", scheduled=True),
                            card_given=False, amount="3.00")
    assert len({one.target, other.target, scheduled.target}) == 3


@pytest.mark.parametrize("name,ok", [("a", True), ("Bob_Tester-1.x", True), ("x" * 64, True), ("x" * 65, False),
                                     ("", False), ("a b", False), ("ä", False), (7, False)])
def test_customer_token_names(name, ok):
    if ok:
        assert customer_token(name) == name
    else:
        with pytest.raises(InvalidInput):
            customer_token(name)


@pytest.mark.parametrize("kwargs,absent,present", [
    ({"token": TOKEN}, {"CC_NUM", "CC_EXPIRES", "CVCCVV2", "PAYMENT_TYPE", "CUST_TOKEN"}, {"RRNO": TOKEN}),
    ({"customer_token": "bob"}, {"CC_NUM", "RRNO_SET"}, {"CUST_TOKEN": "bob", "RRNO": ""}),
    ({"card": {"number": "4111111111111111", "expire": "1239", "cvv2": "123"}, "new_customer_token": "bob",
      "stored": StoredCredential("F", "C")},
     {"CUST_TOKEN"}, {"NEW_CUST_TOKEN": "bob", "STORED_INDICATOR": "F", "STORED_TYPE": "C", "RRNO": ""}),
], ids=["token", "customer-token", "store-with-name"])
def test_the_fields_of_a_repeat_charge(kwargs, absent, present):
    fields = protocol.transaction_request(account_id="100000000001", secret_key="k", mode="TEST", hash_type=None,
                                          transaction_type="AUTH", amount="0.00", **kwargs)
    assert not absent & set(fields)
    assert {k: fields[k] for k in present} == present


@pytest.mark.parametrize("kwargs", [{}, {"token": TOKEN, "customer_token": "bob"},
                                    {"token": TOKEN, "card": {"number": "4111111111111111", "expire": "1239"}},
                                    {"customer_token": "bob", "new_customer_token": "ann"}])
def test_a_charge_names_exactly_one_payment_source(kwargs):
    with pytest.raises(InvalidInput):
        protocol.transaction_request(account_id="100000000001", secret_key="k", mode="TEST", hash_type=None,
                                     transaction_type="SALE", amount="3.00", **kwargs)


def test_follow_ups_take_no_token():
    with pytest.raises(InvalidInput):
        protocol.transaction_request(account_id="100000000001", secret_key="k", mode="TEST", hash_type=None,
                                     transaction_type="VOID", rrno=TOKEN, token=TOKEN)
