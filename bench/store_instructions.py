"""Instructions a sale's store calls cost inside Redis, counted by callgrind: ``python -m bench.store_instructions
[--sales N] [--in-flight K] [--against OTHER_TREE]``.

Redis CPU time moves with whatever else the host runs; the number of instructions redis-server executes does not
(the same code, data and order give the same count to ~1-2 %, whatever the load), so small changes to the store's
Lua are compared here. A throw-away ``valgrind --tool=callgrind redis-server``; per tree (this checkout, and
``--against`` another, e.g. a ``git worktree`` of the commit before a change), in a child process with that tree's
code: ``idx:time`` pre-filled with 2,000 entries (a store that has run a while), then N sales through
``ResultsStore`` in batches of K (the payments in flight: ``idx:non_final`` holds K), each batch's outbox entries,
claims (attempt 1 journaled and fenced) and final writes (APPROVED, with Celery's result and the ack) as
``bench.store_micro`` makes them; one batch first, not counted. Callgrind's counters are zeroed before and read after
each batch's claims and each batch's final writes (``callgrind_control``): instructions per claim and per final
write, everything redis-server did for them (reading and parsing the call, the function, the reply).

Needs valgrind (Debian: ``apt-get install valgrind``). Slow: ~1 minute per tree for the defaults.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _counted(pid: int, out_dir: str) -> int:
    """Dump callgrind's counters (instructions since the last zeroing) and return the total."""
    before = set(os.listdir(out_dir))
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = [n for n in set(os.listdir(out_dir)) - before if n.startswith("callgrind.out")]
        if new:
            path = os.path.join(out_dir, new[0])
            time.sleep(0.2)  # written in one go, but not atomically
            with open(path) as f:
                for line in f:
                    if line.startswith(("summary:", "totals:")):
                        total = int(line.split()[1])
            os.remove(path)
            return total
        time.sleep(0.05)
    raise RuntimeError("callgrind wrote no dump")


def _zero(pid: int) -> None:
    subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, capture_output=True)


def child(url: str, server_pid: int, out_dir: str, sales: int, in_flight: int) -> dict[str, float]:
    """This tree's store against the counted server: instructions per claim and per final write."""
    import redis

    from bench.store_micro import ANSWER, FIELDS
    from worker.store import ResultsStore, final_write
    from worker.store.final_write import OUTCOME_PLACEHOLDER

    r = redis.Redis.from_url(url)
    r.flushall()
    r.zadd("payments:idx:time", {f"earlier-{i}": 1_765_000_000 + i for i in range(2000)})
    store = ResultsStore(r, prefix="payments:")
    owner = "bench:1:store"
    fenced_in_claim = "fence_for" in inspect.signature(store.claim).parameters
    totals = {"claim": 0, "final_write": 0}
    counted = 0
    for batch in range(sales // in_flight + 1):
        pids = [str(uuid.uuid4()) for _ in range(in_flight)]
        for pid in pids:
            store.outbox.put(pid, {"name": "payments.sale", "body": [[], {}, {}]})
        _zero(server_pid)
        for pid in pids:
            kw: dict[str, Any] = dict(fields=dict(FIELDS, order_id=pid), owner=owner, lease_seconds=30.0,
                                      message_id=pid, journal=True, fingerprints=["f" * 64])
            if fenced_in_claim:
                kw["fence_for"] = 300.0
            claim = store.claim(pid, "sale", **kw)
            if not fenced_in_claim or claim.fenced_at is None:
                store.fence(pid, owner, 30.0, 300.0)
        claims = _counted(server_pid, out_dir)
        _zero(server_pid)
        for i, pid in enumerate(pids):
            meta = json.dumps({"status": "SUCCESS", "result": OUTCOME_PLACEHOLDER, "traceback": None, "children": [],
                               "date_done": "2026-12-08T00:00:00.000000+00:00", "task_id": pid})
            then = final_write.FinalWrite(task_id=pid, result_key=f"celery-task-meta-{pid}", meta=meta,
                                          expires=86400, unacked_key="unacked", unacked_index_key="unacked_index",
                                          delivery_tag=pid)
            written = store.transition(pid, "APPROVED", fields=dict(ANSWER, trans_id=f"{10**11 + batch * 1000 + i}"),
                                       expect=("PENDING",), owner=owner, sent=True, note="Approved Sale", then=then)
            assert written is not None
        finals = _counted(server_pid, out_dir)
        if batch:  # the first batch warms the library and the clock's caches
            totals["claim"] += claims
            totals["final_write"] += finals
            counted += in_flight
    return {k: v / counted for k, v in totals.items()}


def _start_counted_redis() -> tuple[subprocess.Popen[bytes], str, int, str]:
    sys.path.insert(0, str(ROOT))
    from bench import procs

    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        raise SystemExit("needs valgrind (Debian: apt-get install valgrind)")
    port = procs.free_port()
    out_dir = tempfile.mkdtemp(prefix="bench-callgrind-")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/callgrind.out.%p",
         "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", out_dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if redis.Redis.from_url(url, socket_connect_timeout=1).ping():
                return proc, url, port, out_dir
        except redis.RedisError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("redis-server under valgrind did not start")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--sales", type=int, default=300)
    ap.add_argument("--in-flight", type=int, default=50, help="sales claimed before their final writes")
    ap.add_argument("--against", type=Path, help="another checkout of the project, counted after this one")
    ap.add_argument("--child", nargs=3, metavar=("URL", "PID", "DIR"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        url, pid, out_dir = a.child
        print(json.dumps(child(url, int(pid), out_dir, a.sales, a.in_flight)))
        return 0
    proc, url, _port, out_dir = _start_counted_redis()
    try:
        trees = {"this": ROOT, **({"against": a.against.resolve()} if a.against else {})}
        summary = {}
        for name, tree in trees.items():
            env = dict(os.environ, PYTHONPATH=str(tree))  # this file, with the tree's worker/ and bench/
            out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--sales", str(a.sales),
                                  "--in-flight", str(a.in_flight), "--child", url, str(proc.pid), out_dir],
                                 cwd=tree, env=env, capture_output=True, text=True, check=True)
            summary[name] = {k: round(v) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}
            row = summary[name]
            print(f"{name} ({tree}): per claim {row['claim'] / 1000:.1f}k, per final write "
                  f"{row['final_write'] / 1000:.1f}k, both {(row['claim'] + row['final_write']) / 1000:.1f}k "
                  f"instructions ({a.in_flight} in flight)")
        print(json.dumps(summary))
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(out_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
