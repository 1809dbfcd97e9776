"""The client's fence before every money-moving attempt, and TRANS_SUBMIT_TIMESTAMP / TRANS_EXPIRE_PERIOD
(bp10emu text, TRANSACTION TIMESTAMP). A FakeTransport plays replies; the fence is a plain function."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest

from worker.gateway import BluePayClient, Expired, FenceLost, NotSent, Rejected, RetryPolicy, expiry
from worker.gateway.transport import HttpReply

from . import gateway_replies as R
from .gateway_replies import ACCOUNT, SECRET, independent_seal
from .test_gateway_client import CARD, FakeTransport, ok302

# 2026-07-01 17:00:00 UTC = 12:00:00 CDT (UTC-5)
SUMMER = datetime(2026, 7, 1, 17, 0, 0, tzinfo=UTC).timestamp()


class Fence:
    """Answers the Redis times it is given, one per attempt; FenceLost once they run out (the lease is gone)."""

    def __init__(self, *times: float, minutes: int = 3):
        self.times = list(times)
        self.minutes = minutes
        self.calls = 0

    def __call__(self) -> tuple[float, int]:
        self.calls += 1
        if not self.times:
            raise FenceLost("lease lost before the attempt")
        return self.times.pop(0), self.minutes


def client(*script, attempts=4):
    transport = FakeTransport(*script)
    return BluePayClient(account_id=ACCOUNT, secret_key=SECRET, transport=transport, sleep=lambda s: None,
                         retry_policy=RetryPolicy(max_attempts=attempts, max_seconds=60.0)), transport


def test_a_lost_lease_stops_the_retry_loop_before_its_next_attempt():
    refused = NotSent("connection refused")
    c, t = client(refused, refused, ok302(R.approved()))
    fence = Fence(SUMMER)  # the first attempt's check passes; before the retry the lease is gone
    with pytest.raises(FenceLost):
        c.sale("3.00", CARD, order_id="o-1", fence=fence)
    assert len(t.calls) == 1  # the retry was never sent
    assert fence.calls == 2


def test_every_attempt_is_checked_and_stamped_with_the_time_of_its_own_check():
    refused = NotSent("connection refused")
    c, t = client(refused, ok302(R.approved()))
    r = c.sale("3.00", CARD, order_id="o-1", fence=Fence(SUMMER, SUMMER + 75.9))
    assert r.approved and r.attempts == 2
    stamps = [data["TRANS_SUBMIT_TIMESTAMP"] for _, data in t.calls]
    assert stamps == ["2026-07-01 12:00:00", "2026-07-01 12:01:15"]  # US Central (CDT), seconds truncated
    assert {data["TRANS_EXPIRE_PERIOD"] for _, data in t.calls} == {"3 MINUTES"}
    # outside the seal: the seal is the documented bp10emu one, whatever the stamp
    assert t.calls[1][1]["TAMPER_PROOF_SEAL"] == independent_seal(SECRET, ACCOUNT + "SALE3.00TEST", "HMAC_SHA512")


def test_no_fence_no_stamp():
    c, t = client(ok302(R.approved()))
    c.sale("3.00", CARD, order_id="o-1")
    assert "TRANS_SUBMIT_TIMESTAMP" not in t.calls[0][1] and "TRANS_EXPIRE_PERIOD" not in t.calls[0][1]


@pytest.mark.parametrize("message", ["TRANSACTION TOO OLD", "TRANSACTION IS TOO OLD"])  # bp10emu text; MESSAGE list
def test_a_too_old_reply_is_not_sent_and_retried_freshly_stamped_after_the_fence(message):
    c, t = client(ok302(R.error(message)), ok302(R.approved()))
    r = c.void("100000000101", order_id="o-1:void", fence=Fence(SUMMER, SUMMER + 5))
    assert r.approved and len(t.calls) == 2
    assert t.calls[0][1]["TRANS_SUBMIT_TIMESTAMP"] != t.calls[1][1]["TRANS_SUBMIT_TIMESTAMP"]


def test_too_old_every_time_ends_as_expired_a_not_sent_error():
    c, t = client(ok302(R.error("TRANSACTION TOO OLD")), attempts=2)
    with pytest.raises(Expired) as caught:
        c.sale("3.00", CARD, order_id="o-1", fence=Fence(SUMMER, SUMMER + 1))
    assert isinstance(caught.value, NotSent) and len(t.calls) == 2


def test_too_old_without_a_verified_stamp_is_not_trusted():
    c, _ = client(HttpReply(302, R.location({"Result": "ERROR", "MESSAGE": "TRANSACTION TOO OLD"}), ""))
    with pytest.raises(Exception) as caught:
        c.sale("3.00", CARD, order_id="o-1", fence=Fence(SUMMER))
    assert not isinstance(caught.value, NotSent)  # OutcomeUnknown: reconcile, never "not sent"


def test_other_errors_stay_rejected_with_a_fence():
    c, _ = client(ok302(R.error("CARD ACCOUNT NOT VALID")))
    with pytest.raises(Rejected):
        c.sale("3.00", CARD, order_id="o-1", fence=Fence(SUMMER))


def test_stamp_is_central_time_in_winter_too():
    winter = datetime(2026, 1, 15, 18, 30, 5, tzinfo=UTC).timestamp()  # CST, UTC-6
    assert expiry.submit_stamp(winter) == "2026-01-15 12:30:05"


def test_accepted_until_adds_period_a_minute_and_the_margin():
    assert expiry.accepted_until(SUMMER, 3, 60.0) == SUMMER + 180 + 60 + 60


def test_accepted_until_takes_the_later_reading_of_the_repeated_hour():
    # 2026-11-01 01:30 CDT (06:30 UTC) is printed "01:30:00", which also names 01:30 CST (07:30 UTC)
    first = datetime(2026, 11, 1, 6, 30, 0, tzinfo=UTC).timestamp()
    assert expiry.submit_stamp(first) == "2026-11-01 01:30:00"
    assert expiry.accepted_until(first, 3, 0.0) == first + 3600 + 180 + 60


def test_expire_minutes_is_validated():
    c, t = client(ok302(R.approved()))
    with pytest.raises(ValueError):
        c.sale("3.00", CARD, order_id="o-1", fence=Fence(SUMMER, minutes=0))
    assert t.calls == []


def test_the_stamp_and_the_acceptance_are_the_whole_second_s_when_asked_again_within_it():
    # both are cached per whole second (worker/gateway/expiry.py): the cached answer is the computed one
    for epoch in (SUMMER, SUMMER + 0.25, SUMMER + 0.999, SUMMER + 1.0):
        first = (expiry.submit_stamp(epoch), expiry.accepted_until(epoch, 3, 60.0))
        again = (expiry.submit_stamp(epoch), expiry.accepted_until(epoch, 3, 60.0))
        assert first == again
        assert expiry.accepted_until(epoch, 3, 60.0) == int(epoch) + 180 + 60 + 60
