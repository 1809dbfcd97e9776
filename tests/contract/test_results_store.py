"""The results store's contract, run against both implementations (``tier``: see conftest.py): the Redis store
with its Lua scripts, and the in-memory fake the unit tests use. A rule that holds for one and not the other
fails here.

Time: the Redis store reads Redis ``TIME``, the fake its injected clock; ``tier.wait(seconds)`` makes time pass
(a sleep, or the fake clock moved), and ages are selected with thresholds around zero. What only the Lua can
show (one EVALSHA per call, timestamps from ``TIME``) is in tests/integration/test_store.py.
"""

import json
import threading
from datetime import UTC, datetime

import pytest

from worker.store import CONTRACT_FIELDS, Claim, public_outcome, task_outcome

SALE_FIELDS = {"amount": "3.00", "order_id": "o-1", "masked_account": "xxxxxxxxxxxx1111"}
FP_A, FP_B, FP_OLD = "a" * 64, "b" * 64, "c" * 64


def claim(store, pid, op="sale", owner="w1", lease=30, **kw):
    kw.setdefault("fields", SALE_FIELDS)
    return store.claim(pid, op, owner=owner, lease_seconds=lease, **kw)


def approve(store, pid, trans_id, owner="w1", **fields):
    return store.transition(pid, "APPROVED", fields={"trans_id": trans_id, "message": "Approved", **fields},
                            expect={"PENDING"}, owner=owner, note="gateway approved")


def statuses(store, pid):
    return [h["status"] for h in store.history(pid)]


# ---- claim ---------------------------------------------------------------------------------

def test_claim_new_record(store, tier):
    before = tier.server_now()
    c = claim(store, "p1")
    after = tier.server_now()
    assert isinstance(c, Claim) and c.kind == "claimed" and c.previous_status is None
    assert before - 0.001 <= c.now <= after + 0.001  # Claim.now is Redis server time
    rec = c.record
    assert rec["status"] == "PENDING" and rec["attempts"] == 1
    assert rec["payment_id"] == "p1" and rec["operation"] == "sale" and rec["amount"] == "3.00"
    assert rec["lease_owner"] == "w1" and float(rec["lease_until"]) == pytest.approx(c.now + 30, abs=0.002)
    assert float(rec["created_ts"]) == float(rec["updated_ts"]) == pytest.approx(c.now, abs=0.001)
    assert rec["created_at"].endswith("Z") and len(rec["created_at"]) == len("2025-06-15T15:06:40.000Z")
    assert rec["fingerprint"] == ""
    for f in ("sends", "in_flight", "sent_ts", "attempt_ts"):
        assert not rec.get(f)  # journal=False: no attempt noted
    for f in CONTRACT_FIELDS:
        assert f in rec
    assert all(isinstance(v, str) for k, v in rec.items() if k != "attempts")
    got = store.get("p1")
    assert got["history"] == [{"at": rec["created_at"], "status": "PENDING", "note": "claimed by w1"}]


