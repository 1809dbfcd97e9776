"""Scenario 6: bad input, generated with hypothesis, through a real worker.

Every example corrupts exactly one thing of a valid call (amount, card number, expiry, CVV2, a customer
field, the idempotency key, the producer's order id, or the arguments themselves; unicode and very long
strings included). Each must come back as a final ERROR outcome naming what was wrong, recorded in the
store, with no request reaching the gateway (the sandbox's request counters do not move); afterwards the
same worker still charges a good payment.

The invalid values are built independently of worker/gateway/validation.py: each strategy below states the
documented rule it breaks.

Card data outside the card (a card number as the amount, a customer field, the idempotency key, a trans id...)
never reaches the broker at all: the producer refuses it (``CardDataRefused`` naming the field, issue 13), so
for those examples that refusal is what is checked. Which examples hold card data is decided here by
:func:`card_like`, written from the documented rule (worker/cards/numbers.py), not by calling it.
"""
from __future__ import annotations

import os
import re
import string
import unicodedata
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.reliability.scenarios import (
    Fleet,
    new_key,
    producer_for,
    producer_tasks,
    services_for,
    settings_for,
    worker_env,
)
from tests.support.env import CUSTOMER, TEST_CARD
from tests.support.sandbox import running_sandbox
from worker.cards.numbers import CardDataRefused
from worker.gateway import InvalidInput
from worker.payments.amounts import AmountRefused

pytestmark = pytest.mark.reliability

CUSTOMER_LIMITS = {"name1": 64, "name2": 64, "addr1": 128, "addr2": 128, "city": 64, "state": 32,
                   "zipcode": 16, "country": 64, "phone": 32, "email": 128, "company_name": 128}
CUSTOMER_KEYS = set(CUSTOMER_LIMITS) | {k.upper() for k in CUSTOMER_LIMITS}
CHARGE_PARAMS = {"amount", "card", "customer", "order_id", "idempotency_key", "token", "customer_token",
                 "new_customer_token", "initiator", "scheduled"}
CONTROL: Final = ("Cc", "Cf", "Zl", "Zp")  # Final: mypy keeps the category names as literals


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


_ESCAPED = re.compile(r"%(?:20|09|2[bBdDeEfF]|5[fF])|\\t")  # separators written as escapes
_DIGIT_RUN = re.compile(r"[0-9]+(?:[ \t\-./_+]{1,12}[0-9]+)*")


def _card_in_text(text: str) -> bool:
    """13-19 ASCII digits passing Luhn: one contiguous group, or consecutive groups of 3-6 digits joined by
    separator runs (1-12 of space, tab, - . / _ +, their %-escapes, a written \\t); a group of 7+ digits right
    after "<digit>." (a fraction) is not read; UUIDs and 32+ hex tokens are identifiers (issue 25's rule)."""
    text = re.sub(r"(?<![0-9A-Za-z])(?:[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}|"
                  r"(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{32,})(?![0-9A-Za-z])", lambda m: "#" * len(m.group()), text)
    text = _ESCAPED.sub(lambda m: " " * len(m.group()), text)
    for m in _DIGIT_RUN.finditer(text):
        groups = [g for g in re.finditer(r"[0-9]+", m.group())
                  if not (len(g.group()) > 6 and m.start() + g.start() >= 2 and text[m.start() + g.start() - 1] == "."
                          and text[m.start() + g.start() - 2].isdigit())]
        digits_of = [g.group() for g in groups]
        for i in range(len(digits_of)):
            for j in range(i, len(digits_of)):
                part = digits_of[i:j + 1]
                if len(part) > 1 and not all(3 <= len(g) <= 6 for g in part):
                    break
                digits = "".join(part)
                if 13 <= len(digits) <= 19 and luhn(digits):
                    return True
    return False


IDENTIFIERS = ("order_id", "idempotency_key")


