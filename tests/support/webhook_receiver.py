"""A real webhook receiver on loopback for tests: verifies each delivery with the ``standardwebhooks`` package and
answers as the test says (``answer(n, body)`` -> status, or ``"hang"``: sleep past the sender's timeout, or
``"garbage"``: a 200 whose body is not HTTP-clean text). Keeps every request it got."""
from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    verified: bool
    status: int | str

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class Receiver:
    secret: str
    answer: Callable[[int, bytes], int | str] = lambda n, body: 200
    check_timestamp: bool = True
    hang_seconds: float = 3.0
    got: list[Received] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def verify(self, body: bytes, headers: dict[str, str]) -> bool:
        hook = Webhook(self.secret)
        try:
            if self.check_timestamp:
                hook.verify(body, headers)
                return True
            # a test's injected clock runs ahead of this one: check the signature alone, with the package's own sign
            from datetime import UTC, datetime

            when = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
            expected = hook.sign(headers["webhook-id"], when, body)
            return expected in headers["webhook-signature"].split(" ")
        except (WebhookVerificationError, KeyError):
            return False

    def delivered(self) -> list[Received]:
        """The requests answered 2xx with a good signature."""
        with self.lock:
            return [r for r in self.got if r.verified and (r.status == "garbage" or (
                isinstance(r.status, int) and 200 <= r.status < 300))]



class _Server(ThreadingHTTPServer):
    request_queue_size = 64  # the listen backlog: 5 (the default) drops concurrent connects (a 1 s SYN retry)
    daemon_threads = True

@contextlib.contextmanager
def running_receiver(secret: str, answer: Callable[[int, bytes], int | str] | None = None,
                     **kw: Any) -> Iterator[Receiver]:
    receiver = Receiver(secret, **kw)
    if answer is not None:
        receiver.answer = answer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            with receiver.lock:
                n = len(receiver.got)
                status = receiver.answer(n, body)
                receiver.got.append(Received(headers, body, receiver.verify(body, headers), status))
            with contextlib.suppress(OSError):  # the sender may have given up (its timeout)
                self._answer(status)

        def _answer(self, status: int | str) -> None:
            if status == "hang":  # past the sender's timeout: not delivered, whatever comes after
                time.sleep(receiver.hang_seconds)
                status = 200
            if status == "garbage":
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"\x00\xff{not json")
                return
            self.send_response(int(status))
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"no")

        def log_message(self, *args: Any) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def wait_until(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def start_worker_with_beat(env: dict[str, str], redis_url: str, logdir: Path, name: str) -> Any:
    """``celery -A worker worker -B`` (beat drains the webhook schedule every second), once it answers a ping."""
    from celery import Celery

    from worker.ops.processes import start_worker, wait_for_worker

    proc = start_worker(env=env, pool="threads", concurrency=4, loglevel="INFO", logfile=logdir / f"{name}.log",
                        hostname=f"{name}@%h", extra=("-B", "--schedule", str(logdir / f"{name}-beat")))
    pinger = Celery(broker=redis_url, set_as_current=False)
    try:
        wait_for_worker(pinger, hostname_prefix=f"{name}@", timeout=60)
    finally:
        pinger.close()
    return proc
