"""BluePayClient with a FakeTransport (canned HttpReply objects or raised errors)."""

from datetime import date

import pytest

from worker.gateway import (
    BluePayClient,
    Card,
    GatewayError,
    InvalidInput,
    NotSent,
    OutcomeUnknown,
    PaymentError,
    Rejected,
    Response,
    RetryPolicy,
)
from worker.gateway.client import gateway_day, gateway_window
from worker.gateway.transport import HttpReply

from . import gateway_replies as R
from .gateway_replies import ACCOUNT, SECRET, TRANS_ID, independent_seal

CARD = {"number": "4111111111111111", "expire": "1299", "cvv2": "123"}
CUSTOMER = {"name1": "Bob", "name2": "Tester", "addr1": "123 Test St.", "addr2": "Apt #500",
            "city": "Testville", "state": "IL", "zipcode": "54321", "country": "USA"}


class FakeTransport:
    """Plays a script: each item is an HttpReply to return or an exception to raise."""

    def __init__(self, *script):
        self.script = list(script)
        self.calls = []

    def post(self, url, data):
        self.calls.append((url, dict(data)))
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, BaseException):
            raise item
        return item


def ok302(pairs):
    return HttpReply(302, R.location(pairs), "")


def make(*script, **kw):
    t = FakeTransport(*script)
    kw.setdefault("sleep", lambda s: None)
    c = BluePayClient(account_id=ACCOUNT, secret_key=SECRET, transport=t, **kw)
    return c, t


def test_the_client_is_what_the_flow_calls_a_gateway() -> None:
    # Checked by mypy (./dev lint): BluePayClient has every verb of worker.payments.flow.Gateway, with compatible
    # signatures.
    from worker.payments.flow import Gateway

    gateway: Gateway = BluePayClient(account_id=ACCOUNT, secret_key=SECRET, transport=FakeTransport())
    assert callable(gateway.sale) and callable(gateway.query_all)


def test_sale_approved_fields_sent():
    c, t = make(ok302(R.approved()))
    r = c.sale("3.00", CARD, customer=CUSTOMER, order_id="order-1")
    assert isinstance(r, Response) and r.approved and r.trans_id == TRANS_ID and r.attempts == 1
    url, data = t.calls[0]
    assert url == "https://secure.bluepay.com/interfaces/bp10emu"
    assert data["TRANSACTION_TYPE"] == "SALE" and data["MODE"] == "TEST" and data["AMOUNT"] == "3.00"
    assert data["NAME1"] == "Bob" and data["ADDR2"] == "Apt #500" and data["ORDER_ID"] == "order-1"
    assert data["TAMPER_PROOF_SEAL"] == independent_seal(SECRET, ACCOUNT + "SALE3.00TEST", "HMAC_SHA512")


def test_sale_accepts_card_object_and_base_url_without_slash():
    c, t = make(HttpReply(200, None, R.body(R.approved())), base_url="http://127.0.0.1:8001/interfaces")
    assert c.sale("3.00", Card("4111111111111111", "1299")).approved
    assert t.calls[0][0] == "http://127.0.0.1:8001/interfaces/bp10emu"


def test_decline_returned_not_raised():
    c, t = make(ok302(R.declined()))
    r = c.sale("4.00", CARD)
    assert r.status == "DECLINED" and not r.approved and len(t.calls) == 1


def test_stamped_error_raises_rejected_once():
    c, t = make(ok302(R.error("SECURITY ERROR")))
    with pytest.raises(Rejected) as ei:
        c.sale("3.00", CARD)
    assert ei.value.response.message == "SECURITY ERROR" and len(t.calls) == 1


@pytest.mark.parametrize("pairs", [R.SECURITY_ERROR, R.MISSING, R.unstamped(R.declined()),
                                   R.unstamped(R.error("Already Voided")),
                                   R.error("SECURITY ERROR", secret="the-real-secret")],
                         ids=["security-error", "missing", "declined", "already-voided", "other-secret"])
def test_reply_without_a_valid_stamp_is_outcome_unknown_and_not_resent(pairs):
    c, t = make(ok302(pairs))
    with pytest.raises(OutcomeUnknown) as ei:
        c.sale("3.00", CARD, order_id="o-1")
    assert not isinstance(ei.value, Rejected) and ei.value.duplicate is False
    assert len(t.calls) == 1  # it may have been processed: never blindly resent


def test_duplicate_raises_outcome_unknown():
    c, t = make(ok302(R.duplicate()))
    with pytest.raises(OutcomeUnknown) as ei:
        c.sale("3.00", CARD, order_id="o-1")
    assert ei.value.duplicate and len(t.calls) == 1


