"""Repeat charges without card data (issue 29), our client against our sandbox over HTTP on loopback: token sales
by transaction id, storing a card with a $0 auth, customer tokens, stored-credential flags."""
from __future__ import annotations

import uuid

import pytest

from tests.support.env import CUSTOMER, TEST_CARD
from tests.support.sandbox import running_sandbox
from worker.gateway import BluePayClient, Rejected, RetryPolicy
from worker.gateway.tokens import stored_credential


@pytest.fixture(scope="module")
def sb():
    with running_sandbox() as sandbox:
        yield sandbox


@pytest.fixture
def client(sb):
    sb.set_dialect(token_source="any", stored_id="established")
    yield BluePayClient(account_id=sb.account_id, secret_key=sb.secret_key, base_url=sb.interfaces_url,
                        connect_timeout=1.0, read_timeout=2.0,
                        retry_policy=RetryPolicy(max_attempts=2, max_seconds=2.0, initial_wait=0.05, max_wait=0.1))
    sb.set_dialect(token_source="any", stored_id="established")


def order() -> str:
    return f"tok-{uuid.uuid4().hex}"


def stored_card(client: BluePayClient, **kwargs):
    return client.auth("0.00", TEST_CARD, CUSTOMER, order_id=order(), stored=stored_credential(first=True), **kwargs)


def test_a_zero_auth_stores_the_card_and_its_id_is_a_token(sb, client):
    stored = stored_card(client)
    assert stored.approved and stored.message == "INFORMATION STORED" and len(stored.trans_id) == 12
    sale_order = order()
    sold = client.sale("3.00", token=stored.trans_id, order_id=sale_order,
                       stored=stored_credential(first=False, initiator="merchant", stored_id=stored.stored_id))
    assert sold.approved and sold.message == "Approved Sale" and sold.trans_id != stored.trans_id
    assert sold.masked_account == "xxxxxxxxxxxx1111" and sold.card_type == "VISA"
    [row] = sb.ledger(order_id=sale_order)
    assert row["rrno"] == stored.trans_id and row["trans_type"] == "SALE"


def test_a_token_sale_sends_no_card_data(sb, client):
    from worker.gateway import protocol

    fields = protocol.transaction_request(account_id="100000000001", secret_key="k", mode="TEST", hash_type=None,
                                          transaction_type="SALE", amount="3.00", token="123456789012")
    assert fields["RRNO"] == "123456789012"
    assert not {"CC_NUM", "CC_EXPIRES", "CVCCVV2", "PAYMENT_TYPE"} & set(fields)


@pytest.mark.parametrize("answer,message", [("error_reading", "Error reading master transaction"),
                                            ("could_not_locate", "COULD NOT LOCATE ORIGINAL TRANSACTION")])
def test_an_unknown_token_is_an_error_answer_whichever_message(sb, client, answer, message):
    sb.set_dialect(unknown_token=answer)
    try:
        with pytest.raises(Rejected) as raised:
            client.sale("3.00", token="999999999999", order_id=order())
    finally:
        sb.set_dialect(unknown_token="error_reading")
    assert raised.value.response.status == "ERROR" and raised.value.response.message == message


def test_a_stored_card_auth_cannot_be_captured(client):
    stored = stored_card(client)
    with pytest.raises(Rejected) as raised:
        client.capture(stored.trans_id, order_id=order())
    assert raised.value.response.message == "Cannot CAPTURE Zero AUTH"


def test_a_token_sale_can_be_voided(client):
    stored = stored_card(client)
    sold = client.auth("5.00", token=stored.trans_id, order_id=order())
    voided = client.void(sold.trans_id, order_id=order())
    assert sold.approved and voided.approved and voided.message == "Approved Void"


@pytest.mark.parametrize("source", ["any", "approved"])
def test_a_declined_transaction_as_a_token_either_way_the_gateway_answers(sb, client, source):
    # The bp10emu text does not say whether a declined transaction's card can be charged by its id.
    sb.set_dialect(token_source=source)
    declined = client.sale("4.00", TEST_CARD, order_id=order())
    assert declined.status == "DECLINED"
    if source == "any":
        assert client.sale("3.00", token=declined.trans_id, order_id=order()).approved
    else:
        with pytest.raises(Rejected):
            client.sale("3.00", token=declined.trans_id, order_id=order())


