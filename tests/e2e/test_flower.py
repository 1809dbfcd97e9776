"""Flower next to a real worker: it shows the payment tasks, never the card, and never runs open.

A real ``celery -A worker flower`` is started from the repository root (so flowerconfig.py is read) on a
free port, against the e2e Redis, with FLOWER_BASIC_AUTH; payments then run through the session's worker.
"""
from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
import requests

from tasks import sale, void
from tests.support.card_scan import scan_text
from tests.support.env import CUSTOMER, E2E_REDIS_URL, TEST_CARD
from tests.support.flower import AUTH, start_flower, stop_process, wait_until
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


@pytest.fixture(scope="module")
def flower(celery_worker, tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("flower") / "flower.log"
    proc = start_flower(port, flower_env(FLOWER_BASIC_AUTH=":".join(AUTH)), log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        def up():
            assert proc.poll() is None, log_path.read_text()
            try:
                return requests.get(url + "/healthcheck", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(up, 30, "flower to answer")
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
    """A few payments, run after Flower is listening: keyword and positional sales, a chain with a void."""
    kw_sale = sale.delay(amount="3.00", card=TEST_CARD, customer=CUSTOMER)
    positional = sale.delay("5.00", TEST_CARD, CUSTOMER)
    chain = (sale.s(amount="7.00", card=TEST_CARD, customer=CUSTOMER) | void.s()).delay()
    outcomes = {
        "kw_sale": (kw_sale.id, kw_sale.get(timeout=TIMEOUT)),
        "positional": (positional.id, positional.get(timeout=TIMEOUT)),
        "chain_sale": (chain.parent.id, chain.parent.get(timeout=TIMEOUT)),
        "chain_void": (chain.id, chain.get(timeout=TIMEOUT)),
    }
    ids = [task_id for task_id, _ in outcomes.values()]

    def all_done():
        tasks = flower.json("/api/tasks")
        return tasks if all(tasks.get(i, {}).get("state") == "SUCCESS" for i in ids) else None

    wait_until(all_done, TIMEOUT, "flower to see every task succeed")
    return outcomes


def test_tasks_appear_with_their_names_states_and_results(flower, payments_run):
    tasks = flower.json("/api/tasks")
    for key, (task_id, outcome) in payments_run.items():
        task = tasks[task_id]
        assert task["state"] == "SUCCESS"
        assert task["name"] == ("payments.void" if key == "chain_void" else "payments.sale")
        assert outcome["status"] == "APPROVED"
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
        assert "sealed" not in shown and "gAAAA" not in shown  # not even the sealed form is shown
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
    sealing publish path: a card sent that way sat in clear in the broker, the events and Flower itself."""
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


@pytest.mark.parametrize("auth_env", [{}, {"FLOWER_BASIC_AUTH": ""}])
def test_flower_refuses_to_start_without_basic_auth(celery_worker, tmp_path, auth_env):
    port = free_port()
    log_path = tmp_path / "flower-open.log"
    proc = start_flower(port, flower_env(**auth_env), log_path)
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        raise AssertionError("flower kept running without authentication") from None
    assert code != 0
    assert "refusing to start without authentication" in log_path.read_text()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/api/tasks", timeout=2)
