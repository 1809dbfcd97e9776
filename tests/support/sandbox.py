"""Run the BluePay sandbox as a subprocess for tests: ``with running_sandbox() as sb: ...``."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ACCOUNT_ID = "100000000001"
DEFAULT_SECRET_KEY = "SANDBOXSECRETKEY0000000000000000"
_TIMEOUT = 10


class Sandbox:
    """Handle on a running sandbox subprocess."""

    def __init__(self, url: str, account_id: str, secret_key: str, proc: subprocess.Popen):
        self.url = url.rstrip("/")
        self.interfaces_url = self.url + "/interfaces/"
        self.port = int(self.url.rsplit(":", 1)[1])
        self.host = self.url.split("://", 1)[1].rsplit(":", 1)[0]
        self.account_id = account_id
        self.secret_key = secret_key
        self.proc = proc

    def _get(self, path: str, **params: Any) -> Any:
        r = requests.get(self.url + "/sandbox/" + path, params=params or None, timeout=_TIMEOUT)
        r.raise_for_status()
        return r.json()

    def _post(self, path: str, body: Any = None) -> Any:
        r = requests.post(self.url + "/sandbox/" + path, json=body if body is not None else {},
                          timeout=_TIMEOUT)
        r.raise_for_status()
        return r.json()

    def health(self) -> dict:
        return self._get("health")

    def ledger(self, order_id: str | None = None) -> list[dict]:
        return self._get("ledger", **({"order_id": order_id} if order_id is not None else {}))

    def orders(self, order_id: str | None = None) -> dict[str, dict]:
        """Per ORDER_ID: entries, approved/declined/voided counts by type, held late commits."""
        return self._get("orders", **({"order_id": order_id} if order_id is not None else {}))

    def charges(self, order_id: str, trans_type: str = "SALE") -> int:
        """Approved ``trans_type`` entries committed under ``order_id`` (voided ones included)."""
        return self.orders(order_id).get(order_id, {}).get("approved", {}).get(trans_type, 0)

    def reset(self) -> dict:
        """Clear ledger, faults, counters; drop held late commits; restore the start duplicate window."""
        return self._post("reset")

    def duplicates(self) -> dict:
        return self._get("duplicates")

    def set_duplicate_window(self, seconds: float) -> dict:
        """0 switches duplicate scrubbing off (until changed again or reset)."""
        return self._post("duplicates", {"window": seconds})

    def wait_no_held(self, timeout: float = 30.0) -> None:
        """Wait until no late commit is held (every queued request has committed)."""
        deadline = time.monotonic() + timeout
        while self.stats()["late_commits"]["held"]:
            if time.monotonic() > deadline:
                raise TimeoutError("late commits still held")
            time.sleep(0.05)

    def settle(self, ids: list[str] | None = None) -> list[str]:
        return self._post("settle", {"ids": list(ids)} if ids is not None else {})["settled"]

    def book(self, amount: str = "3.00", **spec: Any) -> dict:
        """Book a SALE/AUTH directly at the gateway, as a person in BluePay's console would."""
        return self._post("book", dict(spec, amount=amount))

    def book_many(self, specs: list[dict]) -> list[str]:
        return self._post("book", {"transactions": specs})["ids"]

    def console_void(self, trans_id: str) -> dict:
        """Void a transaction in the console (no ORDER_ID on the VOID)."""
        return self._post("void", {"id": trans_id})

    def dialect(self) -> dict:
        """How it answers where BluePay's texts are silent (worker/sandbox/dialect.py)."""
        return self._get("dialect")

    def set_dialect(self, **switches: str) -> dict:
        """Change some of those answers (until changed again or reset)."""
        return self._post("dialect", switches)

    def set_faults(self, faults: dict | None) -> dict:
        return self._post("faults", faults or {})

    def faults(self) -> dict:
        return self._get("faults")

    def stats(self) -> dict:
        return self._get("stats")

    def outage(self, seconds: float) -> dict:
        return self._post("outage", {"seconds": seconds})

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Poll /sandbox/health until it answers (e.g. after an outage)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.health()
                return
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


@contextlib.contextmanager
def running_sandbox(*, faults: dict | None = None, account_id: str = DEFAULT_ACCOUNT_ID,
                    secret_key: str = DEFAULT_SECRET_KEY, duplicate_window: float | None = None,
                    extra_args: tuple | list = (), startup_timeout: float = 15.0) -> Iterator[Sandbox]:
    """Start ``python -m worker.sandbox --port 0`` and yield a :class:`Sandbox`; stop it on exit.

    The sandbox does not inherit ``SANDBOX_FAULTS`` or ``SANDBOX_DUPLICATE_WINDOW`` from the
    environment: pass ``faults=`` / ``duplicate_window=`` (0 = duplicate scrubbing off).
    """
    cmd = [sys.executable, "-m", "worker.sandbox", "--host", "127.0.0.1", "--port", "0",
           "--account-id", account_id, "--secret-key", secret_key]
    if faults is not None:
        cmd += ["--faults", json.dumps(faults)]
    if duplicate_window is not None:
        cmd += ["--duplicate-window", str(duplicate_window)]
    cmd += [str(a) for a in extra_args]
    env = dict(os.environ)
    env.pop("SANDBOX_FAULTS", None)
    env.pop("SANDBOX_DUPLICATE_WINDOW", None)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.stdout, proc.stderr
    assert stdout is not None and stderr is not None  # both PIPE
    try:
        line_box: list[str] = []
        reader = threading.Thread(target=lambda: line_box.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(startup_timeout)
        line = line_box[0].strip() if line_box else ""
        prefix = "sandbox listening on "
        if not line.startswith(prefix):
            proc.kill()
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"sandbox did not start: {line!r} {err[-2000:]}")
        # keep draining stderr so a chatty sandbox never blocks on a full pipe
        threading.Thread(target=stderr.read, daemon=True).start()
        yield Sandbox(line[len(prefix):], account_id, secret_key, proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for stream in (proc.stdout,):
            if stream:
                stream.close()