def test_iso_times_are_the_epoch_times_in_utc_with_milliseconds_cut(store, tier):
    tier.wait(0.0006)  # a time that is not a whole millisecond, so rounding and cutting differ
    rec = claim(store, "p1").record
    at = datetime.strptime(rec["created_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    assert rec["created_at"] == rec["updated_at"]
    assert -0.0001 <= float(rec["created_ts"]) - at <= 0.0011  # "%.3f" rounds, the ISO text cuts


@pytest.mark.parametrize("journal,expect_fields,note", [
    (False, {"sends": None, "in_flight": None, "sent_ts": None}, "claimed by w1"),
    (True, {"sends": "1", "in_flight": "1", "sent_ts": None}, "claimed by w1; attempt 1"),
    ("prior", {"sends": None, "in_flight": None, "sent_ts": "now"},
     "claimed by w1; delivered before: an earlier delivery may have sent it"),
], ids=["no-journal", "journal-attempt-1", "delivered-before"])
def test_claim_journal_modes(store, journal, expect_fields, note):
    c = claim(store, "p1", journal=journal)
    rec = c.record
    for name, value in expect_fields.items():
        if value is None:
            assert not rec.get(name), name
        elif value == "now":
            assert float(rec[name]) == pytest.approx(c.now, abs=0.001)
        else:
            assert rec[name] == value
    if journal is True:
        assert float(rec["attempt_ts"]) == pytest.approx(c.now, abs=0.001)
    assert store.history("p1")[0]["note"] == note


def test_claim_final_returns_record_unchanged(store):
    claim(store, "p1")
    approve(store, "p1", "100000000001")
    before = store.get("p1")
    c = claim(store, "p1", owner="w2")
    assert c.kind == "final" and c.previous_status == "APPROVED"
    assert c.record["status"] == "APPROVED" and c.record["attempts"] == 1
    assert store.get("p1") == before


def test_claim_busy_then_resumed_after_lease_expiry(store, tier):
    first = claim(store, "p1", lease=0.6)
    c = claim(store, "p1", owner="w2")
    assert c.kind == "busy" and c.previous_status == "PENDING"
    assert store.get("p1")["lease_owner"] == "w1" and store.get("p1")["attempts"] == 1
    tier.wait(0.7)
    c = claim(store, "p1", owner="w2")
    assert c.kind == "resumed" and c.previous_status == "PENDING" and c.now > first.now + 0.6
    assert c.record["attempts"] == 2 and c.record["lease_owner"] == "w2"
    assert float(c.record["lease_until"]) == pytest.approx(c.now + 30, abs=0.002)


def test_claim_same_owner_resumes(store):
    claim(store, "p1")
    c = claim(store, "p1")
    assert c.kind == "resumed" and c.previous_status == "PENDING" and c.record["attempts"] == 2


@pytest.mark.parametrize("status", ["RETRYING", "UNKNOWN"])
def test_claim_resumes_retrying_and_unknown_at_once(store, status):
    claim(store, "p1", lease=60)
    assert store.transition("p1", status, owner="w1", note="x", sent=False)["status"] == status
    assert store.get("p1")["lease_until"] == "0"  # parked: free for the next delivery or the sweep
    c = claim(store, "p1", owner="w2")
    assert c.kind == "resumed" and c.previous_status == status
    assert c.record["status"] == "PENDING" and c.record["lease_owner"] == "w2" and c.record["attempts"] == 2
    assert statuses(store, "p1") == ["PENDING", status, "PENDING"]


def test_claim_rejects_bad_input(store):
    with pytest.raises(ValueError):
        store.claim("p1", "refundz", fields={}, owner="w1", lease_seconds=1)
    with pytest.raises(ValueError):
        store.claim("", "sale", fields={}, owner="w1", lease_seconds=1)
    with pytest.raises(ValueError):
        store.claim("p1", "sale", fields={}, owner="", lease_seconds=1)
    with pytest.raises(ValueError):
        store.claim("p1", "sale", fields={}, owner="w1", lease_seconds=1, mode="steal")
    assert store.get("p1") is None


# ---- claim modes: run, create_only, reconcile ------------------------------------------------

@pytest.mark.parametrize("existing,mode,kind", [
    (None, "run", "claimed"),
    (None, "create_only", "claimed"),
    (None, "reconcile", "missing"),
    ("PENDING-live", "run", "busy"),
    ("PENDING-live", "create_only", "exists"),
    ("PENDING-live", "reconcile", "busy"),
    ("UNKNOWN", "run", "resumed"),
    ("UNKNOWN", "create_only", "exists"),
    ("UNKNOWN", "reconcile", "resumed"),
    ("APPROVED", "run", "final"),
    ("APPROVED", "create_only", "exists"),
    ("APPROVED", "reconcile", "final"),
])
def test_claim_modes(store, existing, mode, kind):
    if existing:
        claim(store, "p1", owner="first", lease=60)
        if existing == "UNKNOWN":
            store.transition("p1", "UNKNOWN", owner="first", sent=None)
        elif existing == "APPROVED":
            approve(store, "p1", "100000000001", owner="first")
    before = store.get("p1")
    c = claim(store, "p1", owner="w2", mode=mode)
    assert c.kind == kind
    if kind == "missing":
        assert store.get("p1") is None and c.record == {}  # the sweep never creates a record
    elif kind in ("busy", "exists", "final"):
        assert store.get("p1") == before  # untouched
        assert c.record["status"] == existing.split("-")[0]
    elif kind == "resumed":
        assert c.record["lease_owner"] == "w2" and c.previous_status == "UNKNOWN"
    else:
        assert c.record["lease_owner"] == "w2" and c.record["status"] == "PENDING"


# ---- keys bound to their request (fingerprints) ----------------------------------------------

@pytest.mark.parametrize("stored,op,given,kind", [
    ([FP_A], "sale", [FP_A], "final"),
    ([FP_A], "sale", [FP_B], "mismatch"),
    ([FP_A], "sale", [FP_B, FP_A], "final"),  # key rotation: a record stored under the old key still matches
    ([FP_OLD], "sale", [FP_A, FP_OLD], "final"),
    ([FP_A, FP_OLD], "sale", [FP_OLD], "mismatch"),  # only the first fingerprint given is stored
    ([FP_A], "sale", [], "final"),  # no fingerprint given: not checked
    ([], "sale", [FP_B], "final"),  # none stored (a refusal's record): not checked
    ([FP_A], "auth", [FP_A], "mismatch"),  # another operation under the same key
    ([], "refund", [], "mismatch"),
], ids=["same", "other-request", "rotation-new-first", "rotation-old-stored", "first-is-stored",
        "none-given", "none-stored", "other-operation", "other-operation-no-fps"])
def test_claim_binds_the_key_to_its_request(store, stored, op, given, kind):
    claim(store, "k1", fingerprints=stored)
    approve(store, "k1", "100000000001")
    before = store.get("k1")
    assert before["fingerprint"] == (stored[0] if stored else "")
    c = claim(store, "k1", op=op, owner="w2", fingerprints=given)
    assert c.kind == kind
    assert store.get("k1") == before  # neither outcome touches the record
    assert c.record["status"] == "APPROVED" and c.record["operation"] == "sale"


@pytest.mark.parametrize("state", ["PENDING-expired", "RETRYING", "UNKNOWN"])
def test_mismatch_never_resumes_a_non_final_record_for_another_request(store, tier, state):
    claim(store, "k1", fingerprints=[FP_A], lease=0.1 if state == "PENDING-expired" else 60, journal=True)
    if state != "PENDING-expired":
        store.transition("k1", state, owner="w1", sent=False)
    tier.wait(0.2)
    before = store.get("k1")
    c = claim(store, "k1", owner="w2", fingerprints=[FP_B])
    assert c.kind == "mismatch" and c.previous_status == before["status"]
    assert store.get("k1") == before and before["lease_owner"] == "w1"


def test_mismatch_in_create_only_mode_and_not_checked_by_the_sweep(store):
    claim(store, "k1", fingerprints=[FP_A], lease=60)
    store.transition("k1", "UNKNOWN", owner="w1", sent=None)
    assert claim(store, "k1", op="void", owner="w2", mode="create_only").kind == "mismatch"
    # the sweep (reconcile) works on the record whatever request it carries
    assert claim(store, "k1", owner="sweep", mode="reconcile", fingerprints=[FP_B]).kind == "resumed"


# ---- retry_failed: an ERROR that provably charged nothing runs again under its key ---------------

def refused(store, pid, *, fields=None):
    """What PaymentFlow.refuse writes: a create_only record, then ERROR (InvalidInput), never sent."""
    claim(store, pid, owner="refuser", mode="create_only", fields={**(fields or SALE_FIELDS),
                                                                   "error_class": "InvalidInput"})
    store.transition(pid, "ERROR", fields={"message": "invalid input: card: sealed card data cannot be opened"},
                     owner="refuser", sent=False)


def closed_not_charged(store, pid, fingerprints=(FP_A,)):
    claim(store, pid, owner="w1", fingerprints=list(fingerprints), journal=True)
    store.transition(pid, "RETRYING", owner="w1", sent=False)
    c = claim(store, pid, owner="sweep", mode="reconcile")
    assert c.kind == "resumed"
    store.transition(pid, "ERROR", owner="sweep", sent=False, fields={"message": "gave up", "not_charged": "1"})


def test_retry_failed_reopens_a_refusal_with_this_requests_fields_and_binds_its_fingerprint(store):
    refused(store, "k1", fields={"amount": "3,00", "order_id": "k1"})
    assert claim(store, "k1", owner="w2", fingerprints=[FP_A]).kind == "final"  # run: the stored ERROR
    c = claim(store, "k1", owner="w2", mode="retry_failed", fingerprints=[FP_A])
    assert c.kind == "resumed" and c.previous_status == "ERROR"
    record = store.get("k1")
    assert record["status"] == "PENDING" and record["lease_owner"] == "w2" and record["fingerprint"] == FP_A
    assert record["amount"] == "3.00" and record["message"] == "" and "error_class" not in record
    assert int(record["attempts"]) == 2 and statuses(store, "k1") == ["PENDING", "ERROR", "PENDING"]
    assert "retry_failed" in store.history("k1")[-1]["note"]
    # bound now: another request under the key is a mismatch, even with retry_failed
    store.transition("k1", "ERROR", owner="w2", sent=False, fields={"not_charged": "1"})
    assert claim(store, "k1", owner="w3", mode="retry_failed", fingerprints=[FP_B]).kind == "mismatch"


def test_retry_failed_reopens_an_error_closed_as_not_charged_for_the_same_request_only(store):
    closed_not_charged(store, "k1")
    before = store.get("k1")
    assert claim(store, "k1", owner="w2", mode="retry_failed", fingerprints=[FP_B]).kind == "mismatch"
    assert store.get("k1") == before
    c = claim(store, "k1", owner="w2", mode="retry_failed", fingerprints=[FP_A])
    assert c.kind == "resumed" and "not_charged" not in store.get("k1")
    assert store.get("k1")["sent_ts"] == before["sent_ts"]  # kept: stq is asked again before any send


@pytest.mark.parametrize("outcome", ["APPROVED", "DECLINED", "ERROR-rejected", "ERROR-invalid-after-send",
                                     "ERROR-with-trans-id", "VOIDED"])
def test_retry_failed_never_reopens_what_may_have_charged_or_was_answered(store, outcome):
    status = outcome.split("-")[0]
    journal = outcome == "ERROR-invalid-after-send"
    claim(store, "k1", fingerprints=[FP_A], journal=journal)
    fields = {"message": "x", "trans_id": "100000000001" if outcome != "ERROR-invalid-after-send" else ""}
    if outcome == "ERROR-rejected":
        fields.update(error_class="Rejected", trans_id="")
    elif outcome == "ERROR-invalid-after-send":
        fields.update(error_class="InvalidInput")
    store.transition("k1", status, fields=fields, owner="w1", sent=True)
    before = store.get("k1")
    c = claim(store, "k1", owner="w2", mode="retry_failed", fingerprints=[FP_A])
    assert c.kind == "final" and store.get("k1") == before


# ---- takeover of an attempt in flight --------------------------------------------------------

def test_takeover_of_an_expired_in_flight_attempt_counts_it_sent_until_its_lease_ended(store, tier):
    first = claim(store, "p1", journal=True, lease=0.2)
    lease_until = float(first.record["lease_until"])
    tier.wait(0.5)
    c = claim(store, "p1", owner="w2")
    assert c.kind == "resumed" and c.previous_status == "PENDING"
    assert c.now > lease_until + 0.2
    assert c.record["in_flight"] == "0"
    assert float(c.record["sent_ts"]) == pytest.approx(lease_until, abs=0.001)  # min(lease_until, now)
    assert "its attempt may have been sent" in store.history("p1")[-1]["note"]


def test_takeover_of_a_dead_owners_live_lease_counts_its_attempt_sent_until_now(store):
    claim(store, "p1", owner="dead:1:x", journal=True, lease=60)
    assert claim(store, "p1", owner="w2", dead_owner="someone-else").kind == "busy"
    c = claim(store, "p1", owner="w2", dead_owner="dead:1:x")
    assert c.kind == "resumed" and c.record["lease_owner"] == "w2"
    assert float(c.record["sent_ts"]) == pytest.approx(c.now, abs=0.001)  # min(lease_until, now) = now
    assert c.record["in_flight"] == "0"


def test_takeover_keeps_a_later_sent_ts_and_ignores_an_attempt_not_in_flight(store, tier):
    # not in flight (the last attempt ended provably unsent): taking over adds no sent_ts
    claim(store, "p1", lease=0.1)
    tier.wait(0.2)
    c = claim(store, "p1", owner="w2")
    assert c.kind == "resumed" and not c.record.get("sent_ts")
    # in flight, with a sent_ts already later than the lease end (max of the two)
    claim(store, "p2", journal="prior", lease=0.1)
    tier.wait(0.2)
    tier.write_raw("p2", in_flight="1", sent_ts="9999999999.000")
    c = claim(store, "p2", owner="w2")
    assert c.record["sent_ts"] == "9999999999.000"


# ---- journal ---------------------------------------------------------------------------------

def test_journal_notes_each_send_in_server_time_and_renews_the_lease(store, tier):
    claim(store, "p1", journal=True, lease=30)
    store.transition("p1", "PENDING", owner="w1", expect="PENDING", sent=False)  # attempt 1: DUPLICATE
    before = tier.server_now()
    at = store.journal("p1", "w1", 45)
    after = tier.server_now()
    assert at is not None and before - 0.001 <= at <= after + 0.001
    rec = store.get("p1")
    assert rec["sends"] == "2" and rec["in_flight"] == "1" and float(rec["attempt_ts"]) == pytest.approx(at)
    assert float(rec["lease_until"]) == pytest.approx(at + 45, abs=0.002)
    assert rec["history"][-1]["note"] == "attempt 2" and rec["history"][-1]["status"] == "PENDING"


@pytest.mark.parametrize("state", ["other-owner", "UNKNOWN", "RETRYING", "APPROVED", "missing"])
def test_journal_refused_unless_the_owner_holds_a_pending_record(store, state):
    if state != "missing":
        claim(store, "p1", lease=60)
        if state in ("UNKNOWN", "RETRYING"):
            store.transition("p1", state, owner="w1", sent=False)
        elif state == "APPROVED":
            approve(store, "p1", "100000000001")
    before = store.get("p1")
    owner = "w2" if state == "other-owner" else "w1"
    assert store.journal("p1", owner, 30) is None
    assert store.get("p1") == before


# ---- fence: the check before every money-moving attempt (issue 24, item 1) ------------------

def test_fence_answers_server_time_renews_the_lease_and_keeps_how_long_the_attempt_may_be_accepted(store, tier):
    claim(store, "p1", journal=True, lease=30)
    before = tier.server_now()
    at = store.fence("p1", "w1", 45, 300)
    after = tier.server_now()
    assert at is not None and before - 0.001 <= at <= after + 0.001
    rec = store.get("p1")
    assert rec["in_flight"] == "1" and float(rec["lease_until"]) == pytest.approx(at + 45, abs=0.002)
    assert float(rec["fence_until"]) == pytest.approx(at + 300, abs=0.002)
    assert store.fence("p1", "w1", 45, 10) is not None  # a shorter window never moves it back
    assert float(store.get("p1")["fence_until"]) == pytest.approx(at + 300, abs=0.01)


@pytest.mark.parametrize("state", ["other-owner", "lapsed", "UNKNOWN", "APPROVED", "missing"])
def test_fence_refused_unless_the_owner_holds_a_live_lease_on_a_pending_record(store, tier, state):
    if state != "missing":
        claim(store, "p1", journal=True, lease=0.3 if state == "lapsed" else 60)
        if state == "UNKNOWN":
            store.transition("p1", state, owner="w1", sent=True)
        elif state == "APPROVED":
            approve(store, "p1", "100000000001")
        elif state == "lapsed":
            tier.wait(0.5)  # nobody took it over yet, but the lease is gone: no new attempt
    before = store.get("p1")
    owner = "w2" if state == "other-owner" else "w1"
    assert store.fence("p1", owner, 30, 300) is None
    assert store.get("p1") == before


def test_a_takeover_of_a_fenced_attempt_counts_it_as_sent_until_it_can_no_longer_be_accepted(store, tier):
    claim(store, "p1", journal=True, lease=0.3)
    at = store.fence("p1", "w1", 0.3, 300)
    assert at is not None
    tier.wait(0.5)  # the holder stalled: its lease lapsed with its attempt unreported
    taken = claim(store, "p1", owner="w2")
    assert taken.kind == "resumed"
    assert float(taken.record["sent_ts"]) == pytest.approx(at + 300, abs=0.01)


def test_a_takeover_from_a_dead_holder_does_not_wait_for_its_fence(store, tier):
    claim(store, "p1", journal=True, lease=60)
    assert store.fence("p1", "w1", 60, 300) is not None
    taken = claim(store, "p1", owner="w2", dead_owner="w1")  # its process is gone: it sends nothing later
    assert taken.kind == "resumed" and float(taken.record["sent_ts"]) <= tier.server_now() + 0.001


# ---- transition: only the lease holder writes a non-final record -----------------------------

@pytest.mark.parametrize("owner,expect,ok", [
    ("w1", None, True),
    ("w1", ["PENDING"], True),
    ("w2", None, False),
    ("w2", ["PENDING"], False),
    (None, None, False),
    (None, ["PENDING"], False),
    ("", ["PENDING"], False),
    ("w1", ["RETRYING"], False),
    ("w1", [], False),
], ids=["holder", "holder-expect", "other", "other-expect", "no-owner", "no-owner-expect", "blank-owner",
        "holder-wrong-expect", "empty-expect"])
def test_transition_of_a_pending_record_needs_its_owner(store, owner, expect, ok):
    claim(store, "p1")
    before = store.get("p1")
    rec = store.transition("p1", "DECLINED", owner=owner, expect=expect, fields={"message": "x"})
    if ok:
        assert rec["status"] == "DECLINED"
    else:
        assert rec is None and store.get("p1") == before


@pytest.mark.parametrize("parked", ["RETRYING", "UNKNOWN"])
def test_a_parked_record_is_written_only_by_whoever_claims_it_next(store, parked):
    claim(store, "p1", lease=60)
    store.transition("p1", parked, owner="w1", sent=False)
    assert store.transition("p1", "APPROVED", owner="w2", fields={"trans_id": "100000000001"}) is None
    assert store.transition("p1", "APPROVED", fields={"trans_id": "100000000001"}) is None
    assert store.get("p1")["status"] == parked
    claim(store, "p1", owner="w2")
    assert store.transition("p1", "APPROVED", owner="w1") is None  # the old holder lost it
    assert store.transition("p1", "APPROVED", owner="w2", expect="PENDING")["status"] == "APPROVED"


def test_transition_expect_on_final_records_and_missing(store):
    claim(store, "p1")
    assert store.transition("missing", "APPROVED", owner="w1") is None
    rec = store.transition("p1", "APPROVED", expect=["PENDING", "UNKNOWN"], owner="w1",
                           fields={"trans_id": "100000000001", "avs": "_", "extra": 5}, note="ok")
    assert rec["status"] == "APPROVED" and rec["trans_id"] == "100000000001" and rec["extra"] == "5"
    for gone in ("lease_owner", "lease_until", "in_flight", "next_check_ts"):
        assert gone not in rec  # final clears the lease
    # later operation states of a final record need the expected status (no owner: nobody holds it)
    assert store.transition("p1", "VOIDED", expect={"PENDING"}) is None
    assert store.transition("p1", "VOIDED", expect={"APPROVED"}, fields={"voided_by": "v1"})["status"] == "VOIDED"


def test_transition_ignores_reserved_fields_and_validates_status(store):
    claim(store, "p1")
    rec = store.transition("p1", "DECLINED", owner="w1", fields={
        "status": "APPROVED", "attempts": 99, "payment_id": "zz", "lease_owner": "evil", "sent_ts": "1",
        "fingerprint": "f", "in_flight": "1", "next_check_ts": "1"})
    assert rec["status"] == "DECLINED" and rec["attempts"] == 1 and rec["payment_id"] == "p1"
    assert rec.get("sent_ts", "") == "" and rec["fingerprint"] == ""
    with pytest.raises(ValueError):
        store.transition("p1", "WHATEVER")


# The attempt journal decides RETRYING vs UNKNOWN: RETRYING only while no attempt may have been sent.
@pytest.mark.parametrize("setup,sent,asked,status,sent_ts", [
    ("none", None, "RETRYING", "RETRYING", ""),       # nothing in flight, nothing sent before
    ("in_flight", False, "RETRYING", "RETRYING", ""),  # the attempt provably never left
    ("in_flight", True, "RETRYING", "UNKNOWN", "now"),
    ("in_flight", None, "RETRYING", "UNKNOWN", "now"),  # unsaid counts as "may have been sent"
    ("in_flight", True, "UNKNOWN", "UNKNOWN", "now"),
    ("in_flight", False, "UNKNOWN", "UNKNOWN", ""),
    ("prior", None, "RETRYING", "UNKNOWN", "kept"),  # sent before: never RETRYING again
    ("prior_in_flight", False, "RETRYING", "UNKNOWN", "kept"),
    ("prior_in_flight", True, "RETRYING", "UNKNOWN", "now"),
])
def test_retrying_only_while_no_attempt_may_have_been_sent(store, tier, setup, sent, asked, status, sent_ts):
    c = claim(store, "p1", journal={"none": False, "in_flight": True, "prior": "prior"}.get(setup, "prior"))
    if setup == "prior_in_flight":
        assert store.journal("p1", "w1", 30) is not None
    prior = c.record.get("sent_ts", "")
    tier.wait(0.01)
    before = tier.server_now()
    rec = store.transition("p1", asked, owner="w1", sent=sent, note="t")
    assert rec["status"] == status
    assert rec.get("in_flight", "0") == "0"  # how the attempt ended is said
    if sent_ts == "":
        assert rec.get("sent_ts", "") == ""
    elif sent_ts == "kept":
        assert rec["sent_ts"] == prior
    else:
        assert float(rec["sent_ts"]) >= before - 0.001 and rec["sent_ts"] == rec["updated_ts"]


def test_retrying_with_sent_ts_becomes_unknown_even_for_the_holder_and_pending_keeps_the_lease(store):
    claim(store, "p1", journal=True, lease=30)
    rec = store.transition("p1", "PENDING", owner="w1", expect="PENDING", sent=False, note="DUPLICATE")
    assert rec["status"] == "PENDING" and rec["lease_owner"] == "w1" and float(rec["lease_until"]) > 0
    assert rec["in_flight"] == "0" and rec.get("sent_ts", "") == ""


def test_check_in_sets_the_next_check_in_server_time_and_parking_frees_the_lease(store):
    claim(store, "p1", journal=True, lease=30)
    rec = store.transition("p1", "UNKNOWN", owner="w1", sent=True, check_in=61)
    assert float(rec["next_check_ts"]) == pytest.approx(float(rec["updated_ts"]) + 61, abs=0.002)
    assert rec["lease_until"] == "0"
    assert claim(store, "p1", owner="w2").kind == "resumed"
    rec = store.transition("p1", "UNKNOWN", owner="w2", check_in=-5)  # never in the past
    assert float(rec["next_check_ts"]) == pytest.approx(float(rec["updated_ts"]), abs=0.002)


# ---- renew (the heartbeat) -------------------------------------------------------------------

def test_renew_extends_only_the_holders_lease_of_a_pending_record(store, tier):
    claim(store, "p1", lease=0.5)
    assert store.renew("p1", "w2", 30) is False
    assert store.renew("missing", "w1", 30) is False
    for _ in range(6):  # 0.9 s in all: the 0.5 s lease stays alive because it is renewed
        tier.wait(0.15)
        assert store.renew("p1", "w1", 0.5) is True
    assert claim(store, "p1", owner="w2").kind == "busy"
    assert store.renew("p1", "w1", 30) is True
    assert float(store.get("p1")["lease_until"]) == pytest.approx(tier.server_now() + 30, abs=0.05)
    store.transition("p1", "UNKNOWN", owner="w1", sent=None)
    assert store.renew("p1", "w1", 30) is False  # parked: nothing to keep alive
    claim(store, "p1", owner="w2")
    approve(store, "p1", "100000000051", owner="w2")
    assert store.renew("p1", "w2", 30) is False


def test_an_unrenewed_lease_lapses(store, tier):
    claim(store, "p1", lease=0.2)
    tier.wait(0.3)
    assert claim(store, "p1", owner="w2").kind == "resumed"
    assert store.renew("p1", "w1", 30) is False  # the old holder cannot take it back


# ---- concurrency -----------------------------------------------------------------------------

def _race(tier, pid, n_threads, **kw):
    barrier = threading.Barrier(n_threads)
    kinds, lock = [], threading.Lock()

    def worker(i):
        s = tier.handle()  # separate instances, as separate workers (the fake: its one state)
        barrier.wait()
        c = s.claim(pid, "sale", fields=SALE_FIELDS, owner=f"w{i}", lease_seconds=30, **kw)
        with lock:
            kinds.append(c.kind)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(kinds)


def test_concurrent_claims_exactly_one_wins(store, tier):
    n = 8
    for round_ in range(40):
        pid = f"race-{round_}"
        assert _race(tier, pid, n, journal=True) == ["busy"] * (n - 1) + ["claimed"]
        rec = store.get(pid)
        assert rec["attempts"] == 1 and rec["sends"] == "1"


def test_concurrent_takeovers_of_a_parked_record_exactly_one_resumes(store, tier):
    n = 8
    for round_ in range(20):
        pid = f"park-{round_}"
        store.claim(pid, "sale", fields=SALE_FIELDS, owner="first", lease_seconds=30, journal=True)
        store.transition(pid, "UNKNOWN", owner="first", sent=None)
        assert _race(tier, pid, n) == ["busy"] * (n - 1) + ["resumed"]
        assert store.get(pid)["attempts"] == 2


# ---- repairs: follow-ups reflected on their original in the same script -------------------------

def _approved(store, pid, op, trans_id, *, amount="", reflect=False, message="Approved", owner="w1", **fields):
    store.claim(pid, op, fields={"amount": amount, **fields}, owner=owner, lease_seconds=30)
    return store.transition(pid, "APPROVED", owner=owner, expect="PENDING", reflect=reflect,
                            fields={"trans_id": trans_id, "message": message})


def test_capture_is_reflected_on_its_auth_in_the_same_script(store):
    _approved(store, "a1", "auth", "100000000011", amount="5.00")
    rec = _approved(store, "c1", "capture", "100000000012", target="100000000011", reflect=True)
    assert rec["reflected"] == "1" and store.reflect_due() == []
    auth = store.get("a1")
    assert auth["status"] == "CAPTURED" and auth["captured_by"] == "c1"
    assert auth["history"][-1] == {"at": auth["updated_at"], "status": "CAPTURED", "note": "captured by c1"}
    assert store.open_auths(-1) == []


@pytest.mark.parametrize("op,message", [("void", "Approved Void"), ("refund", "Approved Void")],
                         ids=["void", "full-refund-answered-as-void"])
def test_void_is_reflected_on_its_sale(store, op, message):
    _approved(store, "s1", "sale", "100000000021", amount="3.00")
    _approved(store, "v1", op, "100000000022", target="100000000021", parent="s1", reflect=True, message=message)
    sale = store.get("s1")
    assert sale["status"] == "VOIDED" and sale["voided_by"] == "v1"


@pytest.mark.parametrize("trans_type,message,status", [
    ("VOID", "Approved", "VOIDED"),                   # the gateway voided it: its trans type says so
    ("REFUND", "Approved Void", "REFUNDED"),          # a trans type is believed over the message's words
    ("", "Approved Void", "VOIDED"),                  # older records without a trans type: the message
    ("", "Approved Return", "REFUNDED"),
], ids=["void-type", "refund-type", "no-type-void-message", "no-type-return-message"])
def test_a_refund_answered_as_a_void_is_known_by_its_trans_type(store, trans_type, message, status):
    _approved(store, "s1", "sale", "100000000021", amount="3.00")
    store.claim("r1", "refund", fields={"target": "100000000021"}, owner="w1", lease_seconds=30)
    store.transition("r1", "APPROVED", owner="w1", expect="PENDING", reflect=True,
                     fields={"trans_id": "100000000022", "message": message, "trans_type": trans_type})
    assert store.get("s1")["status"] == status


@pytest.mark.parametrize("refunds,statuses_after,amounts_after", [
    (["1.00", "2.00"], ["PARTIALLY_REFUNDED", "REFUNDED"], ["1.00", "3.00"]),
    (["0.50", "0.50", "2.00"], ["PARTIALLY_REFUNDED", "PARTIALLY_REFUNDED", "REFUNDED"], ["0.50", "1.00", "3.00"]),
    (["3.00"], ["REFUNDED"], ["3.00"]),
    ([""], ["REFUNDED"], ["3.00"]),  # no amount: what is left of it
    (["1.25", ""], ["PARTIALLY_REFUNDED", "REFUNDED"], ["1.25", "3.00"]),
], ids=["1+2", "0.5+0.5+2", "full", "no-amount", "partial-then-rest"])
def test_refunds_accumulate_on_the_sale(store, refunds, statuses_after, amounts_after):
    _approved(store, "s1", "sale", "100000000031", amount="3.00")
    for i, (amount, status, total) in enumerate(zip(refunds, statuses_after, amounts_after, strict=True)):
        _approved(store, f"r{i}", "refund", f"10000000004{i}", amount=amount, target="100000000031",
                  reflect=True, message="Approved Return")
        sale = store.get("s1")
        assert (sale["status"], sale["refunded_amount"], sale["refunded_by"]) == (status, total, f"r{i}")
    assert store.reflect_due() == []


@pytest.mark.parametrize("order", [("rest", "partial"), ("partial", "rest")])
def test_a_refund_claimed_without_an_amount_counts_the_amount_its_answer_recorded(store, order):
    """The flow records what the gateway took on an amount-less refund (its reply's AMOUNT); the store counts that,
    not "total minus what it has counted so far", in whichever order the answers are recorded."""
    _approved(store, "s1", "sale", "100000000031", amount="3.00")
    took = {"partial": ("1.00", "1.00"), "rest": ("", "2.00")}  # (asked, taken)
    for i, name in enumerate(order):
        asked, taken = took[name]
        store.claim(f"r{i}", "refund", fields={"amount": asked, "target": "100000000031"}, owner="w1",
                    lease_seconds=30)
        store.transition(f"r{i}", "APPROVED", owner="w1", expect="PENDING", reflect=True,
                         fields={"trans_id": f"10000000004{i}", "message": "Approved Return", "amount": taken})
    sale = store.get("s1")
    assert (sale["status"], sale["refunded_amount"]) == ("REFUNDED", "3.00")


def test_refunds_never_count_more_than_the_sale(store):
    """An amount-less refund whose answer had no AMOUNT counts "what was left" (3.00); a partial refund the gateway
    made before it, recorded after it, cannot take the count past the sale's 3.00."""
    _approved(store, "s1", "sale", "100000000031", amount="3.00")
    _approved(store, "r0", "refund", "100000000040", amount="", target="100000000031", reflect=True,
              message="Approved Return")
    _approved(store, "r1", "refund", "100000000041", amount="1.00", target="100000000031", reflect=True,
              message="Approved Return")
    sale = store.get("s1")
    assert (sale["status"], sale["refunded_amount"]) == ("REFUNDED", "3.00")


def test_a_void_of_a_capture_reopens_the_auth(store):
    _approved(store, "a1", "auth", "100000000051", amount="5.00")
    _approved(store, "c1", "capture", "100000000052", target="100000000051", reflect=True)
    assert store.get("a1")["status"] == "CAPTURED"
    _approved(store, "v1", "void", "100000000053", target="100000000052", reflect=True, message="Approved Void")
    capture, auth = store.get("c1"), store.get("a1")
    assert capture["status"] == "VOIDED" and capture["voided_by"] == "v1"
    assert auth["status"] == "APPROVED" and auth["captured_by"] == ""
    assert "reopened" in auth["history"][-1]["note"]
    assert [r["payment_id"] for r in store.open_auths(-1)] == ["a1"]  # open again: the stale sweep sees it


def test_a_skipped_reflection_is_due_and_repaired_by_reflect(store):
    _approved(store, "s1", "sale", "100000000061", amount="3.00")
    _approved(store, "v1", "void", "100000000062", target="100000000061", message="Approved Void")  # crash here
    assert store.get("s1")["status"] == "APPROVED"
    assert store.reflect_due() == ["v1"]
    assert store.reflect("v1") == "reflected"
    assert store.get("s1")["status"] == "VOIDED" and store.reflect_due() == []
    assert store.reflect("v1") == "nothing"  # idempotent
    assert statuses(store, "s1") == ["PENDING", "APPROVED", "VOIDED"]


def test_reflect_waits_for_a_non_final_original_and_handles_odd_cases(store):
    store.claim("s1", "sale", fields={"amount": "3.00", "trans_id": "100000000071"}, owner="w1", lease_seconds=30)
    _approved(store, "v1", "void", "100000000072", target="100000000071", parent="s1", reflect=True)
    assert store.reflect_due() == ["v1"] and store.get("v1").get("reflected") != "1"
    assert store.reflect("v1") == "original_not_final"
    approve(store, "s1", "100000000071")
    assert store.reflect("v1") == "reflected" and store.get("s1")["status"] == "VOIDED"
    # a second void of a voided sale; a follow-up without an original; a follow-up not approved
    _approved(store, "v2", "void", "100000000073", target="100000000071", parent="s1")
    assert store.reflect("v2") == "already"
    _approved(store, "v3", "void", "100000000074", target="999999999999")
    assert store.reflect("v3") == "no_original"
    store.claim("v4", "void", fields={"target": "100000000071"}, owner="w1", lease_seconds=30)
    store.transition("v4", "ERROR", owner="w1", fields={"message": "Already Voided"})
    assert store.reflect("v4") == "nothing" and store.reflect("missing") == "nothing"
    assert store.reflect_due() == []


# ---- indexes ---------------------------------------------------------------------------------

def test_trans_id_index(store):
    assert store.find_by_trans_id("100000000001") is None
    claim(store, "p1")
    approve(store, "p1", "100000000001")
    assert store.find_by_trans_id("100000000001")["payment_id"] == "p1"
    # a later operation reporting the same trans id does not steal the original's entry
    claim(store, "v1", op="void", fields={"target": "100000000001", "parent": "p1"})
    approve(store, "v1", "100000000001")
    assert store.find_by_trans_id("100000000001")["payment_id"] == "p1"
    claim(store, "c1", op="capture", fields={"target": "100000000001"})
    approve(store, "c1", "100000000002")
    assert store.find_by_trans_id("100000000002")["payment_id"] == "c1"


def test_trans_id_index_follows_a_changed_trans_id_but_keeps_another_records_entry(store):
    claim(store, "p1")
    approve(store, "p1", "100000000001")
    store.transition("p1", "APPROVED", expect="APPROVED", fields={"trans_id": "100000000002"}, note="corrected")
    assert store.find_by_trans_id("100000000001") is None
    assert store.find_by_trans_id("100000000002")["payment_id"] == "p1"
    claim(store, "p2")
    approve(store, "p2", "100000000002")  # reports p1's trans id: p1 keeps the entry (first writer wins)
    store.transition("p2", "APPROVED", expect="APPROVED", fields={"trans_id": "100000000003"})
    assert store.find_by_trans_id("100000000002")["payment_id"] == "p1"
    assert store.find_by_trans_id("100000000003")["payment_id"] == "p2"


def test_open_auths_index(store):
    claim(store, "a1", op="auth")
    assert store.open_auths(-1) == []
    approve(store, "a1", "100000000011")
    claim(store, "a2", op="auth")
    store.transition("a2", "DECLINED", expect={"PENDING"}, owner="w1")
    claim(store, "s1")
    approve(store, "s1", "100000000012")
    assert store.open_auths(60) == []  # too young (server time)
    assert [r["payment_id"] for r in store.open_auths(-1)] == ["a1"]
    store.transition("a1", "VOIDED", expect={"APPROVED"}, fields={"voided_by": "v1"})
    assert store.open_auths(-1) == []


def test_voids_due_index(store):
    claim(store, "s1", fields={**SALE_FIELDS, "then_void": "1"})
    claim(store, "s2")
    claim(store, "s3", fields={**SALE_FIELDS, "then_void": True})
    assert store.voids_due(-1) == []  # PENDING is not due
    for pid, tid in (("s1", "100000000021"), ("s2", "100000000022"), ("s3", "100000000023")):
        approve(store, pid, tid)
    assert store.voids_due(10) == []
    assert sorted(r["payment_id"] for r in store.voids_due(-1)) == ["s1", "s3"]
    store.transition("s1", "VOIDED", expect={"APPROVED"}, fields={"voided_by": "v1"})
    store.transition("s3", "APPROVED", expect={"APPROVED"}, fields={"then_void": ""}, note="void not wanted")
    assert store.voids_due(-1) == []


def test_stale_non_final(store, tier):
    claim(store, "pend", lease=1.0)
    claim(store, "retry")
    store.transition("retry", "RETRYING", owner="w1")
    claim(store, "unk")
    store.transition("unk", "UNKNOWN", owner="w1")
    claim(store, "done")
    approve(store, "done", "100000000031")
    assert store.stale_non_final(60) == []
    # PENDING with a live lease is not stale, however old
    assert sorted(r["payment_id"] for r in store.stale_non_final(-1)) == ["retry", "unk"]
    tier.wait(1.1)  # the lease expires
    assert sorted(r["payment_id"] for r in store.stale_non_final(-1)) == ["pend", "retry", "unk"]
    assert store.stale_non_final(0.3, limit=None) and store.stale_non_final(60) == []
    claim(store, "unk", owner="w2")
    store.transition("unk", "APPROVED", expect={"PENDING"}, owner="w2", fields={"trans_id": "100000000032"})
    assert sorted(r["payment_id"] for r in store.stale_non_final(-1)) == ["pend", "retry"]
    assert "unk" not in tier.index("non_final")


def test_list_newest_first_with_filters(store, tier):
    for i, op in enumerate(["sale", "auth", "sale", "void"]):
        tier.wait(0.005)  # distinct server-time scores
        claim(store, f"p{i}", op=op)
    approve(store, "p2", "100000000041")
    assert [r["payment_id"] for r in store.list()] == ["p3", "p2", "p1", "p0"]
    assert [r["payment_id"] for r in store.list(limit=2)] == ["p3", "p2"]
    assert [r["payment_id"] for r in store.list(operation="sale")] == ["p2", "p0"]
    assert [r["payment_id"] for r in store.list(status="APPROVED")] == ["p2"]
    assert store.list(status="VOIDED") == []


def test_list_by_merchant_account_reads_the_records_own_name(store, tier):
    # records of default name no merchant (as before several accounts); another account's name theirs
    for i in range(5):
        tier.wait(0.005)
        claim(store, f"m{i}", fields=dict(SALE_FIELDS, merchant="shop2") if i % 2 else SALE_FIELDS)
    assert [r["payment_id"] for r in store.list(merchant="shop2")] == ["m3", "m1"]
    assert [r["payment_id"] for r in store.list(merchant="default")] == ["m4", "m2", "m0"]
    assert [r["payment_id"] for r in store.list(merchant="default", limit=2)] == ["m4", "m2"]
    assert [r["payment_id"] for r in store.list(merchant="shop2", operation="sale", limit=1)] == ["m3"]
    assert store.list(merchant="shop3") == [] and store.list(merchant="shop2", status="APPROVED") == []


def test_indexes_track_every_transition(store, tier):
    claim(store, "p1")
    assert tier.index("non_final") == ["p1"] and tier.index("time") == ["p1"]
    store.transition("p1", "RETRYING", owner="w1")
    assert tier.index("non_final") == ["p1"]
    claim(store, "p1", owner="w2")
    store.transition("p1", "ERROR", owner="w2", fields={"message": "bad seal", "error_class": "Rejected"})
    assert tier.index("non_final") == []
    assert store.stale_non_final(-1) == []


def test_history_and_audit(store):
    claim(store, "p1", journal=True)
    store.transition("p1", "UNKNOWN", owner="w1", note="read timeout", sent=None)
    claim(store, "p1", owner="w2")
    approve(store, "p1", "100000000001", owner="w2")
    hist = store.history("p1")
    assert [h["status"] for h in hist] == ["PENDING", "UNKNOWN", "PENDING", "APPROVED"]
    assert hist[1]["note"] == "read timeout" and hist[3]["note"] == "gateway approved"
    assert store.get("p1")["history"] == hist
    entries = store.audit(count=100)
    assert [(e["from"], e["to"]) for e in entries] == [
        ("", "PENDING"), ("PENDING", "UNKNOWN"), ("UNKNOWN", "PENDING"), ("PENDING", "APPROVED")]
    last = entries[-1]
    assert last["payment_id"] == "p1" and last["operation"] == "sale" and last["trans_id"] == "100000000001"
    assert last["at"] == hist[3]["at"] and "id" in last
    assert [e["to"] for e in store.audit(after=entries[1]["id"])] == ["PENDING", "APPROVED"]
    assert [e["to"] for e in store.audit(count=1)] == ["PENDING"]


def test_the_history_is_a_field_of_the_record_and_never_in_its_replies(store):
    """One event log per payment besides the audit stream: the history is the record's ``history`` field, written in
    the same HSET as the change (no list key), and left out of every record the store hands out except get()'s."""
    claim(store, "p1", journal=True)
    written = approve(store, "p1", "100000000001")
    assert "history" not in written and "history" not in claim(store, "p1").record
    raw = store.redis.hget(store.record_key("p1"), "history")
    assert [h["status"] for h in json.loads(raw)] == ["PENDING", "APPROVED"]
    assert not store.redis.exists(store.history_key("p1"))
    assert all("history" not in r for r in store.list())


def test_a_new_claim_answers_only_what_it_wrote_and_hands_out_the_whole_record(store):
    """The claim's reply carries only the fields it added (the caller knows the ones it gave): Claim.record is still
    the whole record, as a reader finds it."""
    got = claim(store, "p1", journal=True, fence_for=300.0, fingerprints=["a" * 64])
    rec = store.get("p1")
    assert got.kind == "claimed" and rec is not None
    assert got.record == {k: v for k, v in rec.items() if k != "history"}
    assert got.record["amount"] == SALE_FIELDS["amount"] and got.record["fingerprint"] == "a" * 64


def test_a_history_list_written_before_the_field_still_reads_first(store):
    """A record written by the previous release began its history in the list P hist:<id>: get() and history()
    read that list, then the field that later changes append to (and retention removes both with the record)."""
    claim(store, "p1", journal=True)
    store.redis.hdel(store.record_key("p1"), "history")  # as the previous release wrote it:
    old = [{"at": "2026-12-07T10:00:00.000Z", "status": "PENDING", "note": "claimed by w1; attempt 1"}]
    store.redis.rpush(store.history_key("p1"), *[json.dumps(h) for h in old])
    approve(store, "p1", "100000000001")
    assert statuses(store, "p1") == ["PENDING", "APPROVED"]
    assert store.history("p1")[0] == old[0] and store.get("p1")["history"] == store.history("p1")


def test_the_history_keeps_its_newest_entries_up_to_its_cap(store):
    from worker.store.lua import HISTORY_CAP

    claim(store, "p1", journal=True)
    entries = [{"at": "2026-12-07T10:00:00.000Z", "status": "PENDING", "note": f"attempt {i}"}
               for i in range(HISTORY_CAP)]
    store.redis.hset(store.record_key("p1"), "history", json.dumps(entries))
    approve(store, "p1", "100000000001")
    hist = store.history("p1")
    assert len(hist) == HISTORY_CAP and hist[0]["note"] == "attempt 1" and hist[-1]["status"] == "APPROVED"


# ---- locks -----------------------------------------------------------------------------------

def test_lock_acquire_release_by_token(store, tier):
    token = store.locks.acquire("sweep", 30)
    assert token
    assert store.locks.acquire("sweep", 30) is None
    assert tier.lock_ttl("sweep") > 0
    assert store.locks.release("sweep", "not-the-token") is False
    assert store.locks.acquire("sweep", 30) is None
    assert store.locks.release("sweep", token) is True
    assert store.locks.release("sweep", token) is False
    token2 = store.locks.acquire("sweep", 30)
    assert token2 and token2 != token
    store.locks.release("sweep", token2)


# ---- card data guard -------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["4111111111111111", "card 4111 1111 1111 1111 here", "4111-1111-1111-1111",
                                   "378282246310005", "6011000990139424"])
