"""The ``payments`` command as a person runs it: a subprocess, against the e2e Redis, a real worker and the
sandbox over HTTP; ``payments demo`` against a Redis database of its own."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from tests.support.card_scan import scan_text
from tests.support.env import redis_url_with_db
from tests.support.ports import closed_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SUBCOMMANDS = ("demo", "sandbox", "show", "list", "sweep", "reconcile", "resolve", "enqueue", "bench")
LABELS = ("Transaction Status", "Transaction Message", "Transaction ID", "Transaction AVS Result",
          "Transaction CVV2 Result", "Masked Payment Account", "Card Type", "Transaction Auth Code")
# `payments demo` gets a database of its own, so it sees no other test's worker (flushed before and after).
DEMO_REDIS_URL = os.environ.get("TEST_DEMO_REDIS_URL") or redis_url_with_db(10)


def payments_cmd() -> list[str]:
    """The installed console script when there is one (./dev installs it), else the same entry point
    (pyproject: payments = "worker.cli.main:main") run by this interpreter."""
    exe = BIN / "payments"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "worker.cli"]


def payments(*args, env=None, timeout=60, card=None) -> subprocess.CompletedProcess:
    """Run ``payments ARGS``; ``card`` (number, cvv2 or None) goes to standard input as two lines."""
    stdin = "\n".join(v or "" for v in card) + "\n" if card else ""
    return subprocess.run([*payments_cmd(), *args], cwd=ROOT, env=env or dict(os.environ), capture_output=True,
                          text=True, timeout=timeout, input=stdin)


def outcome_blocks(stdout: str) -> list[dict]:
    """Split printed outcomes into one dict per block of the eight labelled lines."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in stdout.splitlines():
        label, sep, value = line.partition(": ")
        if label == LABELS[0]:
            current = {}
            blocks.append(current)
        if current is not None and label in LABELS and sep:
            current[label] = value.strip()
    return blocks


def check_block(block, *, status, message=None):
    assert set(block) == set(LABELS), block
    assert block["Transaction Status"] == status, block
    if message is not None:
        assert block["Transaction Message"] == message, block


# ---------------------------------------------------------------------------------------------- help
def test_help_lists_every_subcommand():
    done = payments("--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: payments")
    for name in SUBCOMMANDS:
        assert name in done.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_help_of_each_subcommand(name):
    done = payments(name, "--help")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "usage:" in done.stdout and "Traceback" not in done.stderr
    expected = {"sandbox": "--port", "bench": "--payments", "enqueue": "--then-void", "list": "--status",
                "show": "payment_id", "demo": "--start-worker", "sweep": f"payments {name}", "reconcile": "--from",
                "resolve": "--trans-id"}[name]
    assert expected in done.stdout


# ---------------------------------------------------------------------------------------------- enqueue/show/list
@pytest.fixture
def _worker(celery_worker, clean_faults):
    yield


