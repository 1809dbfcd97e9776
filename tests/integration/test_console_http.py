"""The operator console over HTTP: a real ``payments console`` (waitress) against real Redis and the sandbox; the
payments are made by the real flow, store and client in this process (a private key prefix)."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.support.card_scan import scan_text
from tests.support.console import USERS, ConsoleClient, running_console
from tests.support.env import INTEGRATION_REDIS_URL, TEST_CARD_KEY
from tests.support.redis_db import redis_or_skip
from tests.support.sandbox import running_sandbox
from worker.gateway import BluePayClient, RetryPolicy
from worker.payments.flow import PaymentFlow
from worker.store import ResultsStore

ROOT = Path(__file__).resolve().parents[2]
CARD = {"number": "4111111111111111", "expire": "1230", "cvv2": "7391"}
TODAY = dt.datetime.now(dt.UTC).date().isoformat()
PAGES = ["/", "/search?q=x", "/payments/x", "/lists/unknown", "/payments", "/reconciliation",
         "/reconciliation/2026-01-01", "/health", "/actions"]


class World:
    def __init__(self, sb, store, flow, url, env, tmp):
        self.sb, self.store, self.flow, self.url, self.env, self.tmp = sb, store, flow, url, env, tmp
        self.served: list[tuple[str, str]] = []

    def client(self, user: str | None = None) -> ConsoleClient:
        c = ConsoleClient(self.url, self.served)
        if user:
            assert c.login(user).status_code == 200
        return c

    def needs_human(self, amount: str = "5.00") -> str:
        """A sale whose outcome stayed unknown and was handed to a human (as the flow leaves it)."""
        pid = "op-" + uuid.uuid4().hex[:12]
        self.store.claim(pid, "sale", owner="w1", lease_seconds=30, fields={"amount": amount, "order_id": pid})
        self.store.transition(pid, "ERROR", expect={"PENDING"}, owner="w1", sent=True,
                              fields={"needs_human": "1", "message": "outcome still unknown: check by hand"})
        return pid


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console")
    prefix = f"test:console:{uuid.uuid4().hex}:"
    with redis_or_skip(INTEGRATION_REDIS_URL) as client, running_sandbox(duplicate_window=0) as sb:
        store = ResultsStore(client, prefix=prefix)
        gateway = BluePayClient(account_id=sb.account_id, secret_key=sb.secret_key, base_url=sb.interfaces_url,
                                retry_policy=RetryPolicy(max_attempts=2, max_seconds=5))
        env = dict(os.environ, REDIS_URL=INTEGRATION_REDIS_URL, PAYMENTS_KEY_PREFIX=prefix,
                   BLUEPAY_URL=sb.interfaces_url, BLUEPAY_ACCOUNT_ID=sb.account_id, BLUEPAY_SECRET_KEY=sb.secret_key,
                   BLUEPAY_MODE="TEST", PAYMENTS_CARD_KEY=TEST_CARD_KEY, RECONCILE_AFTER="1",
                   CONSOLE_ACTION_RATE="30/minute")
        try:
            with running_console(env, tmp) as (url, _log):
                yield World(sb, store, PaymentFlow(store=store, gateway=gateway, card_keys=[TEST_CARD_KEY]), url,
                            env, tmp)
        finally:
            keys = list(client.scan_iter(match=prefix + "*", count=1000))
            if keys:
                client.delete(*keys)


def test_only_the_health_probe_is_served_without_a_login(world) -> None:
    anonymous = world.client()
    health = anonymous.get("/healthz")
    assert health.status_code == 200 and health.text == "ok\n"
    for path in PAGES:
        reply = anonymous.get(path, allow_redirects=False)
        assert reply.status_code == 302 and reply.headers["Location"].startswith("/login"), path
    pid = world.needs_human()
    refused = anonymous.post(f"/payments/{pid}/resolve", {"status": "ERROR", "reason": "x"}, allow_redirects=False)
    assert refused.status_code in (302, 400)
    assert world.store.get(pid)["needs_human"] == "1"


def test_a_wrong_password_is_refused_and_a_right_one_opens_every_page(world) -> None:
    c = world.client()
    wrong = c.login("olga", "not-her-password")
    assert wrong.status_code == 401 and "wrong user name or password" in wrong.text
    assert c.get("/", allow_redirects=False).status_code == 302
    assert c.login("nobody", "whatever-pass").status_code == 401
    assert c.login("olga").status_code == 200
    for path in PAGES:
        reply = c.get(path)
        assert reply.status_code in (200, 404), path
        csp = reply.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp and "script-src 'self'" in csp
        assert reply.headers["X-Frame-Options"] == "DENY" and reply.headers["Cache-Control"] == "no-store"
        assert "<script" not in reply.text and " style=" not in reply.text and "<style" not in reply.text
    health = c.get("/health").text
    assert "workers" in health and "gateway" in health and "needs_human" in health


def test_a_payment_is_found_by_id_key_trans_id_invoice_and_card_amount_day(world) -> None:
    pid = "key-" + uuid.uuid4().hex[:10]
    invoice = "inv-" + uuid.uuid4().hex[:8]
    done = world.flow.charge("sale", pid, amount="3.17", card=CARD, invoice_id=invoice)
    assert done["status"] == "APPROVED"
    c = world.client("vic")
    for q in (pid, done["trans_id"], invoice, f"1111 3.17 {TODAY}"):
        reply = c.get("/search", params={"q": q})
        assert reply.url.endswith(f"/payments/{pid}"), q
    page = c.get(f"/payments/{pid}").text
    for shown in (done["trans_id"], "xxxxxxxxxxxx1111", "APPROVED", invoice, "3.17", "claimed by"):
        assert shown in page, shown
    missing = c.get("/search", params={"q": "never-was-" + uuid.uuid4().hex[:6]})
    assert missing.status_code == 200 and "0 found" in missing.text
    assert c.get("/payments/never-was").status_code == 404


def test_an_archived_payment_is_found_and_its_story_read_from_the_archive(world) -> None:
    from worker.archive import Archive
    from worker.archive.db import sqlite_url_in

    pid = "old-" + uuid.uuid4().hex[:10]
    done = world.flow.charge("sale", pid, amount="2.25", card=CARD)
    record = world.store.get(pid)
    archive = Archive(sqlite_url_in(str(world.tmp)))  # the console's archive: SQLite in its PAYMENTS_DATA_DIR
    try:
        archive.put([record])
        archive.put_audit(world.store.audit_of(pid))
    finally:
        archive.close()
    world.store.redis.delete(world.store.record_key(pid), world.store.history_key(pid))  # as retention leaves it
    c = world.client("olga")
    reply = c.get("/search", params={"q": done["trans_id"]})
    assert reply.url.endswith(f"/payments/{pid}")
    page = reply.text
    assert "archived" in page and done["status"] in page and "claimed by" in page and "2.25" in page
    audit = page[page.index("<h2>Audit</h2>"):]
    assert done["trans_id"] in audit and "none found" not in audit[:audit.index("</table>")]
    assert 'action="/payments/' not in page  # nothing to act on in the archive


def test_the_story_links_a_sale_and_its_void_both_ways(world) -> None:
    pid = "chain-" + uuid.uuid4().hex[:10]
    sold = world.flow.charge("sale", pid, amount="3.10", card=CARD)
    voided = world.flow.void_after(sold)
    assert sold["status"] == "APPROVED" and voided["status"] == "APPROVED", (sold, voided)
    c = world.client("vic")
    sale_page = c.get(f"/payments/{pid}").text
    chain = sale_page[sale_page.index("Follow-ups and chain"):sale_page.index("Reconciliation</h2>")]
    assert f'href="/payments/{voided["payment_id"]}"' in chain and voided["trans_id"] in chain
    assert "VOIDED" in sale_page
    void_page = c.get(f"/payments/{voided['payment_id']}").text
    assert f'href="/payments/{pid}"' in void_page[void_page.index("Follow-ups and chain"):]


def test_the_payments_list_shows_one_merchant_accounts_records(world) -> None:
    ours, theirs = "op-" + uuid.uuid4().hex[:12], "op-" + uuid.uuid4().hex[:12]
    for pid, fields in ((ours, {}), (theirs, {"merchant": "shop2"})):  # default's records name no merchant
        world.store.claim(pid, "sale", owner="w1", lease_seconds=30, fields={"amount": "3.00", "order_id": pid,
                                                                             **fields})
    c = world.client("vic")
    page = c.get("/payments?merchant=shop2").text
    assert theirs in page and ours not in page and "Payments of shop2" in page
    page = c.get("/payments?merchant=default").text
    assert ours in page and theirs not in page
    assert theirs in c.get("/payments").text
    assert c.get("/payments?merchant=Shop%202").status_code == 400  # not a name: never looked up


def test_an_operator_resolves_a_needs_human_payment_a_viewer_and_a_forged_form_cannot(world) -> None:
    pid = world.needs_human()
    viewer = world.client("vic")
    page = viewer.get(f"/payments/{pid}").text
    assert "needs a human" in page and 'action="/payments/' not in page  # no form for a viewer
    refused = viewer.post(f"/payments/{pid}/resolve", {"status": "ERROR", "reason": "nothing charged"})
    assert refused.status_code == 403 and "only operators" in refused.text
    operator = world.client("olga")
    forged = operator.post(f"/payments/{pid}/resolve", {"status": "ERROR", "reason": "nothing charged"}, token=False)
    assert forged.status_code == 400 and "CSRF" in forged.text
    assert world.store.get(pid)["needs_human"] == "1"
    done = operator.post(f"/payments/{pid}/resolve", {"status": "ERROR", "reason": "nothing charged at BluePay"})
    assert done.status_code == 200 and f"{pid}: ERROR -&gt; ERROR" in done.text and "by console:olga" in done.text
    record = world.store.get(pid)
    assert record.get("needs_human") != "1" and record["resolved_by"] == "console:olga"
    assert any("console:olga" in e.get("note", "") for e in world.store.audit_of(pid))
    again = operator.post(f"/payments/{pid}/resolve", {"status": "ERROR", "reason": "twice"})
    assert "does not need a human" in again.text
    kept = world.client("vic").get(f"/payments/{pid}").text
    shown = kept[kept.index("Console actions"):]
    assert shown.count("<td>olga</td><td>resolve</td>") == 2 and "does not need a human" in shown
    assert pid in world.client("vic").get("/actions").text


def test_a_resolution_the_kept_report_contradicts_is_refused(world) -> None:
    pid = world.needs_human("6.00")
    world.sb.book("6.00", order_id=pid)  # the gateway charged it
    operator = world.client("olga")
    ran = operator.post("/reconciliation/run", {"day": TODAY})
    assert ran.status_code == 200 and f"{TODAY} reconciled by olga" in ran.text and pid in ran.text
    assert TODAY in operator.get("/reconciliation").text
    refused = operator.post(f"/payments/{pid}/resolve", {"status": "ERROR", "reason": "nothing charged"})
    assert "refused: it would contradict the gateway&#39;s report of" in refused.text
    assert world.store.get(pid)["needs_human"] == "1"
    assert "the gateway&#39;s report of" in operator.get(f"/payments/{pid}").text


def test_an_operator_runs_the_sweep_for_one_unknown_payment(world) -> None:
    pid = "op-" + uuid.uuid4().hex[:12]
    world.store.claim(pid, "sale", owner="w1", lease_seconds=30, fields={"amount": "3.00", "order_id": pid})
    world.store.transition(pid, "UNKNOWN", expect={"PENDING"}, owner="w1", sent=True)
    charged = world.sb.book("3.00", order_id=pid)  # what the lost reply said
    time.sleep(1.2)  # older than RECONCILE_AFTER (1 s)
    token = world.store.locks.acquire("sweep", ttl_seconds=30)  # a sweep is running: this one waits its turn
    try:
        busy = world.client("olga").post(f"/payments/{pid}/sweep", {})
        assert "a sweep is running" in busy.text and world.store.get(pid)["status"] == "UNKNOWN"
    finally:
        world.store.locks.release("sweep", token)
    done = world.client("olga").post(f"/payments/{pid}/sweep", {})
    assert done.status_code == 200 and "reconcile_adopted=1" in done.text and "by olga" in done.text
    record = world.store.get(pid)
    assert record["status"] == "APPROVED" and record["trans_id"] == charged["id"]
    page = world.client("vic").get(f"/payments/{pid}").text
    lookups = page[page.index("stq lookups"):page.index("Follow-ups and chain")]
    assert "adopted from stq" in lookups and "settled by: stq" in lookups
    assert "nothing was due" in world.client("olga").post(f"/payments/{pid}/sweep", {}).text
    assert world.client("vic").post(f"/payments/{pid}/sweep", {}).status_code == 403


def test_the_story_shows_the_webhook_deliveries_of_the_payments_events(world) -> None:
    from tests.support.ports import closed_port
    from worker.webhooks.deliverer import Deliverer
    from worker.webhooks.endpoints import Endpoints
    from worker.webhooks.keys import WebhookKeys
    from worker.webhooks.settings import WebhookSettings

    client, prefix = world.store.redis, world.store.prefix
    endpoint, _secret = Endpoints(client, WebhookKeys(prefix)).add(f"http://127.0.0.1:{closed_port()}/hook",
                                                                   now=world.store.now())
    pid = "hook-" + uuid.uuid4().hex[:10]
    assert world.flow.charge("sale", pid, amount="3.00", card=CARD)["status"] == "APPROVED"
    Deliverer(client, WebhookSettings(timeout=1.0), prefix=prefix).drain(seconds=5)  # refused: due again later
    page = world.client("vic").get(f"/payments/{pid}").text
    section = page[page.index("Webhook deliveries"):]
    row = section[:section.index("</table>")]
    assert endpoint.id in row and "pending" in row and "<td>1</td>" in row


def test_actions_are_rate_limited_per_user(world) -> None:
    rita = world.client("rita")
    codes = [rita.post("/payments/no-such/sweep", {}, allow_redirects=False).status_code for _ in range(31)]
    assert codes[:30] == [303] * 30 and codes[30] == 429
    other = world.client("olga").post("/payments/no-such/sweep", {}, allow_redirects=False)
    assert other.status_code == 303  # another user's budget


def test_the_trusted_proxy_header_is_off_by_default_and_believed_only_when_set(world, tmp_path) -> None:
    plain = world.client()
    assert plain.get("/", headers={"X-Remote-User": "olga"}, allow_redirects=False).status_code == 302
    env = dict(world.env, CONSOLE_TRUSTED_HEADER="X-Remote-User", CONSOLE_LOGIN_RATE="3/minute")
    with running_console(env, tmp_path, users={"vic": USERS["vic"]}) as (url, _log):
        c = ConsoleClient(url, world.served)
        assert c.get("/", allow_redirects=False).status_code == 302  # no header: the login form still guards
        page = c.get("/", headers={"X-Remote-User": "vic"})
        assert page.status_code == 200 and "vic (viewer)" in page.text
        stranger = c.get("/", headers={"X-Remote-User": "sam"})
        assert "sam (viewer)" in stranger.text  # known to the proxy, not to us: a viewer
        pid = world.needs_human()
        assert c.post(f"/payments/{pid}/sweep", {}, headers={"X-Remote-User": "sam"}).status_code == 403
        # (this console's own limits) failed logins are throttled: after 3, even the right password waits
        assert [c.login("vic", "wrong-password").status_code for _ in range(3)] == [401] * 3
        assert c.login("vic").status_code == 429


def test_the_health_probe_says_503_when_redis_cannot_be_reached(world, tmp_path) -> None:
    from tests.support.console import start_console
    from tests.support.ports import closed_port

    env = dict(world.env, REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0")
    with start_console(env, tmp_path, users={}) as url:
        reply = requests.get(url + "/healthz", timeout=10)
        assert reply.status_code == 503 and reply.text == "redis unreachable\n"


def test_adduser_reads_the_password_from_standard_input_and_keeps_only_its_hash(tmp_path) -> None:
    env = dict(os.environ, CONSOLE_USERS_FILE=str(tmp_path / "users.json"))
    done = subprocess.run([sys.executable, "-m", "worker.cli", "console", "adduser", "ann", "operator"],
                          input="a-long-password\n", cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    kept = json.loads((tmp_path / "users.json").read_text())["users"]["ann"]
    assert kept["role"] == "operator" and kept["password"].startswith("$argon2id$")
    assert "a-long-password" not in (tmp_path / "users.json").read_text()
    assert oct((tmp_path / "users.json").stat().st_mode & 0o777) == "0o600"
    bad = subprocess.run([sys.executable, "-m", "worker.cli", "console", "adduser", "ann", "admin"],
                         input="a-long-password\n", cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "viewer|operator" in bad.stderr


def test_zz_no_page_served_shows_a_card_number_or_the_cvv2(world) -> None:
    assert len(world.served) > 30
    hits = [hit for path, text in world.served for hit in scan_text(text, cvv2=CARD["cvv2"], where=path)]
    assert hits == []
