"""The worker's metrics endpoint (worker/ops/metrics.py) on real sockets and files, each case in a fresh Python process
(multiprocess mode is chosen per process): a port already taken leaves the other worker's directory alone and runs
without metrics; a bound port empties its directory and serves the sum of every process's files; the in-flight
gauge of a process that is gone is dropped at the next scrape, its counters stay."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})


def test_a_port_already_taken_runs_without_metrics_and_leaves_the_directory_alone(tmp_path):
    port = free_port()
    other = tmp_path / "other-workers-files"
    other.mkdir()
    (other / "counter_1.db").write_bytes(b"the other worker's counts")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = run(f"""
            from worker.ops import metrics
            print(metrics.start({port}, "127.0.0.1"), metrics.observer())
        """, {"PROMETHEUS_MULTIPROC_DIR": str(other)})
    assert done.stdout.split() == ["False", "None"], done.stdout + done.stderr
    assert "runs WITHOUT metrics" in done.stderr
    assert (other / "counter_1.db").read_bytes() == b"the other worker's counts"


def test_a_bound_port_empties_its_directory_and_serves_every_process_and_drops_the_gone_ones_in_flight(tmp_path):
    port = free_port()
    mp_dir = tmp_path / "mp"
    mp_dir.mkdir()
    (mp_dir / "counter_999999.db").write_bytes(b"an earlier run's")
    done = run(f"""
        import os, requests
        from worker.ops import metrics
        assert metrics.start({port}, "127.0.0.1")
        assert not os.path.exists({str(mp_dir / "counter_999999.db")!r}), "not emptied"
        mine = metrics.observer()
        mine.outcome("sale", "APPROVED", "3.00")
        mine.in_flight("sale", 1)
        pid = os.fork()
        if pid == 0:  # a prefork child: counts, holds one operation, and dies without saying so
            metrics.child_started()
            metrics.observer().outcome("sale", "DECLINED", "4.00")
            metrics.observer().in_flight("sale", 1)
            metrics.observer().for_merchant("shop2").outcome("sale", "APPROVED", "5.00")  # another account's
            os._exit(0)
        os.waitpid(pid, 0)
        text = requests.get("http://127.0.0.1:{port}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(("payments_operations_total", "payments_in_flight")):
                print(line)
        metrics.stop()
    """, {"PROMETHEUS_MULTIPROC_DIR": str(mp_dir)})
    lines = done.stdout.splitlines()
    assert 'payments_operations_total{merchant="default",operation="sale",status="APPROVED"} 1.0' in lines, \
        done.stdout + done.stderr
    assert 'payments_operations_total{merchant="default",operation="sale",status="DECLINED"} 1.0' in lines  # summed
    assert 'payments_operations_total{merchant="shop2",operation="sale",status="APPROVED"} 1.0' in lines  # its own
    assert 'payments_in_flight{merchant="default",operation="sale"} 1.0' in lines  # the parent's only: child gone