def card_like(value, name: str = "") -> bool:
    """Whether ``value`` (an argument other than the card) is card data the producer refuses: any string, number
    or key in it, except an identifier's (``order_id``, ``idempotency_key``: encrypted instead, issue 25)."""
    if value is None or isinstance(value, bool):
        return False
    if name in IDENTIFIERS and isinstance(value, (str, int)):
        return False
    if isinstance(value, dict):
        return any(_card_in_text(str(k)) or card_like(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(card_like(v) for v in value)
    return _card_in_text(str(value))


def card_data_outside_the_card(task: str, args, kwargs) -> bool:
    charge_names = ("amount", "card", "customer", "order_id", "idempotency_key", "token", "customer_token",
                    "new_customer_token", "initiator", "scheduled")
    names = {"sale": charge_names, "auth": charge_names,
             "capture": ("trans_id", "amount", "idempotency_key"), "refund": ("trans_id", "amount", "idempotency_key"),
             "void": ("trans_id", "idempotency_key")}[task]
    charge = task in ("sale", "auth")
    positional = [(names[i] if i < len(names) else "", v) for i, v in enumerate(args) if not (charge and i == 1)]
    keyword = [(k, v) for k, v in kwargs.items() if not (charge and k == "card")]
    return any(_card_in_text(str(name)) or card_like(v, name) for name, v in positional + keyword)


def publish_or_refused(task, name, args, kwargs, what, sandbox):
    """Publish the call; when it holds card data outside the card, check that the producer refused it instead
    (naming the field, never the value) and nothing reached the gateway. Returns the AsyncResult or None."""
    expected = card_data_outside_the_card(name, args, kwargs)
    before = gateway_requests(sandbox)
    try:
        result = task.apply_async(args=args, kwargs=kwargs)
    except AmountRefused as exc:
        event("refused at the producer: an int or float amount (dollars or cents?)")
        amount = kwargs.get("amount", args[0] if name in ("sale", "auth") and args else None)
        assert what == "amount" and exc.field == "amount", (exc.field, what)
        assert isinstance(amount, (int, float)), amount  # only those are refused at delay(); the rest is recorded
        assert gateway_requests(sandbox) == before
        return None
    except InvalidInput as exc:  # the idempotency key's rule is applied at the producer too (issue 24)
        event("refused at the producer: idempotency key")
        assert what == "idempotency_key" and exc.field == "idempotency_key", (exc.field, what)
        assert not visible_ascii_key(kwargs.get("idempotency_key"))
        assert gateway_requests(sandbox) == before
        return None
    except CardDataRefused as exc:
        event("refused at the producer: card data outside the card")
        assert expected, f"refused {exc.field!r}, but nothing there is card data"
        assert exc.field and (what in ("arguments", "sale_outcome") or exc.field.startswith(what.split(".")[0])), \
            (exc.field, what)
        assert "4111111111111111" not in str(exc)
        assert gateway_requests(sandbox) == before
        return None
    assert not expected, "card data outside the card was published"
    return result


def visible_ascii_key(value) -> bool:
    """The documented key rule (README): 1-100 visible ASCII characters, no space, no control character."""
    return isinstance(value, str) and 1 <= len(value) <= 100 and all(0x21 <= ord(c) <= 0x7e for c in value)


def amount_ok(value, allow_zero=False) -> bool:
    """The documented amount rule: a str/Decimal/int (no float, no bool), <= 2 decimals, 0 < x <= 99999.99
    (0 allowed for an AUTH: a card check)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return False
    text = value.strip() if isinstance(value, str) else str(value)
    if not re.fullmatch(r"[0-9]+(\.[0-9]{1,2})?", text) and not isinstance(value, int):
        return False
    try:
        return (Decimal("0") <= Decimal(text) if allow_zero else Decimal("0") < Decimal(text)) and \
            Decimal(text) <= Decimal("99999.99")
    except InvalidOperation:
        return False


def number_ok(value: str) -> bool:
    n = re.sub(r"[ \-]", "", value.strip())
    return bool(re.fullmatch(r"[0-9]{12,19}", n)) and luhn(n)


def expire_ok(value: str) -> bool:
    m = re.fullmatch(r"([0-9]{2})/?([0-9]{2})", value.strip())
    if not m or not 1 <= int(m.group(1)) <= 12:
        return False
    today = date.today()
    return (2000 + int(m.group(2)), int(m.group(1))) >= (today.year, today.month)


def cvv2_ok(value: str) -> bool:
    return bool(re.fullmatch(r"[0-9]{3,4}", value.strip()))


def printable_ascii(value: str, limit: int) -> bool:
    return 1 <= len(value) <= limit and all(" " <= c <= "~" for c in value)


text_any = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)  # a list: mypy misreads a 1-tuple
json_junk = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False),
                      st.lists(st.integers(), max_size=3),
                      st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))

bad_amounts = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),  # floats are refused outright
    st.integers(max_value=0), st.integers(min_value=100_000, max_value=10**30),
    text_any.filter(lambda t: not amount_ok(t)),
    st.from_regex(r"\A-?[0-9]{1,5}\.[0-9]{3,6}\Z"),  # three decimals or more
    st.from_regex(r"\A[0-9]{13,19}\Z"),  # a card number where the amount goes
    st.sampled_from(["4111111111111111", "３.００", "1e3", "0x10", "1,000.00", "$3.00", " ", "", "NaN", "-3.00",
                     "100000.00", "0.00", "3.001", "٣.٠٠"]),
    json_junk.filter(lambda v: not amount_ok(v)),
)
bad_numbers = st.one_of(
    st.from_regex(r"\A[0-9]{12,19}\Z").filter(lambda n: not luhn(n)),  # fails Luhn
    st.from_regex(r"\A[0-9]{1,11}\Z"), st.from_regex(r"\A[0-9]{20,40}\Z"),  # too short, too long
    text_any.filter(lambda t: t != "" and not number_ok(t)),  # letters, unicode digits, punctuation
    st.sampled_from(["4111 1111 1111 1112", "4111-1111-1111-111x", "٤١١١١١١١١١١١١١١١",
                     "４１１１１１１１１１１１１１１１"]),
)
bad_expiries = st.one_of(
    st.from_regex(r"\A(00|1[3-9]|[2-9][0-9])[0-9]{2}\Z"),  # month 00 or > 12
    st.sampled_from(["0120", "1224", "0125", "12/2030", "1-30", "13/30", "abcd", "１２３０", "123", "12345"]),
    text_any.filter(lambda t: t != "" and not expire_ok(t)),
)
bad_cvv2s = st.one_of(
    st.from_regex(r"\A[0-9]{1,2}\Z"), st.from_regex(r"\A[0-9]{5,9}\Z"),
    st.sampled_from(["12a", "abc", "١٢٣", "７３９１", " ", "73 91"]),
    text_any.filter(lambda t: t != "" and not cvv2_ok(t)),
)


def customer_value_too_long(key):
    limit = CUSTOMER_LIMITS[key]
    body = st.characters(blacklist_categories=("Cs", "Zs", "Cc", "Cf", "Zl", "Zp"))
    return st.one_of(
        st.text(body, min_size=limit + 1, max_size=limit + 40),
        st.integers(limit + 1, 20_000).map(lambda n: "Ødegård-" * (n // 8 + 1)),  # unicode, up to ~20 kB
    ).filter(lambda t: len(t.strip()) > limit)


def with_control_char(draw_text, ch):
    return draw_text[: len(draw_text) // 2] + ch + draw_text[len(draw_text) // 2:]


@st.composite
def bad_customer(draw):
    kind = draw(st.sampled_from(["not a mapping", "unknown key", "not a string", "control", "too long"]))
    key = draw(st.sampled_from(sorted(CUSTOMER_LIMITS)))
    if kind == "not a mapping":
        return draw(st.one_of(text_any, st.lists(text_any, max_size=3), st.integers(), st.booleans())), "customer"
    if kind == "unknown key":
        bad_key = draw(st.one_of(st.text(min_size=1, max_size=30), st.sampled_from(["4111111111111111", "cvv2"]))
                       .filter(lambda k: k not in CUSTOMER_KEYS))
        return {**CUSTOMER, bad_key: "x"}, "customer"
    if kind == "not a string":
        return {**CUSTOMER, key: draw(st.one_of(st.integers(), st.booleans(), st.floats(allow_nan=False),
                                                 st.lists(st.integers(), max_size=2)))}, f"customer.{key}"
    if kind == "control":
        ch = draw(st.characters(whitelist_categories=CONTROL))
        return {**CUSTOMER, key: with_control_char(draw(st.text(max_size=20)), ch)}, f"customer.{key}"
    return {**CUSTOMER, key: draw(customer_value_too_long(key))}, f"customer.{key}"


@st.composite
def bad_call(draw):
    """(task name, args, kwargs, what the ERROR message must name)."""
    task = draw(st.sampled_from(["sale", "auth"]))
    kwargs: dict[str, Any] = {"amount": "3.00", "card": dict(TEST_CARD), "customer": dict(CUSTOMER)}
    what = draw(st.sampled_from(["amount", "card.number", "card.expire", "card.cvv2", "card", "customer",
                                 "idempotency_key", "order_id", "arguments"]))
    args: list = []
    if what == "amount":
        kwargs["amount"] = draw(bad_amounts)
        if amount_ok(kwargs["amount"], allow_zero=True):
            task = "sale"  # a zero AUTH is a card check, and valid
    elif what == "card.number":
        kwargs["card"]["number"] = draw(bad_numbers)
    elif what == "card.expire":
        kwargs["card"]["expire"] = draw(bad_expiries)
    elif what == "card.cvv2":
        kwargs["card"]["cvv2"] = draw(bad_cvv2s)
    elif what == "card":  # not a mapping at all
        kwargs["card"] = draw(st.one_of(st.lists(text_any, max_size=2), st.integers(), st.booleans(), st.none(),
                                        st.sampled_from(["4111111111111112", "card"])))
    elif what == "customer":
        kwargs["customer"], what = draw(bad_customer())
    elif what == "idempotency_key":
        kwargs["idempotency_key"] = draw(st.one_of(
            st.sampled_from(["", "   ", "000000000000x" * 8]),  # (card-like and int keys are accepted: issue 25)
            st.lists(st.text(max_size=3), max_size=2),
            st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=101, max_size=300),
            st.text(min_size=1, max_size=60).filter(lambda t: not printable_ascii(t, 100) and t.strip()),
        ))
    elif what == "order_id":  # the producer's own order reference (sent as INVOICE_ID)
        kwargs["order_id"] = draw(st.one_of(
            st.just(""), st.booleans(), st.lists(st.integers(), max_size=2),  # (an int is an order id: issue 25)
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), min_size=65, max_size=200),
            st.text(min_size=1, max_size=40).filter(lambda t: not printable_ascii(t, 64)),
        ))
    else:  # missing, extra, doubled or too many arguments
        form = draw(st.sampled_from(["missing amount", "missing card", "extra", "too many", "doubled"]))
        if form == "missing amount":
            del kwargs["amount"]
        elif form == "missing card":  # (a token may stand for it: the request names the card, docs/tokens.md)
            del kwargs["card"]
            what = "card"
        elif form == "extra":
            kwargs[draw(st.text(min_size=1, max_size=20).filter(lambda k: k not in CHARGE_PARAMS))] = draw(text_any)
        elif form == "too many":
            args = [kwargs.pop("amount"), kwargs.pop("card"), kwargs.pop("customer"), *[None] * 7,
                    draw(text_any)]
        else:
            args = ["5.00"]  # amount given twice
    return task, args, kwargs, what


def trans_id_ok(value) -> bool:
    """A BluePay transaction id: exactly 12 ASCII digits (a str, or a non-negative int)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int) and value >= 0:
        value = str(value)
    return isinstance(value, str) and bool(re.fullmatch(r"[0-9]{12}", value.strip()))


bad_trans_ids = st.one_of(
    st.from_regex(r"\A[0-9]{1,11}\Z"), st.from_regex(r"\A[0-9]{13,19}\Z"),
    st.sampled_from(["4111111111111111", "１２３４５６７８９０１２", "abcdefghijkl", " ", "", "10000000000x"]),
    st.integers().filter(lambda i: not trans_id_ok(i)), json_junk.filter(lambda v: not trans_id_ok(v)),
    text_any.filter(lambda t: not trans_id_ok(t)),
)


@st.composite
def bad_follow_up(draw):
    """capture/refund/void with one thing wrong: (task, args, kwargs, what the message must name)."""
    task = draw(st.sampled_from(["capture", "refund", "void"]))
    what = draw(st.sampled_from(["trans_id", "amount", "arguments", "idempotency_key", "sale_outcome"]
                                if task != "void" else ["trans_id", "arguments", "idempotency_key", "sale_outcome"]))
    good = "100000000001"
    if what == "trans_id":  # (a dict given to void is a sale outcome: see "sale_outcome")
        return task, [draw(bad_trans_ids.filter(lambda v: task != "void" or not isinstance(v, dict)))], {}, what
    if what == "amount":
        return task, [good], {"amount": draw(bad_amounts.filter(lambda v: v is not None))}, "amount"
    if what == "idempotency_key":
        bad_key = draw(st.sampled_from(["", "é" * 5, "x" * 101]))
        return task, [good], {"idempotency_key": bad_key}, what
    if what == "sale_outcome":
        if task != "void":  # a dict where the trans id goes
            return task, [{"payment_id": "p", "trans_id": good}], {}, "trans_id"
        if draw(st.booleans()):
            return task, [draw(st.dictionaries(st.sampled_from(["status", "trans_id", "message"]), text_any))], {}, what
        forged = {"payment_id": new_key("forged"), "status": "APPROVED", "trans_id": draw(bad_trans_ids.filter(bool))}
        return task, [forged], {}, \
            "trans_id"
    form = draw(st.sampled_from(["none", "too many", "extra"]))
    if form == "none":
        return task, [], {}, "arguments"
    if form == "too many":
        return task, [good, None, None, "x"], {}, "arguments"
    return task, [good], {draw(st.text(min_size=1, max_size=12).filter(
        lambda k: k not in ("amount", "idempotency_key", "trans_id"))): 1}, "arguments"


@pytest.fixture(scope="module")
def bad_input_worker(rel_redis_url, rel_logdir):
    prefix = "payments:badinput:"
    with running_sandbox() as sandbox, producer_for(rel_redis_url, settings_for(rel_redis_url, sandbox, prefix)):
        fleet = Fleet("badinput", worker_env(rel_redis_url, sandbox, prefix), rel_logdir, size=1, pool="threads",
                      concurrency=4).start()
        try:
            yield sandbox, services_for(settings_for(rel_redis_url, sandbox, prefix)), fleet
        finally:
            fleet.stop()


def gateway_requests(sandbox) -> tuple:
    counts = sandbox.stats()["requests"]
    return counts.get("bp10emu", 0), counts.get("stq", 0)


@settings(max_examples=int(os.environ.get("RELIABILITY_BAD_INPUT_EXAMPLES", "100")), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(call=bad_call())
def test_bad_input_is_a_recorded_error_and_never_reaches_the_gateway(bad_input_worker, call):
    auth, sale = producer_tasks("auth", "sale")

    sandbox, svc, fleet = bad_input_worker
    name, args, kwargs, what = call
    before = gateway_requests(sandbox)
    result = publish_or_refused(sale if name == "sale" else auth, name, args, kwargs, what, sandbox)
    if result is None:
        return
    outcome = result.get(timeout=20)
    assert isinstance(outcome, dict) and outcome["status"] == "ERROR", outcome
    assert outcome["message"].startswith("invalid input") and what in outcome["message"], outcome["message"]
    record = svc.store.get(outcome["payment_id"])
    assert record is not None and record["status"] == "ERROR"
    assert gateway_requests(sandbox) == before  # nothing was sent, not even an stq lookup
    assert all(w.proc.poll() is None for w in fleet.workers)


@settings(max_examples=int(os.environ.get("RELIABILITY_BAD_INPUT_EXAMPLES", "100")) // 2, deadline=None,
          derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(call=bad_follow_up())
def test_bad_follow_up_input_is_a_recorded_error_and_never_reaches_the_gateway(bad_input_worker, call):
    capture, refund, void = producer_tasks("capture", "refund", "void")

    sandbox, svc, fleet = bad_input_worker
    name, args, kwargs, what = call
    before = gateway_requests(sandbox)
    task = {"capture": capture, "refund": refund, "void": void}[name]
    result = publish_or_refused(task, name, args, kwargs, what, sandbox)
    if result is None:
        return
    outcome = result.get(timeout=20)
    assert isinstance(outcome, dict) and outcome["status"] == "ERROR", outcome
    assert outcome["message"].startswith("invalid input") and what in outcome["message"], outcome["message"]
    record = svc.store.get(outcome["payment_id"])
    assert record is not None and record["status"] == "ERROR"
    assert gateway_requests(sandbox) == before
    assert all(w.proc.poll() is None for w in fleet.workers)


def test_the_worker_still_charges_after_the_bad_input(bad_input_worker):
    (sale,) = producer_tasks("sale")

    sandbox, _svc, fleet = bad_input_worker
    key = new_key("after-bad-input")
    outcome = sale.delay(amount="7.00", card=TEST_CARD, customer={"name1": "Zoë", "name2": "Ødegård"},
                         idempotency_key=key).get(timeout=20)
    assert outcome["status"] == "APPROVED" and outcome["payment_id"] == key
    assert len([e for e in sandbox.ledger(order_id=key) if e["trans_type"] == "SALE"]) == 1
    assert fleet.crashes == 0 and all(w.proc.poll() is None for w in fleet.workers)


def test_a_card_with_an_unknown_key_is_refused_not_charged_without_it(bad_input_worker):
    (sale,) = producer_tasks("sale")

    sandbox, _svc, _fleet = bad_input_worker
    before = gateway_requests(sandbox)
    card = {"number": TEST_CARD["number"], "expire": TEST_CARD["expire"], "cvv": TEST_CARD["cvv2"]}
    outcome = sale.delay(amount="9.00", card=card).get(timeout=20)
    assert outcome["status"] == "ERROR" and "card" in outcome["message"], outcome
    assert gateway_requests(sandbox) == before


def test_a_card_with_an_empty_number_is_a_recorded_error(bad_input_worker):
    (sale,) = producer_tasks("sale")

    sandbox, _svc, _fleet = bad_input_worker
    before = gateway_requests(sandbox)
    outcome = sale.delay(amount="3.00", card={"number": "", "expire": "1230", "cvv2": "7391"}).get(timeout=20)
    assert outcome["status"] == "ERROR" and "card" in outcome["message"], outcome
    assert gateway_requests(sandbox) == before


def test_strategies_only_make_invalid_values():
    # a few spot checks that the independent rules above agree with the documented examples
    assert amount_ok("3.00") and amount_ok(3) and not amount_ok(3.0) and not amount_ok("3.001")
    assert number_ok(TEST_CARD["number"]) and not number_ok("4111111111111112")
    assert expire_ok("1230") and not expire_ok("1330") and cvv2_ok("7391") and not cvv2_ok("73")
    assert unicodedata.category("\u200b") in CONTROL and set(string.digits) <= set("0123456789")
