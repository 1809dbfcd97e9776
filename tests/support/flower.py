"""A real ``celery -A worker flower`` for a test (started, waited for and stopped as tests/e2e/test_flower.py does,
with these helpers), and every page and API answer it gives, kept for the card-data scan.

Flower is started outside the repository by default (in the directory of its log), as a merchant would start it:
there it finds no flowerconfig.py, so what locks it must come from the package (worker/ops/flower.py)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from worker.ops.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
AUTH = ("flower-user", "s3cret-pass")


def celery_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "celery"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "celery"]


def flower_env(redis_url: str, **extra: str) -> dict[str, str]:
    """This process's environment without any FLOWER_* setting, pointed at ``redis_url``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    env.update(REDIS_URL=redis_url, **extra)
    return env


def payments_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "payments"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from worker.cli.main import main; "
                                            "sys.exit(main())"]


def start_flower(port: int, env: dict[str, str], log_path: Path, *, cwd: Path | None = None,
                 command: list[str] | None = None, extra_args: tuple[str, ...] = ()) -> subprocess.Popen:
    """``celery -A worker flower`` (or ``command``, e.g. ``payments flower``) on 127.0.0.1:``port``, run in ``cwd``
    (default: the log's directory, outside the repository)."""
    base = command if command is not None else [*celery_cmd(), "-A", "worker", "flower"]
    cwd = cwd if cwd is not None else log_path.parent
    assert cwd == ROOT or ROOT not in cwd.resolve().parents, cwd
    with open(log_path, "w") as log:
        return subprocess.Popen([*base, f"--port={port}", "--address=127.0.0.1", *extra_args],
                                cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def wait_until(predicate, timeout, what, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


class FlowerClient:
    def __init__(self, url: str, log_path: Path):
        self.url, self.log_path = url, log_path
        self.seen: list[tuple[str, str]] = []  # (path, body) of every answer read

    def get(self, path, **params):
        r = requests.get(self.url + path, auth=AUTH, params=params or None, timeout=30, allow_redirects=False)
        self.seen.append((path, r.text))
        return r

    def json(self, path, **params):
        r = self.get(path, **params)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        return r.json()

    def read_everything(self, task_ids) -> None:
        """Every page and API answer that can show a task: lists, each task's info/result/page, the tasks
        table's rows, workers, broker, task types and /metrics."""
        pages = ["/", "/api/tasks", "/api/workers", "/tasks", "/api/task/types", "/metrics", "/workers", "/broker"]
        pages += [f"/api/task/info/{i}" for i in task_ids] + [f"/api/task/result/{i}" for i in task_ids]
        pages += [f"/task/{i}" for i in task_ids]
        for path in pages:
            self.get(path)
        self.get("/api/workers", refresh="1")
        self.get("/tasks/datatable", draw=1, start=0, length=5000, **{
            "search[value]": "", "order[0][column]": 0, "columns[0][data]": "received", "order[0][dir]": "desc"})

    def texts(self) -> list[tuple[str, str]]:
        log = self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""
        return [(f"flower {path}", text) for path, text in self.seen] + [("flower log", log)]


@contextlib.contextmanager
def running_flower(redis_url: str, log_path: Path):
    """Flower on a free port against ``redis_url`` with basic auth; yields a FlowerClient once Flower has heard a
    worker's events (it only knows what it receives while running)."""
    port = free_port()
    proc = start_flower(port, flower_env(redis_url, FLOWER_BASIC_AUTH=":".join(AUTH)), log_path)
    client = FlowerClient(f"http://127.0.0.1:{port}", log_path)
    try:
        def up():
            assert proc.poll() is None, log_path.read_text()
            try:
                return requests.get(client.url + "/healthcheck", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(up, 30, "flower to answer")

        def hears_a_worker():
            r = requests.get(client.url + "/api/workers", auth=AUTH, params={"status": "1"}, timeout=10)
            return r.status_code == 200 and any(r.json().values())

        wait_until(hears_a_worker, 30, "flower to hear a worker's events", interval=0.5)
        yield client
    finally:
        stop_process(proc)
