"""A record decoded once (worker/payments/record.py) and the one money type (worker/gateway/validation.Money)."""
from __future__ import annotations

from decimal import Decimal

import pytest

from worker.gateway import InvalidInput
from worker.gateway.validation import Money, money
from worker.payments.record import PaymentRecord, decode, decode_or_none
from worker.states import Status


def test_a_store_hash_decodes_to_typed_values() -> None:
    stored = {"payment_id": "p-1", "operation": "sale", "status": "UNKNOWN", "amount": "3.00", "attempts": 2,
              "sent_ts": "1700000000.25", "created_ts": "1699999999.5", "next_check_ts": "", "in_flight": "1",
              "not_charged": "0", "needs_human": "1", "reconcile_tries": "3", "lease_owner": "h:1:x",
              "lease_until": "1700000030", "trans_id": "100000000001"}
    record = decode(stored)
    assert record.status is Status.UNKNOWN and not record.final
    assert record.sent_ts == 1700000000.25 and record.created_ts == 1699999999.5
    assert record.next_check_ts is None
    assert record.in_flight and record.needs_human and not record.not_charged
    assert record.reconcile_tries == 3 and record.lease_until == 1700000030.0
    assert record.money == Money(Decimal("3.00")) and record.amount_value == Decimal("3.00")


@pytest.mark.parametrize("garbage", ["", "0", "abc", None, "nan-ish"])
def test_garbage_in_a_time_or_count_field_is_not_set_never_an_exception(garbage: object) -> None:
    record = decode({"payment_id": "p", "operation": "void", "status": "NOT-A-STATUS", "sent_ts": garbage,
                     "reconcile_tries": garbage, "amount": "twelve"})
    assert record.sent_ts is None and record.reconcile_tries == 0
    assert record.status is None and not record.final
    assert record.money is None  # a refused request's amount text is kept as text, not money


def test_the_outcome_is_the_stores_public_output_unchanged() -> None:
    stored = {"payment_id": "p-2", "operation": "auth", "status": "PENDING", "amount": "0.00", "lease_owner": "x",
              "sent_ts": "1", "attempts": 1}
    outcome = decode(stored).outcome()
    assert outcome["status"] == "UNKNOWN"  # in flight is shown UNKNOWN, as task_outcome always did
    assert "lease_owner" not in outcome and "sent_ts" not in outcome
    assert decode_or_none(None) is None and decode_or_none({}) is None
    assert isinstance(decode_or_none(stored), PaymentRecord)


def test_money_is_two_decimal_text_and_never_a_float() -> None:
    assert str(money("3")) == "3.00" and str(money(Decimal("12.5"))) == "12.50"
    assert money("0.00", allow_zero=True).cents == 0 and money("10.01").cents == 1001
    assert money(money("4.20")) == money("4.20")
    with pytest.raises(InvalidInput):
        money(3.0)
    with pytest.raises(InvalidInput):
        money("0.00")
    with pytest.raises(InvalidInput):
        money(money("0.00", allow_zero=True))  # zero is only money where zero is allowed
    with pytest.raises(TypeError):
        Money(1.5)  # type: ignore[arg-type]  # on purpose: a float never becomes Money