def test_invalid_input_sends_nothing():
    c, t = make(ok302(R.approved()))
    for call in (
        lambda: c.sale(3.0, CARD),
        lambda: c.sale("0.00", CARD),
        lambda: c.sale("3.00", dict(CARD, number="4111111111111112")),
        lambda: c.sale("3.00", CARD, customer={"nick": "x"}),
        lambda: c.void("123"),
        lambda: c.capture(TRANS_ID, amount="-1"),
        lambda: c.query(),
        lambda: c.query(trans_id=TRANS_ID, order_id="x"),
    ):
        with pytest.raises(InvalidInput):
            call()
    assert t.calls == []


def test_auth_zero_allowed():
    c, t = make(ok302(R.approved(MESSAGE="INFORMATION STORED", AMOUNT="0.00")))
    assert c.auth("0.00", CARD).message == "INFORMATION STORED"
    assert t.calls[0][1]["TRANSACTION_TYPE"] == "AUTH" and t.calls[0][1]["AMOUNT"] == "0.00"


def test_capture_refund_void_payloads():
    c, t = make(ok302(R.approved()))
    c.capture(TRANS_ID)
    c.refund(TRANS_ID, amount="1.00", order_id="r-1")
    c.void(TRANS_ID)
    types = [(d["TRANSACTION_TYPE"], d["RRNO"], d["AMOUNT"]) for _, d in t.calls]
    assert types == [("CAPTURE", TRANS_ID, ""), ("REFUND", TRANS_ID, "1.00"), ("VOID", TRANS_ID, "")]
    assert all("CC_NUM" not in d for _, d in t.calls)


def test_not_sent_is_retried_then_succeeds():
    c, t = make(NotSent("refused"), NotSent("refused"), ok302(R.approved()))
    r = c.sale("3.00", CARD)
    assert r.approved and r.attempts == 3 and len(t.calls) == 3
    assert t.calls[0][1] == t.calls[2][1]  # identical payload (same ORDER_ID, same seal)


def test_not_sent_gives_up_after_max_attempts():
    sleeps: list[float] = []
    c, t = make(NotSent("refused"), retry_policy=RetryPolicy(max_attempts=3), sleep=sleeps.append)
    with pytest.raises(NotSent) as ei:
        c.sale("3.00", CARD)
    assert len(t.calls) == 3 and ei.value.attempts == 3 and len(sleeps) == 2


def test_outcome_unknown_on_sale_not_retried():
    c, t = make(OutcomeUnknown("ReadTimeout"), ok302(R.approved()))
    with pytest.raises(OutcomeUnknown):
        c.sale("3.00", CARD)
    assert len(t.calls) == 1


@pytest.mark.parametrize("reply", [HttpReply(502, None, ""), HttpReply(200, None, "<html>"),
                                   ok302({k: v for k, v in R.approved().items() if k != "BP_STAMP"})])
def test_unknown_replies_on_void_not_retried(reply):
    c, t = make(reply)
    with pytest.raises(OutcomeUnknown):
        c.void(TRANS_ID)
    assert len(t.calls) == 1


def test_query_read_timeout_is_retried():
    c, t = make(OutcomeUnknown("ReadTimeout"), HttpReply(502, None, ""), HttpReply(200, None, R.body(R.stq_stamped())))
    r = c.query(order_id="order-1")
    assert r.trans_id == TRANS_ID and r.attempts == 3 and len(t.calls) == 3


def test_query_unstamped_row_is_found():
    """BluePay's stq rows carry no stamp (issue 23): the row is the answer."""
    c, t = make(HttpReply(200, None, R.body(R.stq_row())))
    r = c.query(order_id="order-1")
    assert r.trans_id == TRANS_ID and r.approved and len(t.calls) == 1


def test_query_row_with_a_failing_stamp_is_outcome_unknown():
    c, t = make(HttpReply(200, None, R.body(R.stq_stamped(secret="someone-else"))),
                retry_policy=RetryPolicy(max_attempts=2))
    with pytest.raises(OutcomeUnknown) as ei:
        c.query(order_id="order-1")
    assert not isinstance(ei.value, Rejected) and len(t.calls) == 2  # read-only: retried, then "cannot tell"


def test_query_rows_of_another_order_prove_nothing():
    c, _ = make(HttpReply(200, None, R.body(R.stq_row(order_id="order-2"))),
                retry_policy=RetryPolicy(max_attempts=1))
    with pytest.raises(OutcomeUnknown):
        c.query(order_id="order-1")


def test_query_several_rows_adopts_the_one_approval():
    rows = "\n".join([R.body(R.stq_row(id="100000000001", status="0", issue_date="2025-11-27 10:00:00")),
                      R.body(R.stq_row(id="100000000002", status="1", issue_date="2025-11-27 09:00:00")),
                      R.body(R.stq_row(id="100000000003", status="1", order_id="order-2"))])
    c, _ = make(HttpReply(200, None, rows))
    r = c.query(order_id="order-1")
    assert r.trans_id == "100000000002" and r.approved


