"""The operator console in a real browser: Chromium (the distribution's /usr/bin/chromium) driven by Playwright, a
real ``payments console``, real celery workers and the sandbox. A person logs in, finds a payment by its key, reads
its story, resolves a needs-human payment as an operator, is refused as a viewer and without the CSRF token; every
page the browser was served is scanned for card data. ``CONSOLE_SCREENSHOTS=1`` also writes docs/console/*.png.
"""
from __future__ import annotations

import os
import random
import uuid
from pathlib import Path

import pytest

from tasks import sale
from tests.support.card_scan import scan_text
from tests.support.console import USERS, running_console
from tests.support.env import CUSTOMER, TEST_CARD
from tests.support.workers import worker_env
from worker.store import ResultsStore

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
TIMEOUT = 60


def card_like_key() -> str:
    """A random 16-digit number that passes Luhn: an idempotency key the card rule takes for a card number."""
    digits = [4] + [random.randrange(10) for _ in range(14)]
    total = sum(d if i % 2 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(reversed(digits)))
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


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


@pytest.fixture(scope="module")
def console(celery_worker, sandbox, e2e_redis, tmp_path_factory):
    with running_console(worker_env(sandbox), tmp_path_factory.mktemp("console")) as (url, log_path):
        yield url, log_path


@pytest.fixture(scope="module")
def payments(console, e2e_redis):
    key, card_key = f"order-{uuid.uuid4().hex[:10]}", card_like_key()
    first = sale.delay(amount="3.00", card=TEST_CARD, customer=CUSTOMER, idempotency_key=key)
    second = sale.delay(amount="5.00", card=TEST_CARD, customer=CUSTOMER, idempotency_key=card_key)
    outcomes = {"key": (key, first.get(timeout=TIMEOUT)), "card_key": (card_key, second.get(timeout=TIMEOUT))}
    store = ResultsStore(e2e_redis)
    humans = []
    for amount in ("7.00", "9.00"):  # outcomes that stayed unknown and were handed to a human, as the flow leaves them
        pid = "human-" + uuid.uuid4().hex[:10]
        store.claim(pid, "sale", owner="w1", lease_seconds=30, fields={"amount": amount, "order_id": pid})
        store.transition(pid, "ERROR", expect={"PENDING"}, owner="w1", sent=True,
                         fields={"needs_human": "1", "message": "outcome still unknown: check by hand"})
        humans.append(pid)
    return outcomes, humans, store


class Person:
    """A browser context (its own cookies) that keeps every document it is served."""

    def __init__(self, browser, url: str, served: list[tuple[str, str]]) -> None:
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.url = url
        self.page.on("response", lambda r: served.append((r.url, r.text())) if r.request.resource_type in
                     ("document", "stylesheet") and not 300 <= r.status < 400 else None)

    def log_in(self, name: str) -> None:
        self.page.goto(self.url + "/payments/anything")
        assert "/login" in self.page.url  # every page asks for a login first
        self.page.get_by_label("Username").fill(name)
        self.page.get_by_label("Password").fill(USERS[name][1])
        self.page.get_by_role("button", name="Log in").click()
        assert self.page.get_by_text(f"{name} ({USERS[name][0]})").is_visible()

    def search(self, q: str) -> None:
        self.page.get_by_label("Find").fill(q)
        self.page.get_by_role("button", name="Search").click()

    def shot(self, name: str) -> None:
        if os.environ.get("CONSOLE_SCREENSHOTS") == "1":
            SHOTS.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def served():
    return []


def test_an_operator_finds_a_payment_by_key_reads_its_story_and_resolves_one_that_needs_a_human(
        browser, console, payments, served):
    url, _log = console
    outcomes, humans, store = payments
    olga = Person(browser, url, served)
    olga.shot("login") if olga.page.goto(url + "/login") else None
    olga.log_in("olga")
    olga.page.goto(url + "/")
    assert olga.page.get_by_text("Needs a human").first.is_visible()
    olga.shot("overview")
    key, outcome = outcomes["key"]
    olga.search(key)
    assert olga.page.url.endswith(f"/payments/{key}")
    story = olga.page.locator("main").inner_text()
    for shown in ("APPROVED", outcome["trans_id"], "xxxxxxxxxxxx1111", "States", "Attempts", "claimed by", "3.00"):
        assert shown in story, shown
    olga.shot("payment")

    card_key, card_outcome = outcomes["card_key"]
    olga.search(card_key)  # a card-like key is found by its keyed id and never shown in clear
    assert card_outcome["trans_id"] in olga.page.locator("main").inner_text()
    assert card_key not in olga.page.content() and card_key not in olga.page.url

    olga.page.goto(url + f"/payments/{humans[0]}")
    assert olga.page.get_by_text("needs a human").first.is_visible()
    olga.page.get_by_label("Status").select_option("ERROR")
    olga.page.get_by_label("Reason").fill("checked BluePay's console: nothing charged")
    olga.shot("resolve")
    olga.page.get_by_role("button", name="Resolve").click()
    assert f"{humans[0]}: ERROR -> ERROR" in olga.page.get_by_role("status").inner_text()
    assert "by console:olga" in olga.page.locator("main").inner_text()
    record = store.get(humans[0])
    assert record.get("needs_human") != "1" and record["resolved_by"] == "console:olga"
    olga.page.goto(url + "/lists/needs-human")
    assert humans[1] in olga.page.content() and humans[0] not in olga.page.content()
    olga.shot("needs-human")
    olga.context.close()


def test_a_viewer_is_refused_and_a_form_without_its_csrf_token_is_refused(browser, console, payments, served):
    url, _log = console
    _outcomes, humans, store = payments
    vic = Person(browser, url, served)
    vic.log_in("vic")
    vic.page.goto(url + f"/payments/{humans[1]}")
    assert vic.page.get_by_text("Only operators resolve payments.").is_visible()
    assert vic.page.get_by_role("button", name="Resolve").count() == 0
    token = vic.page.locator("input[name=csrf_token]").first.get_attribute("value")
    forced = vic.page.request.post(url + f"/payments/{humans[1]}/resolve",
                                   form={"csrf_token": token, "status": "ERROR", "reason": "not mine to say"})
    assert forced.status == 403 and "only operators may act" in forced.text()
    vic.context.close()

    olga = Person(browser, url, served)
    olga.log_in("olga")
    olga.page.goto(url + f"/payments/{humans[1]}")
    olga.page.locator("form.resolve input[name=csrf_token]").evaluate("input => input.remove()")
    olga.page.get_by_label("Reason").fill("a forged form")
    olga.page.get_by_role("button", name="Resolve").click()
    assert olga.page.get_by_text("The CSRF token is missing").is_visible()
    assert store.get(humans[1])["needs_human"] == "1"
    for path in ("/", "/reconciliation", "/payments", "/lists/unknown", "/actions", "/health"):
        olga.page.goto(url + path)
        assert olga.page.locator("h1").count() == 1
    olga.shot("health")
    olga.context.close()


def test_zz_no_page_the_browser_was_served_shows_a_card_number_or_the_cvv2(browser, served) -> None:
    assert len(served) > 10
    hits = [hit for where, text in served for hit in scan_text(text, cvv2=TEST_CARD["cvv2"], where=where)]
    assert hits == []
