"""The in-memory store against the Lua scripts, side by side: random sequences of store calls (hypothesis) run
on both, and every answer and the state afterwards must be the same.

The hand-written contract tests (test_results_store.py) pin the rules one by one; this looks for a difference
nobody thought of: a mode, owner, expectation, journal flag, follow-up or amount combination that only one of
the two implementations handles. Times cannot be compared (Redis ``TIME`` against a fixed clock), so timestamps
are compared by presence, and orders that depend on them (newest first, oldest first) as sets. Leases are 0 s
(lapsed at once in both) or 30 s (live for the whole example). Needs Redis (database 9, env TEST_REDIS_URL).
"""
from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.clocks import FixedClock
from tests.support.fake_store import InMemoryStore
from worker.states import FINAL, FOLLOW_UPS, NON_FINAL, OPERATIONS
from worker.store import ResultsStore

# Each id mostly carries its own operation (another one is a key reused for another request: mismatch). Single
# calls may touch any id; the ids of chains (an original and its follow-ups) are first claimed by their chain.
RANDOM_IDS = {"s1": "sale", "s2": "sale", "a1": "auth", "c1": "capture", "r1": "refund", "r2": "refund", "v1": "void"}
CHAIN_IDS = {"s9": "sale", "a9": "auth", "c9": "capture", "r8": "refund", "r9": "refund", "v9": "void"}
PIDS = {**RANDOM_IDS, **CHAIN_IDS}
# The gateway's trans id of each operation, when it has one; follow-ups target the originals' and the captures'.
TRANS = {pid: f"1000000000{i:02d}" for i, pid in enumerate(sorted(PIDS), start=1)}
TARGETS = [TRANS[pid] for pid in ("s1", "s2", "a1", "c1", "s9", "a9", "c9")] + ["999999999999"]
FPS = ["a" * 64, "b" * 64]
STATUSES = sorted(FINAL | NON_FINAL)
# Resolved when the call is made, from the record as it is then: its lease holder, its status.
HOLDER, CURRENT = "<holder>", "<current>"
FAR_FUTURE = 1e12
TIME_FIELDS = ("created_at", "updated_at", "created_ts", "updated_ts", "lease_until", "sent_ts", "attempt_ts",
               "next_check_ts", "fence_until")

def one_of_values(*values):
    return st.sampled_from(list(values))


pids = st.sampled_from(sorted(PIDS))
leases = one_of_values(30.0, 0.0)
writers = st.one_of(st.just(HOLDER), st.just(HOLDER), one_of_values("w1", "w2", None, ""))
amounts = one_of_values("", "1.00", "2.50", "3.00", "5.00", "7")
any_fields = {
    "amount": amounts,
    "target": st.sampled_from(TARGETS),
    "parent": pids,
    "then_void": one_of_values("1", ""),
    "message": one_of_values("Approved", "Approved Void", "Approved Return", "Declined"),
    "trans_type": one_of_values("", "VOID", "REFUND", "CAPTURE", "SALE"),
    # what retry_failed reads (claim.lua charged_nothing)
    "error_class": one_of_values("", "InvalidInput", "Rejected"),
    "not_charged": one_of_values("", "1"),
}
# per id: its own trans id is the likely one
fields = {pid: st.fixed_dictionaries({}, optional={
    **any_fields, "trans_id": st.one_of(st.just(TRANS[pid]), st.sampled_from(["", *TRANS.values()]))})
    for pid in PIDS}
# a follow-up names what it follows (a trans id; sometimes its original's record too)
claim_fields = {pid: st.builds(lambda f, target: {**f, "target": target}, fields[pid], st.sampled_from(TARGETS))
                if PIDS[pid] in FOLLOW_UPS else fields[pid] for pid in PIDS}
operations = st.sampled_from(sorted(OPERATIONS))
claim_options = {
    "owner": one_of_values("w1", "w2"),
    "lease_seconds": leases,
    "journal": one_of_values(True, False, "prior"),
    "fingerprints": st.lists(st.sampled_from(FPS), max_size=2),
    "dead_owner": one_of_values("", "", "w1", "w2"),
}
modes = one_of_values("run", "run", "run", "retry_failed", "create_only", "reconcile")


