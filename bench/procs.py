"""Processes the benchmark starts, and what the OS says they cost.

Every child gets ``PR_SET_PDEATHSIG`` (SIGTERM) so that it does not outlive a benchmark that is
killed outright (SIGKILL skips ``finally``); the normal path stops them with
``worker.ops.processes.stop`` (TERM to the process group, then KILL).
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import redis

from worker.ops.processes import ROOT, StartError, free_port, stop

__all__ = ["ROOT", "StartError", "stop", "start_sandbox", "start_celery_worker", "start_private_redis",
           "tree", "tree_cpu_seconds", "tree_peak_rss_bytes", "free_port", "py_spy_path"]

_PR_SET_PDEATHSIG = 1


def _die_with_parent():  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _drain(stream):
    threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()


def start_sandbox(*, args=(), env=None, timeout=20.0):
    """``python -m worker.sandbox --port 0 ARGS``; returns (process, base_url)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.sandbox", "--host", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
        start_new_session=True, preexec_fn=_die_with_parent,
    )
    assert proc.stdout is not None  # stdout=PIPE
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if "listening on" in line:
            url = line.strip().rsplit(" ", 1)[-1].rstrip("/")
            _drain(proc.stdout)
            return proc, url
    stop(proc)
    raise StartError("the sandbox did not start: " + "".join(seen)[-2000:])


def start_celery_worker(app_module: str, *, env, pool, concurrency, hostname, logfile, loglevel="WARNING",
                        extra=()):
    """``celery -A APP worker`` with the flags of ``worker.ops.processes.start_worker`` (no gossip, no
    mingle), in its own session, dying with us."""
    cmd = [sys.executable, "-m", "celery", "-A", app_module, "worker", "--pool", pool,
           "--concurrency", str(concurrency), "--loglevel", loglevel, "--without-gossip", "--without-mingle",
           "--hostname", hostname, "--logfile", str(logfile), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=_die_with_parent)


def start_private_redis(timeout=10.0):
    """A throw-away ``redis-server`` (no persistence) on a free port: (process, url, tmpdir)."""
    exe = shutil.which("redis-server")
    if not exe:
        raise StartError("--private-redis needs redis-server on PATH")
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="bench-redis-")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", tmp, "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if redis.Redis.from_url(url, socket_connect_timeout=0.5).ping():
                return proc, url, tmp
        except redis.RedisError:
            time.sleep(0.05)
    stop(proc)
    shutil.rmtree(tmp, ignore_errors=True)
    raise StartError("the private redis-server did not start")


def py_spy_path() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def tree(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, its live descendants and its reaped children."""
    total = 0.0
    for i, p in enumerate(tree(pid)):
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
        if i == 0:
            total += t.children_user + t.children_system
    return total


def _vm_hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_peak_rss_bytes(pid: int) -> int:
    """Peak resident set (VmHWM) summed over a worker's processes (prefork: main + children)."""
    total = 0
    for p in tree(pid):
        total += _vm_hwm(p.pid) or _rss(p)
    return total


def _rss(p) -> int:
    try:
        return p.memory_info().rss
    except psutil.NoSuchProcess:
        return 0


def kill_leftovers(marker: str) -> list[int]:
    """Stop processes whose command line contains ``marker`` (our run id): used by the smoke test."""
    killed = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.info["pid"] == os.getpid():
            continue
        if any(marker in part for part in (p.info["cmdline"] or [])):
            try:
                p.kill()
                killed.append(p.info["pid"])
            except psutil.NoSuchProcess:
                pass
    return killed
