"""Repeat charges without card data (issue 29, docs/tokens.md) end to end: producer -> Redis -> real celery worker ->
sandbox over HTTP -> store. A token charge's broker message carries no card data at all (not even encrypted)."""
from __future__ import annotations

import base64
import json
import uuid

import pytest

from tasks import auth, sale, void
from tests.support.card_scan import scan_text
from tests.support.env import CUSTOMER, TEST_CARD
from worker.services import services

TIMEOUT = 30
PARKED = "parked-tokens"  # a queue no worker consumes: the message stays there to be read


def run(result):
    return result.get(timeout=TIMEOUT)


@pytest.fixture(autouse=True)
def _worker(celery_worker, clean_faults):
    yield


@pytest.fixture(scope="module")
def token():
    stored = run(auth.delay(amount="0.00", card=TEST_CARD, customer=CUSTOMER))
    assert stored["status"] == "APPROVED" and stored["message"] == "INFORMATION STORED"
    return stored


def test_a_stored_card_is_never_an_open_auth(token):
    store = services().store
    assert token["payment_id"] not in {r["payment_id"] for r in store.open_auths(0)}
    assert (store.get(token["payment_id"]) or {})["initiator"] == "customer"  # F/C sent: the first storing


def test_a_token_sale_chain_with_void(sandbox, token):
    result = (sale.s(amount="3.00", token=token["trans_id"]) | void.s()).delay()
    sold, voided = result.parent.get(timeout=TIMEOUT), result.get(timeout=TIMEOUT)
    assert sold["status"] == "APPROVED" and sold["trans_id"] != token["trans_id"]
    assert sold["token"] == token["trans_id"] and sold["masked_account"] == "xxxxxxxxxxxx1111"
    assert voided["status"] == "APPROVED"
    assert (services().store.get(sold["payment_id"]) or {})["status"] == "VOIDED"
    [row] = [e for e in sandbox.ledger(order_id=sold["payment_id"]) if e["trans_type"] == "SALE"]
    assert row["rrno"] == token["trans_id"] and row["stored_indicator"] == "S" and row["voided"]


def test_a_token_sale_under_a_key_charges_once_and_the_key_is_bound_to_its_token(sandbox, token):
    key = f"tok-{uuid.uuid4().hex}"
    first = run(sale.delay(amount="5.00", token=token["trans_id"], idempotency_key=key))
    again = run(sale.delay(amount="5.00", token=token["trans_id"], idempotency_key=key))
    assert first["status"] == "APPROVED" and again["trans_id"] == first["trans_id"]
    assert sandbox.charges(key) == 1
    other = run(sale.delay(amount="5.00", token="100000000001", idempotency_key=key))
    assert other["status"] == "ERROR" and other["error_class"] == "IdempotencyMismatch"
    assert sandbox.charges(key) == 1


def test_an_unknown_token_is_an_error_outcome():
    outcome = run(sale.delay(amount="3.00", token="999999999999"))
    assert outcome["status"] == "ERROR" and outcome["error_class"] == "Rejected"
    assert outcome["message"] in ("Error reading master transaction", "COULD NOT LOCATE ORIGINAL TRANSACTION")
    assert outcome["attempts"] == 1


def test_customer_tokens(sandbox):
    stored = run(auth.delay(amount="0.00", card=TEST_CARD, new_customer_token=True))
    name = stored["customer_token"]
    assert stored["status"] == "APPROVED" and len(name) == 16
    sold = run(sale.delay(amount="7.00", customer_token=name, initiator="customer"))
    assert sold["status"] == "APPROVED" and sold["customer_token"] == name and sold["initiator"] == "customer"
    # the later charge sent the STORED_ID the card was stored with (S/C), found through the customer token
    assert stored["stored_id"]
    [row] = sandbox.ledger(order_id=sold["payment_id"])
    assert (row["stored_indicator"], row["stored_type"], row["stored_id_sent"]) == ("S", "C", stored["stored_id"])
    taken = run(auth.delay(amount="0.00", card=TEST_CARD, new_customer_token=name))
    assert taken["status"] == "ERROR" and "Customer Tokens must be unique" in taken["message"]
    assert taken["attempts"] == 1  # a clear outcome, not a retry


def test_a_token_charge_message_carries_no_card_data(e2e_redis, token):
    e2e_redis.delete(PARKED)
    try:
        (sale.s(amount="3.00", token=token["trans_id"], customer=CUSTOMER) | void.s()).apply_async(queue=PARKED)
        [raw] = e2e_redis.lrange(PARKED, 0, -1)
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        args, kwargs, _embed = body
        assert args == []
        assert kwargs["token"] == token["trans_id"] and kwargs.get("card") is None
        assert "sealed" not in json.dumps(body)  # no card at all, not even encrypted
        assert scan_text(raw, cvv2=TEST_CARD["cvv2"], where="parked token sale") == []
    finally:
        e2e_redis.delete(PARKED)


def test_credit_is_off_by_default(sandbox):
    from tasks import credit

    key = f"credit-{uuid.uuid4().hex}"
    outcome = run(credit.delay(amount="3.00", card=TEST_CARD, idempotency_key=key))
    assert outcome["status"] == "ERROR" and outcome["error_class"] == "CreditDisabled"
    assert sandbox.ledger(order_id=key) == []


def test_an_update_is_reflected_on_the_original_and_the_update_is_what_voids(sandbox, token):
    from tasks import update

    sold = run(sale.delay(amount="3.00", token=token["trans_id"]))
    updated = run(update.delay(sold["trans_id"], amount="5.75"))
    assert updated["status"] == "APPROVED" and updated["operation"] == "update" and updated["amount"] == "5.75"
    original = services().store.get(sold["payment_id"]) or {}
    assert original["status"] == "UPDATED" and original["updated_by"] == updated["payment_id"]
    assert original["updated_amount"] == "5.75"
    voided = run(void.delay(updated["trans_id"]))
    assert voided["status"] == "APPROVED"
    assert (services().store.get(updated["payment_id"]) or {})["status"] == "VOIDED"
    [row] = sandbox.ledger(order_id=updated["payment_id"])
    assert row["trans_type"] == "UPDATE" and row["voided"]