def test_card_number_guard(store, tier, value):
    with pytest.raises(ValueError) as exc:
        claim(store, "p1", fields={**SALE_FIELDS, "message": value})
    assert "message" in str(exc.value) and value not in str(exc.value) and "1111" not in str(exc.value)
    assert store.get("p1") is None
    claim(store, "p1")
    with pytest.raises(ValueError) as exc:
        store.transition("p1", "APPROVED", owner="w1", fields={"whatever": value})
    assert "whatever" in str(exc.value)
    with pytest.raises(ValueError):
        store.transition("p1", "APPROVED", owner="w1", note=value)
    with pytest.raises(ValueError):
        claim(store, value)  # the payment id becomes a key
    assert store.get("p1")["status"] == "PENDING"
    digits = value.replace(" ", "").replace("-", "")[-16:]
    assert digits not in tier.stored_text()


def test_card_guard_allows_ordinary_values(store):
    # a 12-digit gateway trans id is fine; non-Luhn long runs are fine anywhere
    rec = claim(store, "p1", fields={**SALE_FIELDS, "trans_id": "100000000008", "message": "ref 4111111111111112"})
    assert rec.kind == "claimed"
    assert store.transition("p1", "APPROVED", owner="w1", fields={"target": "100000000008", "auth_code": "123456"})


