"""Our BluePay client against our (independently written) sandbox, over HTTP on loopback."""
from __future__ import annotations

import uuid

import pytest

from tests.support.env import CUSTOMER, TEST_CARD
from tests.support.sandbox import running_sandbox
from worker.gateway import BluePayClient, NotSent, OutcomeUnknown, Rejected, RetryPolicy


@pytest.fixture(scope="module")
def sandbox():
    with running_sandbox() as sb:
        yield sb


@pytest.fixture
def sb(sandbox):
    sandbox.set_faults({})
    yield sandbox
    sandbox.wait_ready(timeout=15)
    sandbox.set_faults({})


def client_for(sandbox, **kwargs) -> BluePayClient:
    options = dict(account_id=sandbox.account_id, secret_key=sandbox.secret_key, base_url=sandbox.interfaces_url,
                   connect_timeout=1.0, read_timeout=1.5,
                   retry_policy=RetryPolicy(max_attempts=3, max_seconds=2.0, initial_wait=0.05, max_wait=0.2))
    options.update(kwargs)
    return BluePayClient(**options)


def order() -> str:
    return f"it-{uuid.uuid4().hex}"


@pytest.mark.parametrize("hash_type", ["MD5", "SHA256", "SHA512", "HMAC_SHA256", "HMAC_SHA512"])
def test_sale_and_void_with_every_hash_type(sb, hash_type):
    client = client_for(sb, hash_type=hash_type)
    sold = client.sale("3.00", TEST_CARD, CUSTOMER, order_id=order())
    assert sold.approved and sold.message == "Approved Sale" and sold.masked_account == "xxxxxxxxxxxx1111"
    voided = client.void(sold.trans_id, order_id=order())
    assert voided.approved and voided.message == "Approved Void"


def test_decline_is_a_result_with_an_id(sb):
    declined = client_for(sb).sale("4.00", TEST_CARD, order_id=order())
    assert declined.status == "DECLINED" and not declined.approved and len(declined.trans_id) == 12


def test_wrong_secret_gets_a_security_error_that_cannot_be_trusted_as_final(sb):
    # With the wrong secret the gateway's stamp cannot verify for us either: the reply is not authenticated,
    # so it never settles a payment (exactly-once v2); the message says what to check.
    order_id = order()
    with pytest.raises(OutcomeUnknown) as raised:
        client_for(sb, secret_key="not-the-secret").sale("3.00", TEST_CARD, order_id=order_id)
    assert "SECURITY ERROR" in str(raised.value) and "BLUEPAY_SECRET_KEY" in str(raised.value)
    assert sb.ledger(order_id=order_id) == []  # and the gateway did not charge it


def test_auth_capture_refund_and_query(sb):
    client = client_for(sb)
    auth_order = order()
    authorized = client.auth("5.00", TEST_CARD, order_id=auth_order)
    assert authorized.approved and authorized.message == "Approved Auth"
    captured = client.capture(authorized.trans_id, "5.00", order_id=order())
    assert captured.approved and captured.message == "Approved Capture"
    found = client.query(order_id=auth_order)
    assert found is not None and found.trans_id == authorized.trans_id and found.trans_type == "AUTH"
    assert client.query(order_id=order()) is None
    found = client.query(trans_id=captured.trans_id)
    assert found is not None and found.trans_type == "CAPTURE"


def test_unknown_trans_id_is_rejected(sb):
    with pytest.raises(Rejected) as raised:
        client_for(sb).void("999999999999", order_id=order())
    assert "COULD NOT LOCATE" in raised.value.response.message.upper()


def test_duplicate_is_outcome_unknown_and_override_goes_through(sb):
    client, key = client_for(sb), order()
    client.sale("7.00", TEST_CARD, order_id=key)
    with pytest.raises(OutcomeUnknown) as raised:
        client.sale("7.00", TEST_CARD, order_id=key)
    assert raised.value.duplicate
    assert client.sale("7.00", TEST_CARD, order_id=key, duplicate_override=True).approved


@pytest.mark.parametrize("fault,committed", [
    ("drop_after_commit", True), ("slow_after_commit", True), ("http_500_after_commit", True),
    ("garbled", True), ("bad_stamp", True), ("http_502", False), ("http_503", False), ("refuse", False),
])
def test_each_fault_is_outcome_unknown_and_stq_tells_whether_it_landed(sb, fault, committed):
    sb.set_faults({"sequence": [fault], "slow_seconds": 3})
    client, key = client_for(sb), order()
    with pytest.raises(OutcomeUnknown):
        client.sale("9.00", TEST_CARD, order_id=key)
    found = client.query(order_id=key)
    assert (found is not None) == committed
    if committed:
        assert found is not None and found.status == "APPROVED" and found.trans_type == "SALE"


def test_sale_is_sent_once_on_outcome_unknown(sb):
    sb.set_faults({"sequence": ["http_502"]})
    before = sb.stats()["requests"].get("bp10emu", 0)
    with pytest.raises(OutcomeUnknown):
        client_for(sb).sale("11.00", TEST_CARD, order_id=order())
    assert sb.stats()["requests"].get("bp10emu", 0) == before + 1


def test_stq_is_retried_through_a_transient_failure(sb):
    sb.set_faults({"sequence": ["http_502"], "endpoints": ["stq"]})
    assert client_for(sb).query(order_id=order()) is None


def test_outage_is_not_sent_after_the_bounded_retries(sb):
    sb.outage(4)
    import time
    time.sleep(0.3)
    with pytest.raises(NotSent) as raised:
        client_for(sb).sale("13.00", TEST_CARD, order_id=order())
    assert raised.value.attempts == 3
