"""The demo: BluePay's "cancel a transaction" sample, run through the queue.

1. a 3.00 SALE with the test card, chained with a VOID: approved, then voided;
2. a 4.00 SALE chained with a VOID: declined, so the void is SKIPPED without a gateway call.

When BLUEPAY_URL is not set it starts the sandbox; when no worker answers it starts one (threads
pool) pointed at that gateway. It stops what it started.
"""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from typing import Any

from worker.cli.output import CommandError, format_outcome, release
from worker.ops.processes import StartError, redis_answers, start_sandbox, start_worker, stop, wait_for_worker

BOB = {"name1": "Bob", "name2": "Tester", "addr1": "123 Test St.", "addr2": "Apt #500", "city": "Testville",
       "state": "IL", "zipcode": "54321", "country": "USA"}


def test_card() -> dict[str, str]:
    """The sample's card with an expiry that has not passed (the sample's 1225 has)."""
    return {"number": "4111111111111111", "expire": f"12{(date.today().year + 3) % 100:02d}", "cvv2": "123"}


def run_demo(*, timeout: float = 60.0, start_worker: str = "auto") -> int:
    env = dict(os.environ)
    redis_url = env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    if not redis_answers(redis_url):
        raise CommandError(f"cannot reach Redis at {redis_url} (start one, or run ./dev demo which starts one)")
    started: list[subprocess.Popen[Any]] = []
    logfile = None
    try:
        if not env.get("BLUEPAY_URL"):
            sandbox, url = start_sandbox()
            started.append(sandbox)
            env["BLUEPAY_URL"] = os.environ["BLUEPAY_URL"] = f"{url}/interfaces/"
            print(f"started the sandbox gateway at {url}")
        from worker import app

        answering = app.control.ping(timeout=1.0) if start_worker == "auto" else []
        if start_worker == "always" or (start_worker == "auto" and not answering):
            hostname = f"demo-{os.getpid()}@%h"
            worker_proc, logfile = start_worker_proc(env, hostname)
            started.append(worker_proc)
            wait_for_worker(app, hostname_prefix=f"demo-{os.getpid()}@", timeout=30)
            print("started a worker (threads pool)")
        elif start_worker == "never" or answering:
            print("using the running worker(s)")
        code = _scenario(timeout)
        if logfile:
            os.unlink(logfile)  # kept only when something failed, for the post-mortem
        return code
    except StartError as exc:
        raise CommandError(str(exc)) from None
    finally:
        for proc in reversed(started):
            stop(proc)


def start_worker_proc(env: dict[str, str], hostname: str) -> tuple[subprocess.Popen[bytes], str]:
    import tempfile

    logfile = os.path.join(tempfile.gettempdir(), f"payments-demo-worker-{os.getpid()}.log")
    proc = start_worker(env=env, pool="threads", concurrency=4, loglevel="WARNING", hostname=hostname,
                        logfile=logfile)
    return proc, logfile


def _scenario(timeout: float) -> int:
    from celery.exceptions import TimeoutError as CeleryTimeout

    from worker.tasks import sale, void

    steps = [("3.00", "approved, then voided"), ("4.00", "declined, so the void is skipped")]
    for number, (amount, expected) in enumerate(steps, 1):
        print(f"\n=== {number}. SALE {amount} chained with VOID ({expected})")
        result = (sale.s(amount=amount, card=test_card(), customer=BOB) | void.s()).delay()
        try:
            sale_outcome = result.parent.get(timeout=timeout)
            void_outcome = result.get(timeout=timeout)
        except CeleryTimeout:
            raise CommandError(
                f"no outcome within {timeout:g}s: is the worker running and the gateway reachable?") from None
        finally:
            release(result)
        print(f"--- SALE {sale_outcome['payment_id']}")
        print(format_outcome(sale_outcome))
        print(f"--- VOID {void_outcome['payment_id']}")
        print(format_outcome(void_outcome))
    print("\nstored outcomes: payments list   |   one record: payments show PAYMENT_ID --json")
    return 0


if __name__ == "__main__":
    sys.exit(run_demo())
