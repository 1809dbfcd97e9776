"""worker/ops/flower.py's pure parts: what counts as authentication, the forced read-only mode, and how a payment task's
outcome is shown (state and one-line summary) on Flower's pages. The real Flower processes: tests/e2e/test_flower.py."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
from celery.events.state import Task

from worker.ops.flower import REFUSAL, basic_auth_ok, lock, payment_status, show_payment_status, summary

DECLINED = repr({"payment_id": "p1", "operation": "sale", "status": "DECLINED", "message": "DECLINED",
                 "trans_id": "100000000004", "masked_account": "xxxxxxxxxxxx1111", "amount": "4.00", "attempts": 1})
NOT_CHARGED = repr({"payment_id": "p2", "operation": "sale", "status": "ERROR", "message": "proven absent",
                    "masked_account": "xxxxxxxxxxxx1111", "amount": "5.00", "not_charged": "1"})


def options(**values):
    base = {"basic_auth": None, "auth": "", "auth_provider": None, "read_only": False}
    return SimpleNamespace(**{**base, **values})


@pytest.mark.parametrize("entries", [None, [], [""], ["user"], ["user:"], [":pw"], ["ops:pw", ""], [" :pw"]])
def test_no_or_incomplete_credentials_are_no_authentication(entries):
    assert not basic_auth_ok(entries)
    with pytest.raises(SystemExit, match="refusing to start without authentication"):
        lock(options(basic_auth=entries))


GITHUB = "flower.views.auth.GithubLoginHandler"


@pytest.mark.parametrize("opts", [{"basic_auth": ["ops:pw"]}, {"basic_auth": ["a:1", "b:2"]},
                                  {"auth": r".*@example\.com", "auth_provider": GITHUB}])
def test_basic_auth_or_oauth_with_a_provider_starts_read_only_whatever_was_asked(opts):
    chosen = options(read_only=False, **opts)
    lock(chosen)
    assert chosen.read_only is True


def test_oauth_without_a_provider_is_refused():
    with pytest.raises(SystemExit) as refused:
        lock(options(auth=r".*@example\.com"))
    assert str(refused.value) == REFUSAL and "FLOWER_BASIC_AUTH" in REFUSAL


def test_the_status_and_summary_come_from_the_outcome_repr_with_the_masked_card_only():
    assert payment_status(DECLINED) == "DECLINED"
    assert summary(DECLINED) == "DECLINED · sale 4.00 · xxxxxxxxxxxx1111 · 100000000004 · DECLINED"
    assert summary(NOT_CHARGED) == "ERROR · sale 5.00 · xxxxxxxxxxxx1111 · proven absent · not charged"
    assert summary(DECLINED[:70] + "...") == "DECLINED"  # cut by Celery's resultrepr_maxsize
    assert payment_status("None") is None and payment_status(None) is None


def test_a_declined_payment_task_reads_declined_on_the_pages_and_an_approved_one_success():
    declined = Task("t1", name="payments.sale", state="SUCCESS", result=DECLINED)
    shown = show_payment_status(copy.copy(declined))
    assert shown.state == "DECLINED" and shown.result.startswith("DECLINED · sale 4.00 · ")
    assert shown.result.endswith(DECLINED)  # the whole outcome still follows
    assert declined.state == "SUCCESS"  # Flower passes a copy: its state (and the API) are untouched
    approved = Task("t2", name="payments.void", state="SUCCESS", result=DECLINED.replace("DECLINED", "APPROVED"))
    assert show_payment_status(copy.copy(approved)).state == "SUCCESS"


@pytest.mark.parametrize("task", [Task("t3", name="payments.sale", state="STARTED"),
                                  Task("t4", name="payments.sale", state="FAILURE", result=None),
                                  Task("t5", name="celery.chord_unlock", state="SUCCESS", result=DECLINED),
                                  Task("t6", name="payments.sweep", state="SUCCESS", result="{'voided': 0}")])
def test_other_tasks_and_unfinished_payments_are_shown_as_they_are(task):
    before = (task.state, task.result)
    shown = show_payment_status(copy.copy(task))
    assert (shown.state, shown.result) == before