def test_query_rejected_not_retried():
    c, t = make(HttpReply(400, None, "STATUS=E&MESSAGE=SECURITY+ERROR"))
    with pytest.raises(Rejected):
        c.query(trans_id=TRANS_ID)
    assert len(t.calls) == 1


def test_query_absent_and_request_window():
    c, t = make(HttpReply(200, None, ""), mode="live", today=lambda: date(2025, 3, 1))
    assert c.query(order_id="order-9", days_back=10) is None
    url, data = t.calls[0]
    assert url == "https://secure.bluepay.com/interfaces/stq"
    assert data["MODE"] == "LIVE" and data["order_id"] == "order-9" and "id" not in data
    assert data["REPORT_START_DATE"] == "2025-02-19" and data["REPORT_END_DATE"] == "2025-03-03"
    assert data["TAMPER_PROOF_SEAL"] == independent_seal(SECRET, ACCOUNT + "2025-02-192025-03-03", "HMAC_SHA512")


def test_query_window_comes_from_the_times_given_in_the_gateways_day_not_the_local_calendar():
    """``between``: the record's Redis times. The local calendar (three days behind here) plays no part: the window is
    the gateway's (US Central) day before the first time to the day after the last, end exclusive."""
    c, t = make(HttpReply(200, None, ""), today=lambda: date(2025, 2, 26))
    created = 1740960000.0  # 2025-03-03 00:00 UTC = 2025-03-02 18:00 US Central
    assert c.query_all(order_id="order-9", between=(created, created + 600)) == []
    data = t.calls[0][1]
    assert data["REPORT_START_DATE"] == "2025-03-01" and data["REPORT_END_DATE"] == "2025-03-04"
    assert data["TAMPER_PROOF_SEAL"] == independent_seal(SECRET, ACCOUNT + "2025-03-012025-03-04", "HMAC_SHA512")
    assert gateway_day(created) == date(2025, 3, 2)
    assert gateway_window(created, created + 86400 * 2) == (date(2025, 3, 1), date(2025, 3, 6))


def test_query_all_returns_every_row_stq_gives():
    """BluePay does not say how several matches come back: a row per line, or a field name coming again."""
    first = R.stq_stamped(order_id="order-1", status="0", message="Declined Sale")
    second = R.stq_stamped(order_id="order-1", id="100229460098")
    for text in (R.body(first) + "\n" + R.body(second), R.body(first) + "&" + R.body(second)):
        c, _ = make(HttpReply(200, None, text))
        rows = c.query_all(order_id="order-1")
        assert [(r.trans_id, r.status) for r in rows] == [(TRANS_ID, "DECLINED"), ("100229460098", "APPROVED")]
        c, _ = make(HttpReply(200, None, text))
        assert c.query(order_id="order-1").trans_id == "100229460098"  # query: the one approval among them


def test_query_unknown_after_give_up():
    c, t = make(HttpReply(200, None, "garbage"), retry_policy=RetryPolicy(max_attempts=2))
    with pytest.raises(OutcomeUnknown):
        c.query(trans_id=TRANS_ID)
    assert len(t.calls) == 2


def test_constructor_validation_and_repr():
    with pytest.raises(InvalidInput):
        BluePayClient(account_id=ACCOUNT, secret_key=SECRET, mode="PROD", transport=FakeTransport())
    with pytest.raises(InvalidInput):
        BluePayClient(account_id=ACCOUNT, secret_key="", transport=FakeTransport())
    c, _ = make(ok302(R.approved()))
    assert SECRET not in repr(c)


def test_exceptions_hierarchy():
    assert issubclass(InvalidInput, PaymentError) and issubclass(GatewayError, PaymentError)
    for cls in (NotSent, OutcomeUnknown, Rejected):
        assert issubclass(cls, GatewayError)
    assert OutcomeUnknown("x").duplicate is False


def test_no_card_data_in_errors_or_logs(caplog):
    c, t = make(ok302(R.error("SECURITY ERROR")))
    with caplog.at_level("DEBUG"):
        with pytest.raises(Rejected) as ei:
            c.sale("3.00", CARD)
        with pytest.raises(InvalidInput) as e2:
            c.sale("3.00", dict(CARD, expire="0120"))
    for text in (str(ei.value), repr(ei.value), str(e2.value), caplog.text):
        assert "4111111111111111" not in text and SECRET not in text
        assert t.calls[0][1]["TAMPER_PROOF_SEAL"] not in text
