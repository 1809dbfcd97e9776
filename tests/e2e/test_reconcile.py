"""``payments reconcile`` over what a real worker charged through the sandbox, then over what a person changed in the
sandbox's console. The e2e Redis and sandbox are shared with the other e2e tests: only this test's operations are
judged (whatever the others left is theirs)."""
from __future__ import annotations

import datetime as dt
import json
import subprocess

import pytest

from tasks import sale
from tests.e2e.test_cli import ROOT, payments_cmd
from tests.support.env import CUSTOMER, TEST_CARD
from tests.support.workers import worker_env


@pytest.fixture(autouse=True)
def _worker(celery_worker, clean_faults):
    yield


def reconcile(sandbox) -> tuple[int, dict]:
    today = dt.datetime.now(dt.UTC).date().isoformat()
    done = subprocess.run([*payments_cmd(), "reconcile", "--date", today, "--json"], cwd=ROOT, env=worker_env(sandbox),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def findings_about(report: dict, ids: set[str]) -> set[tuple[str, str]]:
    return {(f["kind"], f["payment_id"]) for day in report["days"] for f in day["findings"] if f["payment_id"] in ids}


def test_what_the_worker_charged_agrees_and_console_changes_are_found(sandbox):
    first = sale.delay(amount="3.00", card=TEST_CARD, customer=CUSTOMER).get(timeout=30)
    second = sale.delay(amount="5.00", card=TEST_CARD, customer=CUSTOMER).get(timeout=30)
    assert first["status"] == second["status"] == "APPROVED"
    ours = {first["payment_id"], second["payment_id"]}
    _, report = reconcile(sandbox)
    assert findings_about(report, ours) == set()

    sandbox.book("7.00", order_id=first["payment_id"])  # a second charge under our ORDER_ID, by hand
    sandbox.console_void(second["trans_id"])              # our charge voided in the console
    code, report = reconcile(sandbox)
    assert code == 1
    assert findings_about(report, ours) == {("gateway_only", first["payment_id"]),
                                            ("voided_at_gateway", second["payment_id"])}


def test_a_card_like_key_is_reconciled_by_its_keyed_id(sandbox):
    """Issue 25: a card-like idempotency key's ORDER_ID is its keyed id: the report's rows match the record, a second
    charge under it is found, and the report never holds the key."""
    import uuid

    from worker.cards.numbers import luhn_ok

    prefix = f"17592884729{uuid.uuid4().int % 10**7:07d}"  # 18 digits: a snowflake id
    key = next(prefix + d for d in "0123456789" if luhn_ok(prefix + d))
    outcome = sale.delay(amount="9.00", card=TEST_CARD, customer=CUSTOMER, idempotency_key=key).get(timeout=30)
    assert outcome["status"] == "APPROVED" and outcome["payment_id"].startswith("kh-")
    ours = {outcome["payment_id"]}
    _, report = reconcile(sandbox)
    assert findings_about(report, ours) == set()
    sandbox.book("11.00", order_id=outcome["payment_id"])  # a second charge under our ORDER_ID, by hand
    code, report = reconcile(sandbox)
    assert code == 1 and findings_about(report, ours) == {("gateway_only", outcome["payment_id"])}
    assert key not in json.dumps(report)
