"""The optional AVS / CVV2 policy (docs/tokens.md): an approval showing a listed result code is voided at once and
says ``declined_by_policy``; anything else is untouched. Fake gateway (scripted), in-memory store."""
from __future__ import annotations

import pytest

from tests.support.env import TEST_CARD_KEY
from tests.support.fake_gateway import SALE_TRANS, FakeGateway, reply
from worker.config import parse_codes
from worker.payments.flow import PaymentFlow
from worker.payments.policy import ChargePolicy

CARD = {"number": "4111111111111111", "expire": "1239", "cvv2": "123"}
VOID_TRANS = "100000000909"


def flow_for(store, gateway, policy):
    return PaymentFlow(store, gateway, card_keys=[TEST_CARD_KEY], commit_horizon=60.0, policy=policy)


@pytest.mark.parametrize("text,codes", [("", set()), ("N", {"N"}), ("NA", {"N", "A"}), ("n, a", {"N", "A"}),
                                        ("N A _", {"N", "A", "_"}), ("1,8", {"1", "8"})])
def test_policy_settings(text, codes):
    assert parse_codes(text, "AVS_POLICY") == codes


@pytest.mark.parametrize("text", ["N,AB", "N;A", "é"])
def test_a_malformed_policy_names_its_setting(text):
    with pytest.raises(ValueError, match="CVV2_POLICY"):
        parse_codes(text, "CVV2_POLICY")


@pytest.mark.parametrize("operation,avs,cvv2,refused", [
    ("sale", "N", "M", "AVS N"),
    ("auth", "Y", "N", "CVV2 N"),
    ("sale", "N", "N", "AVS N, CVV2 N"),
])
def test_an_approval_the_policy_refuses_is_voided_at_once(store, operation, avs, cvv2, refused):
    gw = FakeGateway([reply(avs=avs, cvv2=cvv2, trans_type=operation.upper()),
                      reply(message="Approved Void", trans_type="VOID", trans_id=VOID_TRANS)])
    flow = flow_for(store, gw, ChargePolicy(frozenset({"N"}), frozenset({"N"})))
    outcome = flow.charge(operation, "pol-1", amount="3.00", card=CARD)
    assert [s["verb"] for s in gw.sends] == [operation, "void"] and gw.sends[1]["trans_id"] == SALE_TRANS
    assert outcome["status"] == "VOIDED" and outcome["declined_by_policy"] == refused
    assert outcome["avs"] == avs and outcome["cvv2"] == cvv2
    void = store.get("pol-1:void")
    assert void["status"] == "APPROVED" and void["parent"] == "pol-1" and refused in void["reason"]


@pytest.mark.parametrize("policy,avs,status", [
    (ChargePolicy(), "N", "APPROVED"),                        # no policy: as before
    (ChargePolicy(frozenset({"N"})), "Y", "APPROVED"),        # a code not listed
])
def test_other_approvals_are_untouched(store, policy, avs, status):
    gw = FakeGateway([reply(avs=avs)])
    outcome = flow_for(store, gw, policy).charge("sale", "pol-2", amount="3.00", card=CARD)
    assert outcome["status"] == status and "declined_by_policy" not in outcome and len(gw.sends) == 1


def test_a_decline_is_never_voided(store):
    gw = FakeGateway([reply(status="DECLINED", message="Declined Sale", avs="N")])
    outcome = flow_for(store, gw, ChargePolicy(frozenset({"N"}))).charge("sale", "pol-3", amount="4.00", card=CARD)
    assert outcome["status"] == "DECLINED" and len(gw.sends) == 1


def test_a_void_that_cannot_run_now_is_left_to_the_sweep(store):
    from worker.gateway import NotSent

    gw = FakeGateway([reply(avs="N")] + [NotSent("connection refused")] * 10)
    outcome = flow_for(store, gw, ChargePolicy(frozenset({"N"}))).charge("sale", "pol-4", amount="3.00", card=CARD)
    record = store.get("pol-4")
    assert outcome["status"] == "APPROVED" and outcome["declined_by_policy"] == "AVS N"
    assert record["then_void"] == "1"  # the sweep's chain-void step voids it (voids_due)
    assert "pol-4" in store.index("voids_due")
