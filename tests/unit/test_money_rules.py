"""The ledger's money rules as tables, over the real store (its Lua is their one copy: tests/support/redis_store.py):
a follow-up reflected on its original, refunds and what is left of a sale, a void of a refund giving its amount
back, a void of a capture reopening its auth, and which indexes a record is in for its state.
"""
from __future__ import annotations

import pytest

SALE_TRANS, FU_TRANS, FU2_TRANS = "100000000001", "100000000002", "100000000003"


def approved(store, pid: str, op: str, *, amount: str | None = "10.00", trans_id: str, reflect: bool = False,
             **fields: str) -> dict:
    base = {"order_id": pid, **fields}
    if amount is not None:
        base["amount"] = amount
    store.claim(pid, op, owner="w", lease_seconds=30, fields=base)
    rec = store.transition(pid, "APPROVED", expect=("PENDING",), owner="w", sent=True, reflect=reflect,
                           fields={"trans_id": trans_id, "message": "Approved"})
    assert rec is not None
    return rec


def follow_up(store, pid: str, op: str, target: str, amount: str | None, trans_id: str, **fields: str) -> dict:
    return approved(store, pid, op, amount=amount, trans_id=trans_id, reflect=True, target=target, **fields)


# (original operation and amount, follow-ups: (operation, amount or None, trans type)) ->
# the original's status, its refunded amount ("" none), and each follow-up's recorded amount
REFLECTION = [
    ("sale", "10.00", [("refund", "4.00", "")], "PARTIALLY_REFUNDED", "4.00", ["4.00"]),
    ("sale", "10.00", [("refund", "10.00", "")], "REFUNDED", "10.00", ["10.00"]),
    ("sale", "10.00", [("refund", None, "")], "REFUNDED", "10.00", ["10.00"]),  # no amount: what was left
    ("sale", "10.00", [("refund", "4.00", ""), ("refund", None, "")], "REFUNDED", "10.00", ["4.00", "6.00"]),
    ("sale", "10.00", [("refund", "4.00", ""), ("refund", "4.00", "")], "PARTIALLY_REFUNDED", "8.00",
     ["4.00", "4.00"]),
    ("sale", "10.00", [("refund", "7.00", ""), ("refund", "7.00", "")], "REFUNDED", "10.00", ["7.00", "7.00"]),
    ("sale", "10.00", [("void", None, "")], "VOIDED", "", [""]),
    ("sale", "10.00", [("refund", "10.00", "VOID")], "VOIDED", "", ["10.00"]),  # an unsettled sale's refund
    ("auth", "10.00", [("capture", "10.00", "")], "CAPTURED", "", ["10.00"]),
    ("auth", "10.00", [("capture", None, "")], "CAPTURED", "", ["10.00"]),  # the whole auth
    ("auth", "10.00", [("void", None, "")], "VOIDED", "", [""]),
]


@pytest.mark.parametrize("op,amount,follow_ups,status,refunded,fu_amounts", REFLECTION)
def test_a_follow_up_is_reflected_on_its_original(store, op, amount, follow_ups, status, refunded, fu_amounts):
    approved(store, "orig", op, amount=amount, trans_id=SALE_TRANS)
    recorded = []
    for n, (fu_op, fu_amount, trans_type) in enumerate(follow_ups):
        extra = {"trans_type": trans_type} if trans_type else {}
        follow_up(store, f"fu{n}", fu_op, SALE_TRANS, fu_amount, f"2000000000{n:02d}", **extra)
        recorded.append(store.get(f"fu{n}").get("amount", ""))
    original = store.get("orig")
    assert (original["status"], original.get("refunded_amount", "")) == (status, refunded)
    assert recorded == fu_amounts
    assert all(store.get(f"fu{n}")["reflected"] == "1" for n in range(len(follow_ups)))


# refunds of a 10.00 sale, then a void of the refund ``voided`` -> the sale's status and refunded amount
VOID_OF_A_REFUND = [
    (["4.00"], 0, "APPROVED", "0.00"),
    (["4.00", "3.00"], 0, "PARTIALLY_REFUNDED", "3.00"),
    (["4.00", "6.00"], 1, "PARTIALLY_REFUNDED", "4.00"),
    (["10.00"], 0, "APPROVED", "0.00"),
]


@pytest.mark.parametrize("refunds,voided,status,refunded", VOID_OF_A_REFUND)
def test_a_void_of_a_refund_gives_its_amount_back(store, refunds, voided, status, refunded):
    approved(store, "sale", "sale", amount="10.00", trans_id=SALE_TRANS)
    for n, amount in enumerate(refunds):
        follow_up(store, f"r{n}", "refund", SALE_TRANS, amount, f"30000000000{n}", parent="sale")
    follow_up(store, "v", "void", f"30000000000{voided}", None, "400000000000", parent=f"r{voided}")
    sale = store.get("sale")
    assert (sale["status"], sale["refunded_amount"]) == (status, refunded)
    assert store.get(f"r{voided}")["status"] == "VOIDED"


def test_a_void_of_a_capture_reopens_its_auth(store):
    approved(store, "auth", "auth", amount="10.00", trans_id=SALE_TRANS)
    follow_up(store, "cap", "capture", SALE_TRANS, None, FU_TRANS, parent="auth")
    assert store.get("auth")["status"] == "CAPTURED"
    follow_up(store, "v", "void", FU_TRANS, None, FU2_TRANS, parent="cap")
    assert store.get("cap")["status"] == "VOIDED"
    assert store.get("auth")["status"] == "APPROVED" and store.get("auth")["captured_by"] == ""
    assert "auth" in store.index("open_auths")


INDEXES = ("non_final", "unknown", "retrying", "needs_human", "open_auths", "voids_due", "reflect_due")

# (operation, status, extra fields, whether it is reflected) -> the indexes the record is in
INDEXED = [
    ("sale", "PENDING", {}, False, {"non_final"}),
    ("sale", "UNKNOWN", {}, False, {"non_final", "unknown"}),
    ("sale", "RETRYING", {}, False, {"non_final", "retrying"}),
    ("sale", "APPROVED", {}, False, set()),
    ("sale", "APPROVED", {"then_void": "1"}, False, {"voids_due"}),
    ("sale", "DECLINED", {"then_void": "1"}, False, set()),
    ("sale", "ERROR", {"needs_human": "1"}, False, {"needs_human"}),
    ("auth", "APPROVED", {}, False, {"open_auths"}),
    ("auth", "DECLINED", {}, False, set()),
    ("capture", "APPROVED", {"target": "999999999999"}, False, {"reflect_due"}),
    ("refund", "APPROVED", {"target": "999999999999"}, True, set()),
    ("void", "DECLINED", {"target": "999999999999"}, False, set()),
]


@pytest.mark.parametrize("op,status,fields,reflect,indexes", INDEXED)
def test_a_record_is_in_the_indexes_of_its_state(store, op, status, fields, reflect, indexes):
    store.claim("p", op, owner="w", lease_seconds=30, fields={"amount": "1.00", "order_id": "p", **fields})
    if status == "RETRYING":
        store.transition("p", status, expect=("PENDING",), owner="w", sent=False)
    elif status != "PENDING":
        store.transition("p", status, expect=("PENDING",), owner="w", sent=True, reflect=reflect,
                         fields={"trans_id": "100000000009", **fields})
    assert {name for name in INDEXES if "p" in store.index(name)} == indexes
    assert "p" in store.index("time")