# ---- public and task outcomes ----------------------------------------------------------------

def test_public_outcome(store):
    claim(store, "p1", op="void", fields={"target": "100000000061", "parent": "s1"}, journal=True,
          fingerprints=[FP_A])
    rec = store.transition("p1", "APPROVED", owner="w1", fields={"trans_id": "100000000062", "error_class": "",
                                                                 "then_void": "", "bank_name": "TEST BANK"})
    out = public_outcome(store.get("p1"))
    assert set(out) == set(CONTRACT_FIELDS) | {"target", "parent", "bank_name"}
    assert out["attempts"] == 1 and out["status"] == "APPROVED" and out["operation"] == "void"
    assert out == public_outcome(rec)
    assert json.loads(json.dumps(out)) == out
    blank = public_outcome({"payment_id": "x"})
    assert set(blank) == set(CONTRACT_FIELDS) and blank["attempts"] == 0


@pytest.mark.parametrize("status,shown", [
    ("PENDING", "UNKNOWN"), ("RETRYING", "UNKNOWN"), ("UNKNOWN", "UNKNOWN"), ("APPROVED", "APPROVED"),
    ("DECLINED", "DECLINED"), ("ERROR", "ERROR"), ("SKIPPED", "SKIPPED"), ("VOIDED", "VOIDED"),
    ("CAPTURED", "CAPTURED"), ("REFUNDED", "REFUNDED"), ("PARTIALLY_REFUNDED", "PARTIALLY_REFUNDED"),
])
def test_task_outcome_never_shows_pending_or_retrying(status, shown):
    assert task_outcome({"payment_id": "p", "status": status})["status"] == shown
    assert task_outcome(None)["status"] == "UNKNOWN"