def test_enqueue_sale_then_void_prints_the_outcomes_and_show_and_list_find_them(_worker, sandbox):
    done = payments("enqueue", "sale", "--amount", "3.00", "--expire", "1230", "--then-void", "--name1", "Bob",
                    "--name2", "Tester", card=("4111111111111111", "123"))
    assert done.returncode == 0, done.stderr
    heads = re.findall(r"^== (\w+) (\S+)$", done.stdout, re.M)
    assert [op for op, _ in heads] == ["sale", "void"], done.stdout
    sale_id, void_id = heads[0][1], heads[1][1]
    assert void_id == f"{sale_id}:void"
    sale_block, void_block = outcome_blocks(done.stdout)
    check_block(sale_block, status="APPROVED", message="Approved Sale")
    check_block(void_block, status="APPROVED", message="Approved Void")
    assert re.fullmatch(r"\d{12}", sale_block["Transaction ID"])
    assert sale_block["Masked Payment Account"] == "xxxxxxxxxxxx1111" and sale_block["Card Type"] == "VISA"
    assert sale_block["Transaction CVV2 Result"] == "M" and sale_block["Transaction Auth Code"]
    assert scan_text(done.stdout + done.stderr, cvv2="123", where="enqueue output") == []
    ledger = [e for e in sandbox.ledger(order_id=sale_id) if e["trans_type"] == "SALE"]
    assert len(ledger) == 1 and ledger[0]["voided"]

    shown = payments("show", sale_id, "--json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["payment_id"] == sale_id and record["operation"] == "sale" and record["status"] == "VOIDED"
    assert record["voided_by"] == void_id and record["trans_id"] == sale_block["Transaction ID"]
    assert record["masked_account"] == "xxxxxxxxxxxx1111" and record["amount"] == "3.00"
    assert [h["status"] for h in record["history"]] == ["PENDING", "APPROVED", "VOIDED"]
    assert scan_text(shown.stdout, cvv2="123", where="show --json") == []

    text = payments("show", void_id)
    assert text.returncode == 0 and "Transaction Status: APPROVED" in text.stdout
    assert f"parent: {sale_id}" in text.stdout

    approved = payments("list", "--status", "APPROVED")
    assert approved.returncode == 0, approved.stderr
    rows = {line.split()[0]: line for line in approved.stdout.splitlines()[1:] if line.strip()}
    assert void_id in rows and sale_id not in rows
    assert all(line.split()[2] == "APPROVED" for line in rows.values())
    voided = payments("list", "--status", "VOIDED", "--operation", "sale", "--json")
    assert sale_id in [r["payment_id"] for r in json.loads(voided.stdout)]


def test_enqueue_a_declined_sale_with_then_void_shows_the_skipped_void(_worker):
    done = payments("enqueue", "sale", "--amount", "4.00", "--expire", "1230", "--then-void",
                    card=("4111111111111111", "123"))
    assert done.returncode == 0, done.stderr
    sale_block, void_block = outcome_blocks(done.stdout)
    check_block(sale_block, status="DECLINED", message="Declined Sale")
    assert void_block["Transaction Status"] == "SKIPPED" and "DECLINED" in void_block["Transaction Message"]


def test_enqueue_no_wait_prints_the_task_id(_worker):
    key = f"cli-{uuid.uuid4().hex[:12]}"
    done = payments("enqueue", "auth", "--amount", "5.00", "--expire", "1230", "--idempotency-key", key, "--no-wait",
                    card=("4111111111111111", None))
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", task_id)
    from celery.result import AsyncResult

    assert AsyncResult(task_id).get(timeout=30)["payment_id"] == key


def _run_on_a_terminal(cmd, dialogue, *, env, timeout=60.0):
    """Run ``cmd`` with a pseudo-terminal as its controlling terminal (getpass reads and writes /dev/tty);
    for each (prompt, answer) of ``dialogue``, type the answer once the prompt has appeared.
    Returns (exit status, everything the terminal showed)."""
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # the child, on the new terminal
        try:
            os.chdir(ROOT)
            os.execvpe(cmd[0], cmd, env)
        finally:
            os._exit(127)
    shown, seen_up_to, pending = b"", 0, list(dialogue)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child has closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        if pending and (at := shown.find(pending[0][0].encode(), seen_up_to)) >= 0:
            prompt, answer = pending.pop(0)
            seen_up_to = at + len(prompt)
            os.write(fd, answer.encode() + b"\n")
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown.decode("utf-8", "replace")


def test_enqueue_reads_the_card_at_a_prompt_without_echo(_worker):
    key = f"cli-tty-{uuid.uuid4().hex[:12]}"
    code, shown = _run_on_a_terminal(
        [*payments_cmd(), "enqueue", "sale", "--amount", "3.00", "--expire", "1230", "--idempotency-key", key,
         "--timeout", "30"], [("Card number: ", "4111111111111111"), ("CVV2 (Enter for none): ", "123")],
        env=dict(os.environ))
    assert code == 0, shown
    assert "Card number: " in shown and "CVV2 (Enter for none): " in shown
    assert "Transaction Status: APPROVED" in shown and "xxxxxxxxxxxx1111" in shown
    assert "4111111111111111" not in shown, "the card number was echoed"
    assert scan_text(shown, cvv2="123", where="terminal") == []


def test_card_options_on_the_command_line_are_refused():
    for option, value in (("--card-number", "4111111111111111"), ("--cvv2", "123")):
        done = payments("enqueue", "sale", "--amount", "3.00", "--expire", "1230", option, value)
        assert done.returncode == 2, (done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"payments: error: {option} is not accepted"), done.stderr
        assert "standard input" in lines[0]


def _recorded_message(key, **kwargs) -> str:
    """What the worker records for the same input published by a producer (bypassing the command)."""
    from tasks import sale

    outcome = sale.delay(**kwargs, idempotency_key=key).get(timeout=30)
    assert outcome["status"] == "ERROR", outcome
    return outcome["message"]


@pytest.mark.parametrize("amount, card, field", [
    ("3.001", ("4111111111111111", "123"), "amount"),
    ("-1", ("4111111111111111", "123"), "amount"),
    ("3.00", ("4111111111111112", "123"), "card.number"),
])
def test_input_the_worker_would_refuse_is_refused_before_anything_is_enqueued(_worker, e2e_redis, amount, card,
                                                                                field):
    key = f"cli-bad-{uuid.uuid4().hex[:12]}"
    done = payments("enqueue", "sale", "--amount", amount, "--expire", "1230", "--idempotency-key", key, card=card)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"payments: error: invalid input: {field}: "), done.stderr
    assert "enqueued" not in done.stderr and "Traceback" not in done.stderr
    assert e2e_redis.exists(f"payments:op:{key}") == 0, "something was enqueued and recorded"
    number, cvv2 = card
    worker_card = {"number": number, "expire": "1230", **({"cvv2": cvv2} if cvv2 else {})}
    recorded = _recorded_message(key + "-worker", amount=amount, card=worker_card)
    assert lines[0] == f"payments: error: {recorded}"


