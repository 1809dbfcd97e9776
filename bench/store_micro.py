"""Redis work of one sale's store calls alone: ``python -m bench.store_micro [--payments N] [--rounds R]``.

A throw-away redis-server; per round, N sales through ``ResultsStore`` on one client, as the flow makes them: the
producer's outbox entry, the claim with attempt 1 journaled (and its fence: in the claim where the store can, else
``fence``), and the final write (the APPROVED transition with Celery's result and the message's ack). Per payment:
Redis CPU (``INFO cpu`` user+sys: the server's own CPU time, less sensitive to a busy host than wall time), commands
(``INFO commandstats``, a function's inner commands included), function calls and their microseconds (commandstats:
wall time inside the call, inner commands included), round trips. Median and min-max over the rounds, then one line
of JSON. ``--merchant NAME``: sales of another account than ``default`` (its time index and counts).
``--against TREE`` runs the same with another checkout's code (e.g. ``git worktree``/``git archive`` of the
commit before a change), the two alternating round by round in child processes, each on its own server.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIELDS = {"amount": "3.00", "masked_account": "xxxxxxxxxxxx1111"}
ANSWER = {"trans_id": "", "message": "Approved Sale", "avs": "_", "cvv2": "M", "auth_code": "CURC99",
          "card_type": "VISA", "bank_name": "", "trans_type": "SALE", "masked_account": "xxxxxxxxxxxx1111"}


def _sale(store: Any, final_write: Any, i: int) -> None:
    from worker.store.final_write import OUTCOME_PLACEHOLDER

    pid = str(uuid.uuid4())
    owner = "bench:1:store"
    store.outbox.put(pid, {"name": "payments.sale", "body": [[], {}, {}]})
    merchant = os.environ.get("STORE_MICRO_MERCHANT", "")  # --merchant: another account's sales
    fields = dict(FIELDS, order_id=pid, **({"merchant": merchant} if merchant else {}))
    claim_kw: dict[str, Any] = dict(fields=fields, owner=owner, lease_seconds=30.0,
                                    message_id=pid, journal=True, fingerprints=["f" * 64])
    fenced_in_claim = "fence_for" in inspect.signature(store.claim).parameters
    if fenced_in_claim:
        claim_kw["fence_for"] = 300.0
    claim = store.claim(pid, "sale", **claim_kw)
    if not fenced_in_claim or claim.fenced_at is None:
        store.fence(pid, owner, 30.0, 300.0)
    meta = json.dumps({"status": "SUCCESS", "result": OUTCOME_PLACEHOLDER, "traceback": None, "children": [],
                       "date_done": "2026-12-08T00:00:00.000000+00:00", "task_id": pid})
    then = final_write.FinalWrite(task_id=pid, result_key=f"celery-task-meta-{pid}", meta=meta, expires=86400,
                                  unacked_key="unacked", unacked_index_key="unacked_index", delivery_tag=pid)
    written = store.transition(pid, "APPROVED", fields=dict(ANSWER, trans_id=f"{100000000000 + i}"),
                               expect=("PENDING",), owner=owner, sent=True, note="Approved Sale", then=then)
    assert written is not None


def _stats(r: Any) -> tuple[float, dict[str, tuple[int, int]], int]:
    cpu = r.info("cpu")
    cmds = {k[len("cmdstat_"):]: (int(v["calls"]), int(v["usec"])) for k, v in r.info("commandstats").items()
            if k.startswith("cmdstat_")}
    return (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), cmds,
            int(r.info("stats")["total_reads_processed"]))


def child(payments: int) -> dict[str, float]:
    """One round in this process (the code on its own sys.path): figures per payment."""
    import redis

    from bench import procs
    from worker.store import ResultsStore, final_write

    proc, url, tmp = procs.start_private_redis()
    try:
        r = redis.Redis.from_url(url)
        store = ResultsStore(r, prefix="payments:")
        for i in range(50):  # warm: the library loaded, the connection made
            _sale(store, final_write, i)
        cpu0, cmds0, reads0 = _stats(r)
        for i in range(payments):
            _sale(store, final_write, 1000 + i)
        cpu1, cmds1, reads1 = _stats(r)
    finally:
        procs.stop(proc, timeout=5)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    own = {"info": 3}  # the second _stats's INFO calls
    calls = {k: cmds1[k][0] - cmds0.get(k, (0, 0))[0] - own.get(k, 0) for k in cmds1}
    fcall = (cmds1.get("fcall", (0, 0))[1] - cmds0.get("fcall", (0, 0))[1])
    return {"redis_cpu_us": (cpu1 - cpu0) * 1e6 / payments,
            "commands": sum(v for v in calls.values() if v > 0) / payments,
            "functions": calls.get("fcall", 0) / payments,
            "function_us": fcall / payments,
            "round_trips": (reads1 - reads0 - 3) / payments}


def _run_child(tree: Path, payments: int) -> dict[str, float]:
    # this file, with the tree's worker/ and bench/ first on the path (the tree need not have this file)
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--payments", str(payments)],
                         cwd=tree, env=env, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--payments", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--against", type=Path, help="another checkout of the project, measured alternately")
    ap.add_argument("--merchant", default="", help="sales of this account other than default (its index and counts)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.merchant:
        os.environ["STORE_MICRO_MERCHANT"] = a.merchant  # the children too
    if a.child:
        print(json.dumps(child(a.payments)))
        return 0
    sides = {"this": ROOT, **({"against": a.against.resolve()} if a.against else {})}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    for _ in range(a.rounds):
        for name, tree in sides.items():
            runs[name].append(_run_child(tree, a.payments))
    print_spread(runs, {name: f"{name} ({tree}), {a.rounds} rounds of {a.payments} sales, per payment"
                        for name, tree in sides.items()})
    return 0


def print_spread(runs: dict[str, list[dict[str, float]]], headings: dict[str, str]) -> None:
    """Each side's figures as median (min-max) over its rounds, under its heading, then all of them as one line of
    JSON (bench.fetch_micro prints its sides the same way)."""
    summary: dict[str, dict[str, list[float]]] = {}
    for name, rows in runs.items():
        print(f"{headings[name]}: median (min-max)")
        summary[name] = {}
        for key in rows[0]:
            values = [row[key] for row in rows]
            summary[name][key] = [round(statistics.median(values), 2), round(min(values), 2), round(max(values), 2)]
            med, lo, hi = summary[name][key]
            print(f"  {key:16s} {med:9.2f} ({lo:.2f}-{hi:.2f})")
    print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
