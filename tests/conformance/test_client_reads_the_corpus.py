"""Our client's parsers against what BluePay's texts and live replies show (tests/conformance/corpus.py), not
against our sandbox: a parser that only understood the sandbox would fail here."""
from __future__ import annotations

import pytest

from tests.conformance import corpus as C
from worker.gateway import protocol as P
from worker.gateway.errors import OutcomeUnknown, Rejected
from worker.gateway.report import parse_report

SECRET = "CORPUSSECRETKEY0000000000000000X"


@pytest.mark.parametrize("name", sorted(C.BP10EMU_REPLIES))
def test_a_live_bp10emu_reply_stamped_with_our_secret_is_read(name):
    location, (result, message, trans_id, masked) = C.BP10EMU_REPLIES[name]
    restamped = C.restamped(location, SECRET)
    if result == "ERROR":
        with pytest.raises(Rejected) as info:
            P.parse_transaction_reply(302, restamped, b"", secret_key=SECRET)
        assert info.value.response.message == message
        return
    r = P.parse_transaction_reply(302, restamped, b"", secret_key=SECRET)
    assert (r.status, r.message, r.trans_id, r.masked_account) == (result, message, trans_id, masked)
    assert r.approved is (result == "APPROVED")


@pytest.mark.parametrize("name", sorted(C.BP10EMU_REPLIES))
def test_a_live_bp10emu_reply_whose_stamp_is_not_ours_settles_nothing(name):
    """The recorded stamps were made with TokenEx's secret: to us they do not verify (bp10emu stays strict)."""
    location, _ = C.BP10EMU_REPLIES[name]
    with pytest.raises(OutcomeUnknown):
        P.parse_transaction_reply(302, location, b"", secret_key=SECRET)


def test_the_stamp_definition_seen_live_covers_id_date_and_result():
    for location, _ in C.BP10EMU_REPLIES.values():
        assert C.pairs_of(location)["BP_STAMP_DEF"] == "RRNO ISSUE_DATE Result"


@pytest.mark.parametrize("name", sorted(C.STQ_REPLIES))
def test_an_stq_reply_the_sources_allow_is_read_as_what_it_proves(name):
    status, body, (verdict, result, trans_id) = C.STQ_REPLIES[name]
    try:
        rows = P.parse_query_rows(status, body, secret_key=SECRET)
    except Rejected:
        assert verdict == "rejected"
        return
    except OutcomeUnknown:
        assert verdict == "cannot_tell"
        return
    if verdict == "absent":
        assert rows == []
        return
    assert verdict == "found", f"{name}: read as found, the corpus says {verdict}"
    chosen = P.choose_query_row(rows, order_id="200454179879")
    assert chosen is not None and (chosen.status, chosen.trans_id) == (result, trans_id)
    assert chosen.masked_account == "xxxxxxxxxxxx5798" and chosen.cvv2 == "_" and chosen.avs == "4"


def test_the_report_as_its_text_writes_it():
    rows = list(parse_report(C.REPORT_BODY.splitlines(keepends=True)))
    assert [(r.trans_id, r.trans_type, r.master_id, r.voided) for r in rows] == [
        ("200454179879", "SALE", "", False), ("200454181409", "VOID", "200454179879", True)]
    assert all(r.order_id == "200454179879" and str(r.amount) == "9.00" for r in rows)