@st.composite
def claims(draw, pid=None, mode=None):
    pid = pid or draw(pids)
    operation = PIDS[pid] if draw(st.integers(0, 9)) < 9 else draw(operations)  # else: a key reused
    return "claim", pid, {"operation": operation, "mode": mode or draw(modes), "fields": draw(claim_fields[pid]),
                          **{name: draw(strategy) for name, strategy in claim_options.items()}}


transition_options = {
    "status": st.sampled_from(["APPROVED"] * 4 + ["UNKNOWN", "RETRYING", "PENDING"] * 2 + STATUSES),
    "owner": writers,
    "expect": st.one_of(st.just(None), st.just([CURRENT]), one_of_values(["PENDING"], []),
                        st.lists(st.sampled_from(STATUSES), max_size=2)),
    "sent": one_of_values(None, True, False),
    "check_in": one_of_values(None, 10.0),
    "reflect": st.booleans(),
}


@st.composite
def transitions(draw):
    pid = draw(pids)
    return "transition", pid, {"fields": draw(fields[pid]),
                               **{name: draw(strategy) for name, strategy in transition_options.items()}}


@st.composite
def approvals(draw):
    """The common case, so that originals and follow-ups meet: the holder records an approval."""
    pid = draw(pids)
    return "transition", pid, {"status": "APPROVED", "owner": HOLDER, "expect": [CURRENT], "sent": True,
                               "reflect": draw(st.booleans()), "fields": {**draw(fields[pid]), "trans_id": TRANS[pid]}}


calls = st.one_of(
    transitions(),
    approvals(),
    claims(),
    approvals(),
    # (journal's owner goes to Redis as it is: None is a redis-py DataError there, a TypeError in the fake)
    st.tuples(st.just("journal"), pids, st.fixed_dictionaries({"owner": st.one_of(st.just(HOLDER),
                                                                                  one_of_values("w1", "w2", "")),
                                                               "lease_seconds": leases})),
    st.tuples(st.just("fence"), pids, st.fixed_dictionaries({"owner": st.one_of(st.just(HOLDER),
                                                                                one_of_values("w1", "w2", "")),
                                                             "lease_seconds": leases,
                                                             "accepted_for": one_of_values(0.0, 300.0)})),
    st.tuples(st.just("renew"), pids, st.fixed_dictionaries({"owner": writers, "lease_seconds": leases})),
    st.tuples(st.just("reflect"), pids, st.just({})),
    # retention's removal of the record as it is now (cutoff: any time; both clamp it to their clock)
    st.tuples(st.just("forget"), pids, st.just({})),
)
originals = one_of_values("a9", "s9", "c9")
follow_ups = one_of_values("c9", "r8", "r9", "v9")
messages = one_of_values("Approved", "Approved Void", "Approved Return")


@st.composite
def chains(draw):
    """An original approved, then a follow-up of it (capture, refund, void; a capture is an original too)."""
    original = draw(originals)
    follow = draw(follow_ups)
    if follow == original:
        follow = "v9"
    link = {"target": TRANS[original], **({"parent": original} if draw(st.booleans()) else {})}
    steps = [
        ("claim", original, {"operation": PIDS[original], "owner": "w1", "lease_seconds": 30.0,
                             "fields": {"amount": draw(amounts), **({"target": TRANS["a9"]} if original == "c9"
                                                                     else {})}}),
        ("transition", original, {"status": "APPROVED", "owner": HOLDER, "expect": [CURRENT], "reflect": True,
                                  "fields": {"trans_id": TRANS[original]}}),
        ("claim", follow, {"operation": PIDS[follow], "owner": "w2", "lease_seconds": 30.0, "journal": True,
                           "fields": {"amount": draw(amounts), **link}}),
        ("transition", follow, {"status": "APPROVED", "owner": HOLDER, "expect": [CURRENT], "sent": True,
                                "reflect": draw(st.booleans()), "fields": {
                                    "trans_id": TRANS[follow], "message": draw(messages),
                                    "trans_type": "VOID" if draw(st.booleans()) else PIDS[follow].upper()}}),
    ]
    if draw(st.booleans()):
        steps.append(("reflect", follow, {}))
    if follow == "c9" and draw(st.booleans()):  # and the capture voided (which reopens an auth it captured)
        steps += [("claim", "v9", {"operation": "void", "owner": "w1", "lease_seconds": 30.0,
                                   "fields": {"target": TRANS["c9"]}}),
                  ("transition", "v9", {"status": "APPROVED", "owner": HOLDER, "expect": [CURRENT], "reflect": True,
                                        "fields": {"trans_id": TRANS["v9"], "message": "Approved Void"}})]
    return steps