@pytest.mark.parametrize("existing", [None, "APPROVED", "PENDING-other-owner", "mismatch"])
def test_claim_with_message_id_clears_that_messages_outbox_entry_whatever_the_claim_says(store, tier, existing):
    for msg in ("msg-1", "msg-2"):
        store.outbox.put(msg, {"name": "payments.sale", "body": [], "headers": {"id": msg}})
    if existing in ("APPROVED", "mismatch"):
        claim(store, "p-1", lease=60, fingerprints=[FP_A])
        approve(store, "p-1", "100000000001")
    elif existing:
        claim(store, "p-1", owner="other", lease=60)
    c = claim(store, "p-1", lease=60, message_id="msg-1", fingerprints=[FP_B] if existing == "mismatch" else [])
    assert c.kind == {None: "claimed", "APPROVED": "final", "PENDING-other-owner": "busy",
                      "mismatch": "mismatch"}[existing]
    assert tier.outbox_entry("msg-1") == (None, None)
    assert tier.outbox_entry("msg-2")[0] is not None  # other messages untouched
    assert [t for t, _ in store.outbox.stale(-1)] == ["msg-2"]


def test_the_sweep_stamps_an_outbox_entry_once_and_drops_the_stamp_of_a_claimed_one(store, tier):
    for msg in ("msg-1", "msg-2"):
        store.outbox.put(msg, {"name": "payments.sale", "body": [], "headers": {"id": msg}})
    assert tier.outbox_entry("msg-1")[1] is None  # a producer's put has no clock
    assert store.outbox.stale(3600) == []  # the sweep's first sighting: stamped, not yet due
    first = tier.outbox_entry("msg-1")[1]
    assert first is not None and tier.outbox_entry("msg-2")[1] is not None
    tier.wait(0.01)
    assert store.outbox.stale(3600) == [] and tier.outbox_entry("msg-1")[1] == first  # stamped once
    claim(store, "p-1", lease=60, message_id="msg-1")
    assert tier.outbox_entry("msg-1") == (None, first)  # the claim leaves the stamp to the sweep
    assert store.health.snapshot()["outbox"]["count"] == 1  # entries, not stamps
    assert [t for t, _ in store.outbox.stale(0)] == ["msg-2"]
    assert tier.outbox_entry("msg-1") == (None, None)


