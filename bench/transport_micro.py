"""Client CPU of one gateway POST, ours (``worker.gateway.transport.HttpTransport``) beside the baseline's
(``requests.Session().post``, as bench/baseline.py sends): ``python -m bench.transport_micro [--posts N]``.

A child process answers every request on 127.0.0.1 with a fixed ``302`` (what bp10emu answers), so the figures are
the client's own: CPU of this thread (``time.thread_time``) per POST, over keep-alive connections, the two clients
alternating round by round (7 rounds; median and min-max printed, then one line of JSON). ``--against PATH`` times
another transport module's ``HttpTransport`` as well (e.g. an older ``transport.py``, to compare two versions in
one run).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

REPLY = (b"HTTP/1.1 302 Found\r\nLocation: https://example.invalid/?Result=APPROVED&TRANS_ID=100000000001"
         b"&MESSAGE=Approved%20Sale\r\nContent-Length: 0\r\n\r\n")
FIELDS = {"MERCHANT": "100000000001", "TRANSACTION_TYPE": "SALE", "AMOUNT": "3.00", "CC_NUM": "4111111111111111",
          "CC_EXPIRES": "1230", "NAME1": "Bob", "TAMPER_PROOF_SEAL": "0" * 128, "MODE": "TEST"}


def _serve(sock: socket.socket) -> None:
    """Answer each request (one ``recv`` per request: small bodies) with REPLY, one thread per connection."""
    import threading

    def handle(conn: socket.socket) -> None:
        with conn:
            try:
                while conn.recv(65536):
                    conn.sendall(REPLY)
            except OSError:  # the client went away
                return

    while True:
        conn, _ = sock.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def _clients(url: str, against: str | None) -> dict[str, Callable[[], object]]:
    import requests

    from worker.gateway.transport import HttpTransport

    ours = HttpTransport(connect_timeout=3.05, read_timeout=15)
    session = requests.Session()
    clients: dict[str, Callable[[], object]] = {
        "ours": lambda: ours.post(url, FIELDS),
        "baseline": lambda: session.post(url, data=FIELDS, allow_redirects=False, timeout=(3.05, 15)),
    }
    if against:
        # an older transport.py: relative imports (``.errors``) resolve against the package it was loaded beside
        module = _load_beside_package(against)
        other = module.HttpTransport(connect_timeout=3.05, read_timeout=15)
        clients["against"] = lambda: other.post(url, FIELDS)
    return clients


def _load_beside_package(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("worker.gateway._transport_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--posts", type=int, default=2000, help="POSTs per client per round (default 2000)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--against", default=None, help="another transport.py to time beside ours")
    args = p.parse_args(argv)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = multiprocessing.get_context("fork").Process(target=_serve, args=(sock,), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/interfaces/bp10emu"
        clients = _clients(url, args.against)
        runs: dict[str, list[float]] = {name: [] for name in clients}
        for post in clients.values():  # warm: connections open, code paths hot
            for _ in range(200):
                post()
        for rnd in range(args.rounds):
            order = list(clients) if rnd % 2 == 0 else list(reversed(clients))
            for name in order:
                post = clients[name]
                t = time.thread_time()
                for _ in range(args.posts):
                    post()
                runs[name].append((time.thread_time() - t) / args.posts * 1e6)
    finally:
        server.terminate()
        server.join(5)
        sock.close()
    result = {name: {"us_per_post": round(statistics.median(v), 1), "min": round(min(v), 1), "max": round(max(v), 1)}
              for name, v in runs.items()}
    for name, r in result.items():
        print(f"{name:9s} {r['us_per_post']:7.1f} us CPU per POST (min {r['min']}, max {r['max']}; "
              f"median of {args.rounds} x {args.posts})")
    ratios = {f"{name}/baseline": round(r["us_per_post"] / result["baseline"]["us_per_post"], 2)
              for name, r in result.items() if name != "baseline"}
    print(json.dumps({**result, **ratios}, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
