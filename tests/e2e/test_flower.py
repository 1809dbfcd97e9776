"""Flower next to a real worker: it shows the payment tasks and their own status, never the card, never runs open
and never controls anything, wherever it is started.

A real ``celery -A worker flower`` is started from a directory outside the repository (no flowerconfig.py there:
what locks it comes from the package, worker/ops/flower.py) on a free port, against the e2e Redis, with
FLOWER_BASIC_AUTH and FLOWER_READ_ONLY=false (which must not open it up); payments then run through the session's
worker. ``payments flower`` and Flower started in the repository are tested too, and the pages are read in headless
Chromium (Playwright, the distribution's /usr/bin/chromium; those tests skip, saying so, without either).
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tasks import sale, void
from tests.support.card_scan import scan_text
from tests.support.env import CUSTOMER, E2E_REDIS_URL, TEST_CARD
from tests.support.flower import AUTH, ROOT, payments_cmd, start_flower, stop_process, wait_until
from tests.support.flower import flower_env as support_flower_env
from tests.support.ports import free_port

MASKED = "xxxxxxxxxxxx1111"
FRACTION = re.compile(r"(?<=\d\.)\d+")
HEX_DIGEST = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{32,}\b")
TIMEOUT = 30


def scannable(text: str) -> str:
    """Blank what card_scan would take for a card number by chance: the fractional digits of decimals
    (Flower shows runtimes such as 0.00585255199985113) and hex digests mixing letters and digits (the
    ?v=<sha512> of Flower's static files). Neither can hold a card number; everything else is scanned."""
    text = FRACTION.sub(lambda m: "#" * len(m.group()), text)
    return HEX_DIGEST.sub(lambda m: "#" * len(m.group()), text)


def flower_env(**extra) -> dict:
    return support_flower_env(E2E_REDIS_URL, **extra)


class Flower:
    def __init__(self, url, proc, log_path):
        self.url, self.proc, self.log_path = url, proc, log_path
        self.seen: list[tuple[str, str]] = []  # every response body read, for the card scan

    def get(self, path, *, auth=AUTH, **params):
        r = requests.get(self.url + path, auth=auth, params=params or None, timeout=30, allow_redirects=False)
        self.seen.append((path, r.text))
        return r

    def json(self, path, **params):
        r = self.get(path, **params)
        assert r.status_code == 200, (path, r.status_code, r.text[:500])
        return r.json()


def wait_for_flower(proc, url: str, log_path) -> None:
    """Until Flower answers its health check (its log shown if it exits first)."""
    def up():
        assert proc.poll() is None, log_path.read_text()
        try:
            return requests.get(url + "/healthcheck", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(up, 30, "flower to answer")


@pytest.fixture(scope="module")
def flower(celery_worker, tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("flower") / "flower.log"
    # FLOWER_READ_ONLY=false: an operator's setting must not turn the package's read-only mode off
    proc = start_flower(port, flower_env(FLOWER_BASIC_AUTH=":".join(AUTH), FLOWER_READ_ONLY="false"), log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_flower(proc, url, log_path)
        handle = Flower(url, proc, log_path)
        # Flower only knows the events it received: wait until its event receiver has heard a worker's
        # heartbeat (status=1 answers from the events state) before running payments.
        def hears_a_worker():
            r = handle.get("/api/workers", status="1")
            return r.status_code == 200 and any(r.json().values())

        wait_until(hears_a_worker, 30, "flower to hear a worker's events", interval=0.5)
        yield handle
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def payments_run(flower):
    """A few payments, run after Flower is listening: keyword and positional sales, a chain with a void, a declined
    sale (even dollars decline in TEST mode) and an ERROR (an idempotency key re-sent with another amount)."""
    kw_sale = sale.delay(amount="3.00", card=TEST_CARD, customer=CUSTOMER)
    positional = sale.delay("5.00", TEST_CARD, CUSTOMER)
    chain = (sale.s(amount="7.00", card=TEST_CARD, customer=CUSTOMER) | void.s()).delay()
    declined = sale.delay(amount="4.00", card=TEST_CARD, customer=CUSTOMER)
    key = f"flower-error-{time.time_ns()}"
    first = sale.delay(amount="9.00", card=TEST_CARD, customer=CUSTOMER, idempotency_key=key)
    first.get(timeout=TIMEOUT)
    mismatch = sale.delay(amount="11.00", card=TEST_CARD, customer=CUSTOMER, idempotency_key=key)
    outcomes = {
        "kw_sale": (kw_sale.id, kw_sale.get(timeout=TIMEOUT)),
        "positional": (positional.id, positional.get(timeout=TIMEOUT)),
        "chain_sale": (chain.parent.id, chain.parent.get(timeout=TIMEOUT)),
        "chain_void": (chain.id, chain.get(timeout=TIMEOUT)),
        "declined": (declined.id, declined.get(timeout=TIMEOUT)),
        "error": (mismatch.id, mismatch.get(timeout=TIMEOUT)),
    }
    assert outcomes["declined"][1]["status"] == "DECLINED"
    assert outcomes["error"][1]["status"] == "ERROR"
    ids = [task_id for task_id, _ in outcomes.values()]

    def all_done():
        tasks = flower.json("/api/tasks")
        return tasks if all(tasks.get(i, {}).get("state") == "SUCCESS" for i in ids) else None

    wait_until(all_done, TIMEOUT, "flower to see every task succeed")
    return outcomes


APPROVED = ("kw_sale", "positional", "chain_sale", "chain_void")


def test_tasks_appear_with_their_names_states_and_results(flower, payments_run):
    tasks = flower.json("/api/tasks")
    for key, (task_id, outcome) in payments_run.items():
        task = tasks[task_id]
        assert task["state"] == "SUCCESS"  # the API keeps Celery's own state
        assert task["name"] == ("payments.void" if key == "chain_void" else "payments.sale")
        assert outcome["status"] == ("APPROVED" if key in APPROVED else key.upper())
    info = flower.json(f"/api/task/info/{payments_run['kw_sale'][0]}")
    assert info["name"] == "payments.sale" and info["state"] == "SUCCESS"
    assert "APPROVED" in info["result"] and payments_run["kw_sale"][1]["trans_id"] in info["result"]
    void_info = flower.json(f"/api/task/info/{payments_run['chain_void'][0]}")
    assert void_info["parent_id"] == payments_run["chain_sale"][0] or void_info.get("root_id")
    assert "Approved Void" in void_info["result"]
    result = flower.json(f"/api/task/result/{payments_run['kw_sale'][0]}")
    assert result["state"] == "SUCCESS" and result["result"]["masked_account"] == MASKED
    by_name = flower.json("/api/tasks", taskname="payments.sale")
    assert {payments_run[k][0] for k in ("kw_sale", "positional", "chain_sale")} <= set(by_name)


def test_task_arguments_are_masked(flower, payments_run):
    for key in ("kw_sale", "positional", "chain_sale"):
        info = flower.json(f"/api/task/info/{payments_run[key][0]}")
        shown = info["args"] + " " + info["kwargs"]
        assert MASKED in shown, (key, shown)
        assert "sealed" not in shown and "gAAAA" not in shown  # not even the encrypted form is shown
    kw = flower.json(f"/api/task/info/{payments_run['kw_sale'][0]}")
    assert "3.00" in kw["kwargs"] and "Testville" in kw["kwargs"]
    positional = flower.json(f"/api/task/info/{payments_run['positional'][0]}")
    assert "5.00" in positional["args"]


def test_no_card_number_or_cvv2_in_any_flower_response_or_its_log(flower, payments_run):
    ids = [task_id for task_id, _ in payments_run.values()]
    workers = flower.json("/api/workers", refresh="1")
    assert workers and all("stats" in w for w in workers.values())
    pages = ["/api/tasks", "/api/workers", "/tasks", "/api/task/types", "/metrics", "/workers", "/broker"]
    pages += [f"/api/task/info/{i}" for i in ids] + [f"/api/task/result/{i}" for i in ids]
    pages += [f"/task/{i}" for i in ids]
    for path in pages:
        r = flower.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
    # what the /tasks page shows: its table rows, loaded by the page from /tasks/datatable
    table = flower.json("/tasks/datatable", draw=1, start=0, length=1000, **{
        "search[value]": "", "order[0][column]": 0, "columns[0][data]": "received", "order[0][dir]": "desc"})
    rows = {row["uuid"]: row for row in table["data"]}
    assert set(ids) <= set(rows)
    assert MASKED in rows[payments_run["kw_sale"][0]]["kwargs"]
    hits = []
    for path, text in flower.seen:
        hits += scan_text(scannable(text), cvv2=TEST_CARD["cvv2"], where=f"flower {path}")
    hits += scan_text(scannable(flower.log_path.read_text()), cvv2=TEST_CARD["cvv2"], where="flower log")
    assert hits == []
    assert any(MASKED in text for path, text in flower.seen if path.startswith("/task/"))


@pytest.mark.parametrize("path", ["/api/tasks", "/api/workers", "/tasks", "/", "/api/task/info/x",
                                  "/api/task/result/x", "/broker"])
def test_requests_without_or_with_wrong_credentials_get_401(flower, path):
    assert flower.get(path, auth=None).status_code == 401
    assert flower.get(path, auth=(AUTH[0], "wrong")).status_code == 401


@pytest.mark.parametrize("endpoint", ["task/send-task/payments.sale", "task/async-apply/payments.sale",
                                      "task/apply/payments.sale"])
def test_no_payment_can_be_sent_through_flower(flower, sandbox, endpoint):
    """Flower is for monitoring. Its send-task API publishes with Celery.send_task, which bypasses the
    encrypting publish path: a card sent that way sat in clear in the broker, the events and Flower itself."""
    body = json.dumps({"kwargs": {"amount": "3.00", "card": TEST_CARD}})
    url = f"{flower.url}/api/{endpoint}"
    before = len(sandbox.ledger())
    assert requests.post(url, data=body, timeout=10).status_code == 401
    r = requests.post(url, data=body, auth=AUTH, timeout=10)
    assert r.status_code == 403, (r.status_code, r.text[:300])
    time.sleep(0.5)
    assert len(sandbox.ledger()) == before
    tasks = flower.json("/api/tasks")
    hits = scan_text(scannable(json.dumps(tasks)), cvv2=TEST_CARD["cvv2"], where="flower /api/tasks")
    assert hits == []


CONTROL = [  # every endpoint that changes something, as Flower's UI and API call them (POST)
    "task/revoke/{task}", "task/revoke/{task}?terminate=true&signal=SIGKILL", "task/abort/{task}",
    "task/rate-limit/payments.sale?ratelimit=1/m&workername={worker}", "task/timeout/payments.sale?soft=1&hard=2"
    "&workername={worker}", "worker/pool/restart/{worker}", "worker/pool/grow/{worker}?n=1",
    "worker/pool/shrink/{worker}?n=1", "worker/pool/autoscale/{worker}?min=1&max=2",
    "worker/queue/add-consumer/{worker}?queue=elsewhere", "worker/queue/cancel-consumer/{worker}?queue=payments",
    "worker/shutdown/{worker}",
]


@pytest.mark.parametrize("endpoint", CONTROL)
def test_authenticated_users_cannot_revoke_terminate_or_control_workers(flower, payments_run, celery_worker,
                                                                      endpoint):
    """Read-only comes from the package, whatever Flower's own options say (the fixture sets FLOWER_READ_ONLY=false):
    before, an authenticated revoke answered 200."""
    worker = next(iter(flower.json("/api/workers", status="1")))
    url = f"{flower.url}/api/" + endpoint.format(task=payments_run["kw_sale"][0], worker=worker)
    assert requests.post(url, timeout=10).status_code == 401
    r = requests.post(url, auth=AUTH, timeout=10)
    assert r.status_code == 403, (endpoint, r.status_code, r.text[:300])
    assert "Read only" in r.text
    assert celery_worker.poll() is None
    assert worker in flower.json("/api/workers", status="1")


def datatable_rows(flower) -> dict:
    table = flower.json("/tasks/datatable", draw=1, start=0, length=1000, **{
        "search[value]": "", "order[0][column]": 0, "columns[0][data]": "received", "order[0][dir]": "desc"})
    return {row["uuid"]: row for row in table["data"]}


def test_the_pages_show_each_payments_own_status_and_a_masked_summary(flower, payments_run):
    rows = datatable_rows(flower)
    declined, error = rows[payments_run["declined"][0]], rows[payments_run["error"][0]]
    assert declined["state"] == "DECLINED"
    assert declined["result"].startswith(f"DECLINED · sale 4.00 · {MASKED} · ")
    assert error["state"] == "ERROR"
    assert error["result"].startswith("ERROR · sale · IdempotencyMismatch · idempotency key")
    for key in APPROVED:
        row = rows[payments_run[key][0]]
        assert row["state"] == "SUCCESS" and row["result"].startswith("APPROVED · "), (key, row)
    page = flower.get(f"/task/{payments_run['declined'][0]}")
    assert page.status_code == 200 and ">DECLINED</span>" in page.text
    assert "DECLINED · sale 4.00" in page.text
    tasks_page = flower.get("/tasks")
    assert 'data-column="result"' in tasks_page.text  # the Result column is on by default
    hits = scan_text(scannable(json.dumps(rows) + page.text), cvv2=TEST_CARD["cvv2"], where="flower pages")
    assert hits == []


def wait_for_exit(proc, log_path, port):
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        raise AssertionError("flower kept running without authentication") from None
    assert code != 0
    assert "refusing to start without authentication: set FLOWER_BASIC_AUTH" in log_path.read_text()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/api/tasks", timeout=2)


@pytest.mark.parametrize("where", ["elsewhere", "repository"])
@pytest.mark.parametrize("auth_env", [{}, {"FLOWER_BASIC_AUTH": ""}, {"FLOWER_BASIC_AUTH": "operator:"},
                                      {"FLOWER_AUTH": ".*@example\\.com"}], ids=["unset", "empty", "no-password",
                                                                                "oauth-without-provider"])
def test_flower_refuses_to_start_without_authentication(celery_worker, tmp_path, auth_env, where):
    port = free_port()
    log_path = tmp_path / "flower-open.log"
    proc = start_flower(port, flower_env(**auth_env), log_path, cwd=ROOT if where == "repository" else tmp_path)
    wait_for_exit(proc, log_path, port)


def test_payments_flower_refuses_without_authentication(celery_worker, tmp_path):
    port = free_port()
    log_path = tmp_path / "payments-flower-open.log"
    proc = start_flower(port, flower_env(), log_path, command=[*payments_cmd(), "flower"])
    wait_for_exit(proc, log_path, port)


@pytest.mark.parametrize("how", ["payments flower, FLOWER_BASIC_AUTH", "celery flower --basic-auth"])
def test_flower_elsewhere_is_locked_and_read_only_even_when_asked_otherwise(celery_worker, tmp_path, how):
    """The issue's case: ``celery -A worker flower --basic-auth=...`` outside the repository answered an
    authenticated revoke with 200."""
    port = free_port()
    log_path = tmp_path / "flower-elsewhere.log"
    if how.startswith("payments"):
        proc = start_flower(port, flower_env(FLOWER_BASIC_AUTH=":".join(AUTH)), log_path,
                            command=[*payments_cmd(), "flower"], extra_args=("--read_only=False",))
    else:
        proc = start_flower(port, flower_env(), log_path,
                            extra_args=(f"--basic-auth={':'.join(AUTH)}", "--read_only=False"))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_flower(proc, url, log_path)
        assert requests.get(url + "/api/tasks", timeout=10).status_code == 401
        assert requests.get(url + "/api/tasks", auth=AUTH, timeout=10).status_code == 200
        r = requests.post(url + "/api/task/revoke/any-id?terminate=true", auth=AUTH, timeout=10)
        assert r.status_code == 403, (r.status_code, r.text[:300])
    finally:
        stop_process(proc)


# ---------------------------------------------------------------------------------------------- in a real browser
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Chromium not installed (apt-get install chromium): the browser tests need /usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (the dev extra has it)")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.mark.parametrize("credentials", [None, {"username": AUTH[0], "password": "wrong"}], ids=["none", "wrong"])
def test_the_browser_sees_nothing_without_credentials(flower, browser, credentials):
    from playwright.sync_api import Error as PlaywrightError

    context = browser.new_context(http_credentials=credentials)
    try:
        page = context.new_page()
        try:
            response = page.goto(flower.url + "/tasks")
        except PlaywrightError as exc:  # Chromium gives up on a 401 it has no (right) credentials for
            assert "ERR_INVALID_AUTH_CREDENTIALS" in str(exc)
        else:
            assert response is not None and response.status == 401
            assert "payments.sale" not in page.content()
    finally:
        context.close()


def test_the_tasks_page_in_chromium_shows_declined_and_error_payments_masked_and_no_controls(flower, payments_run,
                                                                                            browser):
    context = browser.new_context(http_credentials={"username": AUTH[0], "password": AUTH[1]})
    try:
        page = context.new_page()
        page.goto(flower.url + "/tasks")
        declined_id, error_id = payments_run["declined"][0], payments_run["error"][0]
        # the table's rows are loaded by the page's own script from /tasks/datatable
        declined_row = page.locator("tr", has=page.locator(f'a[href$="/task/{declined_id}"]'))
        declined_row.wait_for(timeout=30_000)
        assert declined_row.locator(".badge").inner_text() == "DECLINED"
        assert f"DECLINED · sale 4.00 · {MASKED}" in declined_row.inner_text()
        error_row = page.locator("tr", has=page.locator(f'a[href$="/task/{error_id}"]'))
        assert error_row.locator(".badge").inner_text() == "ERROR"
        approved_row = page.locator("tr", has=page.locator(f'a[href$="/task/{payments_run["kw_sale"][0]}"]'))
        assert approved_row.locator(".badge").inner_text() == "SUCCESS"
        assert "APPROVED · sale 3.00" in approved_row.inner_text()
        shown = page.content()

        page.goto(f"{flower.url}/task/{declined_id}")
        assert page.locator(".badge", has_text="DECLINED").count() >= 1
        assert page.locator("#task-revoke, #task-terminate").count() == 0
        shown += page.content()
        # the page's own script cannot revoke either (same origin, credentials cached by the browser)
        status = page.evaluate("""async (id) => (await fetch('/api/task/revoke/' + id + '?terminate=true',
                                                              {method: 'POST'})).status""", declined_id)
        assert status == 403
        page.goto(flower.url + "/workers")
        shown += page.content()
    finally:
        context.close()
    assert scan_text(scannable(shown), cvv2=TEST_CARD["cvv2"], where="chromium") == []