def test_a_republished_outbox_entry_counts_its_publications_and_restarts_its_clock(store, tier):
    store.outbox.put("msg-1", {"name": "payments.sale", "body": [], "headers": {"id": "msg-1"}})
    [(task_id, entry)] = store.outbox.stale(-1)
    first = tier.outbox_entry("msg-1")[1]
    tier.wait(0.01)
    store.outbox.republished(task_id, entry)
    [(_, again)] = store.outbox.stale(-1)
    assert again == {"message": entry["message"], "republished": 1}
    assert tier.outbox_entry("msg-1")[1] > first


@pytest.mark.parametrize("refunds,voided,status,refunded", [
    (["1.00"], 0, "APPROVED", "0.00"),
    (["1.00", "2.00"], 1, "PARTIALLY_REFUNDED", "1.00"),       # the sale was REFUNDED: 3.00 of 3.00
    (["0.50", "1.00"], 0, "PARTIALLY_REFUNDED", "1.00"),
    (["1.25", ""], 1, "PARTIALLY_REFUNDED", "1.25"),           # the rest (1.75), recorded on the refund, given back
    ([""], 0, "APPROVED", "0.00"),
], ids=["one", "second-of-full", "first-of-two", "rest", "whole-rest"])
def test_a_void_of_a_refund_gives_its_amount_back_to_the_sale(store, refunds, voided, status, refunded):
    _approved(store, "s1", "sale", "100000000031", amount="3.00")
    for i, amount in enumerate(refunds):
        _approved(store, f"r{i}", "refund", f"10000000004{i}", amount=amount, target="100000000031", parent="s1",
                  reflect=True, message="Approved Return")
    _approved(store, "v1", "void", "100000000049", target=f"10000000004{voided}", reflect=True,
              message="Approved Void")
    refund, sale = store.get(f"r{voided}"), store.get("s1")
    assert refund["status"] == "VOIDED" and refund["voided_by"] == "v1"
    assert (sale["status"], sale["refunded_amount"]) == (status, refunded)
    note = sale["history"][-1]["note"]
    assert note.startswith(f"refund r{voided} of ") and "voided by v1" in note
    assert store.reflect_due() == []
    assert store.reflect("v1") == "nothing" and store.get("s1")["refunded_amount"] == refunded  # given back once


