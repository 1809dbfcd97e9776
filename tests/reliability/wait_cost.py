"""What REDIS_MIN_REPLICAS_ACK=1 (WAIT after the claim, and after the outbox entry at publish) costs per payment.

    .venv/bin/python -m tests.reliability.wait_cost [--payments 2000] [--rounds 6] [--threads 1,8] [--end-to-end N]

One Sentinel group of our own on loopback (tests/support/sentinel.py: a primary, two replicas, three sentinels),
one results store over the Sentinel client, and the store calls one payment makes on the hot path: the outbox
entry at publish, the claim (with attempt 1 journaled) and the final transition (which removes nothing more: the
claim already took the outbox entry). The same work runs with ``replicas=0`` and ``replicas=1``, in alternating
batches on the same group (the order flips every round), sequentially and from several threads at once; it prints
the wall time per payment of each side and the ratio WAIT/no WAIT. A ratio, measured side by side: not a promise
about another machine. (It lives in tests/ because it is built on the test harness's Sentinel group.)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def one_payment(store, n: int, tag: str) -> None:
    pid = f"wait-{tag}-{n}"
    store.outbox.put(f"task-{pid}", {"name": "payments.sale", "body": [[], {}, {}], "headers": {"id": pid}})
    claim = store.claim(pid, "sale", owner=f"w-{tag}", lease_seconds=30, message_id=f"task-{pid}", journal=True,
                        fields={"amount": "3.00"})
    assert claim.kind == "claimed", claim
    assert store.transition(pid, "APPROVED", owner=f"w-{tag}", sent=True, fields={"trans_id": "100000000001"})


def batch(store, payments: int, threads: int) -> float:
    """Seconds of wall time per payment for ``payments`` payments over ``threads`` threads."""
    tag = uuid.uuid4().hex[:8]
    per = payments // threads

    def work(t: int) -> None:
        for i in range(per):
            one_payment(store, t * per + i, tag)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    started = time.perf_counter()
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return (time.perf_counter() - started) / (per * threads)


def end_to_end(payments: int, *, rounds: int) -> dict:
    """The failover scenario without failovers or faults (tests/reliability/sentinel_scenarios.py), with the workers
    and the producer at REDIS_MIN_REPLICAS_ACK 0 and 1 in turn: seconds from the first publish until every payment
    is final, per payment."""
    import os

    from tests.reliability.sentinel_scenarios import run_sentinel_failovers
    from tests.support.env import TEST_CARD_KEY

    os.environ.update({"PAYMENTS_CARD_KEY": TEST_CARD_KEY, "BLUEPAY_MODE": "TEST"})
    logdir = Path(tempfile.mkdtemp(prefix="wait-cost-e2e-"))
    per: dict[int, list[float]] = {0: [], 1: []}
    for r in range(rounds):
        for acks in ((0, 1) if r % 2 == 0 else (1, 0)):
            report = run_sentinel_failovers(f"wait-e2e-{acks}-{r}", logdir, payments=payments, failovers=0,
                                            faults=False, rate=200.0, replicas_ack=acks)
            if report.problems:
                raise SystemExit(f"end to end, REDIS_MIN_REPLICAS_ACK={acks}: {report.problems[:5]}")
            per[acks].append(report.details["processing_seconds"] / report.payments)
            print(f"end to end, REDIS_MIN_REPLICAS_ACK={acks}: {report.payments} payments in "
                  f"{report.details['processing_seconds']} s", flush=True)
    without, with_wait = statistics.median(per[0]), statistics.median(per[1])
    return {"ms_per_payment_without_wait": round(without * 1e3, 2),
            "ms_per_payment_with_wait": round(with_wait * 1e3, 2),
            "ratio_with_over_without": round(with_wait / without, 2), "payments_per_run": payments, "rounds": rounds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--payments", type=int, default=2000, help="payments per batch (default 2000)")
    p.add_argument("--rounds", type=int, default=6, help="batches of each side (default 6)")
    p.add_argument("--threads", default="1,8", help="comma-separated thread counts (default 1,8)")
    p.add_argument("--end-to-end", type=int, default=0, metavar="N",
                   help="also N payments end to end (producer, 2 prefork workers, sandbox) per side and round")
    args = p.parse_args(argv)

    import dataclasses

    from tests.support.sentinel import SentinelGroup
    from worker.config import Settings
    from worker.redis_connections import store_client
    from worker.store import ResultsStore

    results: dict = {}
    with SentinelGroup(Path(tempfile.mkdtemp(prefix="wait-cost-"))) as group:
        settings = dataclasses.replace(Settings(), **group.settings_overrides())
        client = store_client(settings)
        prefix = f"wait-cost:{uuid.uuid4().hex[:6]}:"
        stores = {acks: ResultsStore(client, prefix=prefix, replicas=acks, replica_timeout=1.0) for acks in (0, 1)}
        for threads in (int(t) for t in args.threads.split(",")):
            times: dict[int, list[float]] = {0: [], 1: []}
            batch(stores[0], min(200, args.payments), threads)  # warm up: connections, script cache
            for r in range(args.rounds):
                for acks in ((0, 1) if r % 2 == 0 else (1, 0)):
                    times[acks].append(batch(stores[acks], args.payments, threads))
            without, with_wait = statistics.median(times[0]), statistics.median(times[1])
            results[f"threads={threads}"] = {
                "us_per_payment_without_wait": round(without * 1e6, 1),
                "us_per_payment_with_wait": round(with_wait * 1e6, 1),
                "ratio_with_over_without": round(with_wait / without, 2),
                "wait_cost_us_per_payment": round((with_wait - without) * 1e6, 1),
            }
            print(f"threads={threads}: {results[f'threads={threads}']}", flush=True)
        client.close()
    if args.end_to_end:
        results["end_to_end"] = end_to_end(args.end_to_end, rounds=2)
    print(json.dumps({"payments_per_batch": args.payments, "rounds": args.rounds, **results}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