GOOD_CARD = ("4111111111111111", "123")


@pytest.fixture(scope="module")
def lonely_redis():
    """A throwaway redis-server of this module's own: no worker consumes from it and no other test (or
    engineer) writes to it, so "nothing reached Redis" and "no worker answers" hold by construction."""
    from bench.procs import StartError, start_private_redis, stop

    try:
        proc, url, tmp = start_private_redis()
    except StartError as exc:  # pragma: no cover - redis-server not installed
        pytest.skip(str(exc))
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        yield client, url
    finally:
        client.close()
        stop(proc, timeout=5)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("args, card, message", [
    (("sale", "--amount", "3.00", "--expire", "1320"), GOOD_CARD, "card.expire: month must be 01-12"),
    (("sale", "--amount", "3.00", "--expire", "0120"), GOOD_CARD, "card.expire: card has expired"),
    (("sale", "--amount", "3.00"), GOOD_CARD, "card.expire: required, as MMYY"),
    (("auth", "--amount", "3.00", "--expire", "1230"), ("4111111111111111", "12"), "card.cvv2: must be 3 or 4 digits"),
    (("sale", "--amount", "3.00", "--expire", "1230", "--city", "x" * 65), GOOD_CARD,
     "customer.city: at most 64 characters"),
    (("refund", "--trans-id", "12345"), None, "trans_id: must be exactly 12 digits"),
    (("capture", "--trans-id", "100000000001", "--amount", "1.005"), None, "amount: at most two decimals"),
])
def test_bad_expiry_cvv2_customer_and_trans_id_are_refused_before_anything_is_enqueued(args, card, message,
                                                                                        lonely_redis):
    client, url = lonely_redis
    client.flushdb()
    done = payments("enqueue", *args, env=dict(os.environ, REDIS_URL=url), card=card)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.strip() == f"payments: error: invalid input: {message}"
    assert client.dbsize() == 0, "something reached Redis"


def test_card_data_outside_the_card_is_one_line_and_reaches_no_redis(lonely_redis):
    client, url = lonely_redis
    client.flushdb()
    # (free text: a card-like order id or key is encrypted instead, issue 25)
    done = payments("enqueue", "sale", "--amount", "3.00", "--expire", "1230", "--name1", "4111.1111.1111.1111",
                    env=dict(os.environ, REDIS_URL=url), card=GOOD_CARD)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("PAYMENTS_CARD_KEY")]
    assert len(lines) == 1 and lines[0].startswith("payments: error: refused: customer.name1 looks like a card number")
    assert "4111111111111111" not in done.stderr and "Traceback" not in done.stderr
    assert client.dbsize() == 0, "something reached Redis"


def test_an_empty_standard_input_is_a_missing_card_number(lonely_redis):
    client, url = lonely_redis
    client.flushdb()
    done = payments("enqueue", "auth", "--amount", "0.00", "--expire", "1230", env=dict(os.environ, REDIS_URL=url))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.strip() == "payments: error: invalid input: card.number: required, as a string of digits"
    assert client.dbsize() == 0, "something reached Redis"