def test_customer_tokens_are_reused_and_must_be_unique(client):
    name = f"cust-{uuid.uuid4().hex[:12]}"
    stored = stored_card(client, new_customer_token=name)
    assert stored.approved and stored.customer_token == name
    sold = client.sale("7.00", customer_token=name, order_id=order())
    assert sold.approved and sold.customer_token == name and sold.masked_account == "xxxxxxxxxxxx1111"
    with pytest.raises(Rejected) as raised:
        stored_card(client, new_customer_token=name)
    assert "Customer Tokens must be unique" in raised.value.response.message
    with pytest.raises(Rejected):
        client.sale("3.00", customer_token=f"nobody-{uuid.uuid4().hex[:8]}", order_id=order())


@pytest.mark.parametrize("established", ["established", "none"])
def test_stored_credential_flags_are_sent_as_documented(sb, client, established):
    sb.set_dialect(stored_id=established)
    first_order, later_order = order(), order()
    first = client.auth("0.00", TEST_CARD, order_id=first_order, stored=stored_credential(first=True))
    [row] = sb.ledger(order_id=first_order)
    assert (row["stored_indicator"], row["stored_type"]) == ("F", "C")
    assert bool(first.stored_id) == (established == "established")
    client.sale("9.00", token=first.trans_id, order_id=later_order,
                stored=stored_credential(first=False, initiator="merchant", scheduled=True,
                                         stored_id=first.stored_id or None))
    [row] = sb.ledger(order_id=later_order)
    assert (row["stored_indicator"], row["stored_type"]) == ("S", "R")
    assert row["stored_id"] == first.stored_id


def test_a_credit_sends_money_to_a_card_and_cannot_be_refunded(sb, client):
    credit_order = order()
    credited = client.credit("3.00", TEST_CARD, CUSTOMER, order_id=credit_order)
    assert credited.approved and credited.trans_type == "CREDIT" and credited.masked_account == "xxxxxxxxxxxx1111"
    with pytest.raises(Rejected) as raised:
        client.refund(credited.trans_id, order_id=order())
    assert raised.value.response.message == "Cannot REFUND a CREDIT"  # BluePay_MESSAGE_values.txt
    found = client.query(order_id=credit_order)
    assert found is not None and found.trans_type == "CREDIT" and found.trans_id == credited.trans_id
    assert client.void(credited.trans_id, order_id=order()).approved


def test_an_update_replaces_the_sale_and_later_verbs_name_the_update(sb, client):
    sold = client.sale("3.00", TEST_CARD, order_id=order())
    updated = client.update(sold.trans_id, "5.75", order_id=order())
    assert updated.approved and updated.trans_type == "UPDATE" and updated.trans_id != sold.trans_id
    assert updated.amount == "5.75"
    with pytest.raises(Rejected) as raised:
        client.void(sold.trans_id, order_id=order())
    assert raised.value.response.message == "Cannot VOID an updated transaction, VOID the update instead."
    assert client.void(updated.trans_id, order_id=order()).approved


@pytest.mark.parametrize("answer", ["refused", "allowed"])
def test_an_auth_update_either_way_the_gateway_answers(sb, client, answer):
    sb.set_dialect(update_auth=answer)
    try:
        authorized = client.auth("5.00", TEST_CARD, order_id=order())
        if answer == "allowed":
            updated = client.update(authorized.trans_id, "7.00", order_id=order())
            assert updated.approved
            assert client.capture(updated.trans_id, order_id=order()).approved
        else:
            with pytest.raises(Rejected) as raised:
                client.update(authorized.trans_id, "7.00", order_id=order())
            assert raised.value.response.message == "Cannot UPDATE a AUTH"
    finally:
        sb.set_dialect(update_auth="refused")


def test_a_declined_sale_cannot_be_updated(client):
    declined = client.sale("4.00", TEST_CARD, order_id=order())
    with pytest.raises(Rejected) as raised:
        client.update(declined.trans_id, "5.00", order_id=order())
    assert raised.value.response.message == "Can only UPDATE approved transactions."
