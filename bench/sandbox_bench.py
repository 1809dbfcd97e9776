"""Load-test the BluePay sandbox with many concurrent keep-alive connections.

    .venv/bin/python bench/sandbox_bench.py --connections 200 --seconds 10

Starts ``python -m worker.sandbox --port 0`` as a subprocess (unless ``--url`` points at a
running one), opens N keep-alive connections (one thread + ``http.client`` connection each)
and sends sealed SALE requests to ``/interfaces/bp10emu`` for the given time. Prints
requests/s and latency percentiles, then one final line of JSON.

Client and server share this machine's cores, so the figures are a floor for the server,
not a property of it; compare runs made on the same machine.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT = "100000000001"
SECRET = "SANDBOXSECRETKEY0000000000000000"


def start_sandbox(extra: list[str]) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("SANDBOX_FAULTS", None)
    proc = subprocess.Popen([sys.executable, "-m", "worker.sandbox", "--port", "0",
                             "--account-id", ACCOUNT, "--secret-key", SECRET, *extra],
                            cwd=str(ROOT), env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None  # stdout=PIPE
    line = proc.stdout.readline().strip()
    if not line.startswith("sandbox listening on "):
        proc.kill()
        raise SystemExit(f"sandbox did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1]


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100.0 * (len(sorted_values) - 1))))
    return sorted_values[k]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds not measured at the start")
    ap.add_argument("--url", default=None, help="use a running sandbox (its account/secret must be the demo ones)")
    ap.add_argument("--sandbox-arg", action="append", default=[], help="extra argument for the sandbox")
    return ap.parse_args(argv)


def sale_body() -> str:
    """A sealed 3.00 SALE form body (ORDER_ID appended per request)."""
    seal = hmac.new(SECRET.encode(), (ACCOUNT + "SALE3.00TEST").encode(), hashlib.sha512).hexdigest()
    return urllib.parse.urlencode({
        "MERCHANT": ACCOUNT, "TRANSACTION_TYPE": "SALE", "PAYMENT_TYPE": "CREDIT", "AMOUNT": "3.00",
        "MODE": "TEST", "TPS_HASH_TYPE": "HMAC_SHA512", "TAMPER_PROOF_SEAL": seal,
        "CC_NUM": "4111111111111111", "CC_EXPIRES": "1230", "CVCCVV2": "123",
        "NAME1": "Bob", "NAME2": "Tester", "RESPONSEVERSION": "20"})


class Load:
    """N client threads, one keep-alive connection each, sending SALEs until ``stop_at``."""

    HEADERS: ClassVar[dict[str, str]] = {"Content-Type": "application/x-www-form-urlencoded"}

    def __init__(self, host: str, port: int, connections: int):
        self.host, self.port = host, port
        self.base_body = sale_body()
        self.start_evt = threading.Event()
        self.measure_from = 0.0
        self.stop_at = 0.0
        self.lat: list[list[float]] = [[] for _ in range(connections)]
        self.errors = [0] * connections
        self.approved = [0] * connections
        self.connected = threading.Semaphore(0)

    def _send(self, conn, i: int, n: int):
        """One SALE: (approved?, the connection to use next)."""
        try:
            conn.request("POST", "/interfaces/bp10emu", f"{self.base_body}&ORDER_ID=b{i}-{n}", self.HEADERS)
            resp = conn.getresponse()
            resp.read()
            return resp.status == 302 and "Result=APPROVED" in (resp.getheader("Location") or ""), conn
        except (OSError, http.client.HTTPException):
            conn.close()
            return False, http.client.HTTPConnection(self.host, self.port, timeout=30)

    def client(self, i: int) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.connect()
        finally:
            self.connected.release()
        self.start_evt.wait()
        n = 0
        mine = self.lat[i]
        while True:
            t0 = time.perf_counter()
            if t0 >= self.stop_at:
                break
            n += 1
            ok, conn = self._send(conn, i, n)
            t1 = time.perf_counter()
            if t0 >= self.measure_from:
                mine.append(t1 - t0)
                if ok:
                    self.approved[i] += 1
                else:
                    self.errors[i] += 1
        conn.close()

    def run(self, warmup: float, seconds: float) -> None:
        threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(len(self.lat))]
        for t in threads:
            t.start()
        for _ in threads:
            self.connected.acquire()
        now = time.perf_counter()
        self.measure_from = now + warmup
        self.stop_at = now + warmup + seconds
        self.start_evt.set()
        for t in threads:
            t.join(warmup + seconds + 60)


def fetch_stats(host: str, port: int) -> dict | None:
    try:
        c = http.client.HTTPConnection(host, port, timeout=10)
        c.request("GET", "/sandbox/stats")
        stats = json.loads(c.getresponse().read())
        c.close()
        return stats
    except (OSError, ValueError):
        return None


def report(args: argparse.Namespace, load: Load, stats: dict | None) -> int:
    all_lat = sorted(x for per in load.lat for x in per)
    total = len(all_lat)
    rps = total / args.seconds
    p50, p99 = percentile(all_lat, 50) * 1000, percentile(all_lat, 99) * 1000
    result = {
        "connections": args.connections, "seconds": args.seconds, "requests": total,
        "requests_per_s": round(rps, 1), "p50_ms": round(p50, 2), "p99_ms": round(p99, 2),
        "max_ms": round(all_lat[-1] * 1000, 2) if all_lat else None,
        "errors": sum(load.errors), "approved": sum(load.approved),
        "server_connections_peak": (stats or {}).get("connections", {}).get("peak"),
        "cpu_count": os.cpu_count(),
    }
    print(f"connections={args.connections} seconds={args.seconds} requests={total} errors={sum(load.errors)}")
    print(f"requests/s={rps:.1f} p50={p50:.2f} ms p99={p99:.2f} ms")
    print(json.dumps(result))
    return 0 if total and not sum(load.errors) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    proc = None
    url = args.url
    if url is None:
        proc, url = start_sandbox(args.sandbox_arg)
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port
    load = Load(host, port, args.connections)
    try:
        load.run(args.warmup, args.seconds)
        stats = fetch_stats(host, port)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    return report(args, load, stats)


if __name__ == "__main__":
    sys.exit(main())