def test_enqueue_with_no_worker_running_ends_with_one_line_and_no_shutdown_traceback(lonely_redis):
    # A Redis no worker consumes from: the outcome never comes.
    env = dict(os.environ, REDIS_URL=lonely_redis[1])
    for args in (("sale", "--amount", "3.00", "--expire", "1230", "--then-void"),
                 ("void", "--trans-id", "100000000001")):
        done = payments("enqueue", *args, "--timeout", "1", env=env, card=("4111111111111111", "123"))
        assert done.returncode == 2, (done.stdout, done.stderr)
        lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("PAYMENTS_CARD_KEY")]
        assert len(lines) == 2 and lines[0].startswith("enqueued "), done.stderr
        assert lines[1].startswith("payments: error: no outcome within 1s: is a worker running?"), done.stderr
        assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    nowait = payments("enqueue", "void", "--trans-id", "100000000001", "--no-wait", env=env)
    assert nowait.returncode == 0 and "Exception ignored" not in nowait.stderr, nowait.stderr


def test_show_of_an_unknown_id_is_a_one_line_error(e2e_redis):
    done = payments("show", f"no-such-{uuid.uuid4().hex}")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no payment with id" in done.stderr


@pytest.mark.parametrize("args", [("show", "abc"), ("list",), ("list", "--status", "APPROVED"), ("sweep",),
                                  ("enqueue", "void", "--trans-id", "100000000001"), ("demo",)])
def test_redis_unreachable_is_a_one_line_error_with_exit_code_2(args):
    port = closed_port()
    env = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{port}/0")
    started = time.monotonic()
    done = payments(*args, env=env, timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("payments: error: cannot reach Redis"), done.stderr
    assert f":{port}" in lines[0]
    assert elapsed < 10, f"took {elapsed:.1f}s to say Redis is down"


# ---------------------------------------------------------------------------------------------- the demo
def _processes_with_marker(marker: str) -> list[str]:
    found = []
    needle = f"PAYMENTS_TEST_MARKER={marker}".encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            if needle in environ.split(b"\0"):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append(f"{pid}: {cmdline}")
        except OSError:
            continue
    return found


@pytest.fixture
def demo_redis():
    client = redis.Redis.from_url(DEMO_REDIS_URL, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def test_demo_runs_the_seed_scenario_end_to_end_and_leaves_no_process_behind(demo_redis):
    marker = uuid.uuid4().hex
    env = dict(os.environ, REDIS_URL=DEMO_REDIS_URL, PAYMENTS_TEST_MARKER=marker)
    for name in ("BLUEPAY_URL", "BLUEPAY_ACCOUNT_ID", "BLUEPAY_SECRET_KEY", "PAYMENTS_KEY_PREFIX"):
        env.pop(name, None)
    try:
        done = payments("demo", "--timeout", "30", env=env, timeout=120)
        leftovers = _processes_with_marker(marker)
    finally:
        for line in _processes_with_marker(marker):  # never leave them running, even when the test fails
            try:
                os.kill(int(line.split(":")[0]), 9)
            except ProcessLookupError:
                pass
    assert done.returncode == 0, (done.stdout, done.stderr)
    out = done.stdout
    assert "started the sandbox gateway at http://127.0.0.1:" in out
    assert "started a worker" in out
    blocks = outcome_blocks(out)
    assert len(blocks) == 4, out
    sale1, void1, sale2, void2 = blocks
    check_block(sale1, status="APPROVED", message="Approved Sale")
    check_block(void1, status="APPROVED", message="Approved Void")
    check_block(sale2, status="DECLINED", message="Declined Sale")
    check_block(void2, status="SKIPPED")
    assert "DECLINED" in void2["Transaction Message"]
    for block in (sale1, sale2):
        assert block["Masked Payment Account"] == "xxxxxxxxxxxx1111" and block["Card Type"] == "VISA"
        assert re.fullmatch(r"\d{12}", block["Transaction ID"]) and block["Transaction CVV2 Result"] == "M"
    assert sale1["Transaction Auth Code"]
    assert void1["Transaction ID"] and void1["Transaction ID"] != sale1["Transaction ID"]
    assert void2["Transaction ID"] == ""  # no gateway call for the skipped void
    order = [line for line in out.splitlines() if line.startswith(("=== ", "--- "))]
    assert [line.split()[1] for line in order] == ["1.", "SALE", "VOID", "2.", "SALE", "VOID"]
    assert "3.00" in order[0] and "4.00" in order[3]
    assert scan_text(out + done.stderr, cvv2="123", where="demo output") == []
    # what it stored: the first sale voided by its chained void, the second declined
    pids = re.findall(r"^--- (?:SALE|VOID) (\S+)$", out, re.M)
    records = [demo_redis.hgetall(f"payments:op:{pid}") for pid in pids]
    assert [r["status"] for r in records] == ["VOIDED", "APPROVED", "DECLINED", "SKIPPED"]
    assert leftovers == [], f"the demo left processes behind: {leftovers}"