@pytest.mark.parametrize("counted", [[], ["1.00"]], ids=["sale-not-refunded", "sale-refunded-by-another"])
def test_a_void_of_a_refund_never_counted_on_the_sale_leaves_the_sale_alone(store, counted):
    _approved(store, "s1", "sale", "100000000031", amount="3.00")
    for i, amount in enumerate(counted):
        _approved(store, f"c{i}", "refund", f"10000000005{i}", amount=amount, target="100000000031", reflect=True,
                  message="Approved Return")
    before = store.get("s1")
    _approved(store, "r0", "refund", "100000000040", amount="0.50", target="100000000031", reflect=False,
              message="Approved Return")  # never reflected on the sale (older code, or a repair still due)
    _approved(store, "v1", "void", "100000000049", target="100000000040", reflect=True, message="Approved Void")
    assert store.get("r0")["status"] == "VOIDED"
    after = store.get("s1")
    assert (after["status"], after.get("refunded_amount")) == (before["status"], before.get("refunded_amount"))


@pytest.mark.parametrize("capture_amount,refund_amount,status,refunded", [
    ("", "", "REFUNDED", "5.00"),  # full capture, full refund: both amounts left to the gateway
    ("", "2.00", "PARTIALLY_REFUNDED", "2.00"),
    ("4.00", "", "REFUNDED", "4.00"),
    ("4.00", "4.00", "REFUNDED", "4.00"),
], ids=["full-full", "full-partial", "partial-full", "partial-exact"])
def test_refund_of_a_capture_counts_against_what_was_captured(store, capture_amount, refund_amount, status, refunded):
    _approved(store, "a1", "auth", "100000000081", amount="5.00")
    _approved(store, "c1", "capture", "100000000082", amount=capture_amount, target="100000000081", reflect=True)
    _approved(store, "r1", "refund", "100000000083", amount=refund_amount, target="100000000082", reflect=True,
              message="Approved Return")
    capture = store.get("c1")
    assert (capture["status"], capture["refunded_amount"]) == (status, refunded)


@pytest.mark.parametrize("owner", ["w1", "w2", None])
def test_a_final_record_is_changed_only_through_expect(store, tier, owner):
    # A holder that stalled past its lease (another worker took over and finished the operation meanwhile)
    # must not overwrite the recorded outcome, even as the record's last owner.
    claim(store, "p1", lease=0.1)
    tier.wait(0.2)
    claim(store, "p1", owner="w2")
    approve(store, "p1", "100000000091", owner="w2")
    before = store.get("p1")
    for status in ("UNKNOWN", "ERROR", "SKIPPED", "APPROVED"):
        assert store.transition("p1", status, owner=owner, fields={"message": "late"}) is None
    assert store.get("p1") == before
    assert store.transition("p1", "VOIDED", owner=owner, expect="APPROVED")["status"] == "VOIDED"