blocks = st.lists(st.one_of(calls.map(lambda call: [call]), chains()), min_size=3, max_size=25)
openings = st.lists(st.sampled_from(sorted(RANDOM_IDS)), unique=True, min_size=4)


@st.composite
def sequences(draw):
    """Records for most ids first (so that later calls find one), then single calls and whole chains."""
    return ([draw(claims(pid, "run")) for pid in draw(openings)]
            + [call for block in draw(blocks) for call in block])


def _resolved(store, pid: str, kw: dict) -> dict:
    record = store.get(pid) or {}
    kw = dict(kw)
    if kw.get("owner") == HOLDER:
        kw["owner"] = record.get("lease_owner") or "w1"
    if kw.get("expect") == [CURRENT]:
        kw["expect"] = [record.get("status") or "PENDING"]
    return kw


def _record(rec: dict | None) -> dict | None:
    if rec is None:
        return None
    out: dict = {k: (v if k not in TIME_FIELDS or v in ("", "0") else "<time>") for k, v in rec.items()}
    if "history" in out:
        out["history"] = [(h["status"], h["note"]) for h in out["history"]]
    return out


def _call(store, name: str, pid: str, kw: dict):
    kw = dict(kw)
    try:
        if name == "claim":
            c = store.claim(pid, kw.pop("operation"), **kw)
            return c.kind, c.previous_status, _record(c.record)
        if name in ("journal", "fence"):
            return getattr(store, name)(pid, **kw) is not None
        if name == "transition":
            return _record(store.transition(pid, kw.pop("status"), **kw))
        if name == "forget":
            rec = store.get(pid)
            return store.retention.forget([rec] if rec else [], FAR_FUTURE)
        return getattr(store, name)(pid, **kw)
    except ValueError as exc:
        return "raised", type(exc).__name__


def _state(store) -> dict:
    return {
        "records": {pid: _record(store.get(pid)) for pid in PIDS},
        "by_trans": {t: (store.find_by_trans_id(t) or {}).get("payment_id") for t in TRANS.values()},
        "listed": sorted(r["payment_id"] for r in store.list(limit=100)),
        "stale": sorted(r["payment_id"] for r in store.stale_non_final(-1)),
        "open_auths": sorted(r["payment_id"] for r in store.open_auths(-1)),
        "voids_due": sorted(r["payment_id"] for r in store.voids_due(-1)),
        "reflect_due": sorted(store.reflect_due()),
        "archivable": sorted(r["payment_id"] for r in store.retention.due(FAR_FUTURE, limit=100)[0]),
        "kept": {pid: _record(store.retention.kept(pid)) for pid in PIDS},
        "audit": [(e["payment_id"], e["operation"], e["from"], e["to"], e["note"], e["trans_id"])
                  for e in store.audit(count=10_000)],
    }


@pytest.fixture
def base_prefix(redis_client):
    prefix = f"test:differential:{uuid.uuid4().hex}:"
    yield prefix
    keys = list(redis_client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        redis_client.delete(*keys)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=sequences())
def test_the_fake_answers_every_call_as_the_lua_does(redis_client, base_prefix, sequence):
    lua = ResultsStore(redis_client, prefix=f"{base_prefix}{uuid.uuid4().hex}:")
    fake = InMemoryStore(clock=FixedClock())
    for i, (name, pid, drawn) in enumerate(sequence):
        kw = _resolved(fake, pid, drawn)
        assert _call(fake, name, pid, kw) == _call(lua, name, pid, kw), f"call {i}: {name} {pid} {kw}"
    assert _state(fake) == _state(lua)
