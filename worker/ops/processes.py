"""Start and stop the local processes the demo, the benchmark and the tests need.

A sandbox gateway (``python -m worker.sandbox``) and ``celery -A worker worker`` processes, each a
subprocess of this one, stopped (TERM, then KILL) by ``stop``.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import redis

ROOT = Path(__file__).resolve().parent.parent


class StartError(RuntimeError):
    """A local process did not come up."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (the kernel picks it; it may be taken
    again before the caller binds it, which is fine for tests and throwaway local servers)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start_sandbox(*, host: str = "127.0.0.1", port: int = 0, args: Sequence[str] = (),
                  env: Mapping[str, str] | None = None, timeout: float = 15.0) -> tuple[subprocess.Popen[str], str]:
    """Start the sandbox; returns (process, base_url). Reads its 'listening on URL' line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.sandbox", "--host", host, "--port", str(port), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
    )
    assert proc.stdout is not None  # stdout=PIPE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if "listening on" in line:
            url = line.strip().rsplit(" ", 1)[-1].rstrip("/")
            _drain(proc.stdout)
            return proc, url
    stop(proc)
    raise StartError("the sandbox did not start")


def _drain(stream: IO[str]) -> None:
    import threading

    threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()


def start_worker(*, env: Mapping[str, str] | None, pool: str = "threads", concurrency: int = 4,
                 loglevel: str = "INFO", logfile: str | os.PathLike[str] | None = None, hostname: str | None = None,
                 queues: str | None = None, extra: Iterable[str] = ()) -> subprocess.Popen[bytes]:
    """Start ``celery -A worker worker``; returns the process once the worker answers a ping."""
    cmd = [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool", pool,
           "--concurrency", str(concurrency), "--loglevel", loglevel, "--without-gossip", "--without-mingle"]
    if hostname:
        cmd += ["--hostname", hostname]
    if queues:
        cmd += ["--queues", queues]
    if logfile:
        cmd += ["--logfile", str(logfile)]
    cmd += list(extra)
    quiet = logfile is not None  # the log file has it all: nothing on our terminal
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL if quiet else None,
                            stderr=subprocess.STDOUT if quiet else None, start_new_session=True)
    return proc


def wait_for_worker(app: Any, hostname_prefix: str | None = None, timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = app.control.ping(timeout=0.5) or []
        names = [name for reply in replies for name in reply]
        if hostname_prefix:
            names = [n for n in names if n.startswith(hostname_prefix)]
        if names:
            return names
    raise StartError("no worker answered a ping")


def stop(proc: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM) if _own_group(proc) else proc.terminate()
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL) if _own_group(proc) else proc.kill()
        except ProcessLookupError:
            pass
        proc.wait(5)


def _own_group(proc: subprocess.Popen[Any]) -> bool:
    try:
        return os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return False


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False
