"""The reliability scenarios of tests/reliability at a larger size, with a summary table.

    .venv/bin/python -m tests.reliability.large --payments 2000

(It lived in bench/ as ``bench/reliability.py``; it is built on the test scenarios and the test card
scanner, and the installed ``bench`` package must not import ``tests``.)

Runs against redis-server processes of its own (a throwaway one, and one with AOF for the restart
scenario), so it never touches the Redis at REDIS_URL; needs ``redis-server`` on the PATH. Real
``celery worker`` processes, the BluePay sandbox over HTTP, the sandbox's ledger as the truth of what
was charged. Scenarios (sizes from ``--payments N``):

* kills+faults: N sales (30 % chained with a void) while 30 % of gateway requests fail in six ways and
  worker processes are SIGKILLed every few seconds (prefork children; every third kill a whole worker,
  fenced: stopped while its BRPOP waits, see tests/reliability/scenarios.py);
* raw kills: N/4 sales with whole workers SIGKILLed at any moment (kombu's fetch gap included);
* Redis restart: N/4 sales while our AOF Redis is restarted three times (SHUTDOWN, SIGTERM, SIGKILL) with
  payments in flight, each time with every worker at a safe point (fenced); workers under a supervisor
  that restarts the ones that exit;
* raw Redis restart: the same, restarted at any moment (kombu's fetch gap included);
* duplicate delivery: N/20 operations each delivered twice at once to two workers;
* concurrent sweeps: N/20 authorizations voided by sweeps running at once;
* late commits: N sales with the gateway's duplicate rule off while 30 % of gateway requests fail, half of
  them held past the read timeout and committed later (``late_commit``), the rest refused, 502 or dropped after
  the commit; prefork children and whole workers SIGKILLed as in kills+faults;
* Sentinel kills: N payments (sales, chains, auths and their captures) through a Redis Sentinel group of our own
  (three redis-server, three sentinels) whose primary is SIGKILLed three times (the old one back as a replica),
  gateway faults on; Sentinel partition: N/4 while the primary is SIGSTOPped through a failover and resumed;
* clock skew: N/50 sales in flight (and 6 late-committed ones) delivered again to a worker whose clock runs
  two minutes ahead (``faketime``; left out, with a message, when the faketime binary is missing).

The sales scenarios (kills+faults, raw kills, late commits) end as a day ends: ``payments reconcile`` over the
run's days against the sandbox's daily report; every difference it finds is a problem.

Prints one line per event, then the table (payments, faults injected, kills, duplicates charged, stored
outcomes that disagree with the ledger, payments lost, payments not in a final state, card-data hits), every
problem found, and a final line of JSON. Exit status 1 when a promise was broken (a duplicate charge, a stored
outcome that disagrees with the ledger, a payment lost or not final, card data in clear).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--payments", type=int, default=2000, help="sales in the main scenario (default 2000)")
    p.add_argument("--rate", type=float, default=25.0, help="sales published per second (default 25)")
    p.add_argument("--kill-every", type=float, default=3.0, help="seconds between SIGKILLs (default 3)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--workdir", default=None, help="logs and Redis data (default: a new temporary directory)")
    p.add_argument("--only", default=None, help="comma-separated scenario names to run")
    return p.parse_args(argv)


def scenarios(args, plain, durable, logdir: Path, say) -> dict:
    """Scenario name -> a function running it at the size ``--payments`` asks for."""
    from tests.reliability.scenarios import (
        faketime_offset,
        run_clock_skew,
        run_concurrent_sweeps,
        run_duplicate_delivery,
        run_late_commits,
        run_payments_under_chaos,
        run_redis_restart,
        run_stalled_holder,
    )
    from tests.reliability.sentinel_scenarios import run_sentinel_failovers

    n = args.payments
    runs = {
        "kills+faults": lambda: run_payments_under_chaos(
            "kills+faults", plain.url, logdir, payments=n, kill_every=args.kill_every, faults=True, rate=args.rate,
            seed=args.seed, settle_timeout=600, sweep_during_faults=True, log=say),
        "raw kills": lambda: run_payments_under_chaos(
            "raw-kills", plain.url, logdir, payments=max(100, n // 4), kill_every=args.kill_every, faults=False,
            rate=args.rate, seed=args.seed + 1, settle_timeout=600, fenced_kills=False, log=say),
        "Redis restart": lambda: run_redis_restart(
            "redis-restart", durable, logdir, payments=max(100, n // 4), restarts=("shutdown", "term", "kill"),
            rate=args.rate, seed=args.seed + 2, settle_timeout=600, fenced=True, latency_ms=(300, 400), log=say),
        "raw Redis restart": lambda: run_redis_restart(
            "raw-redis-restart", durable, logdir, payments=max(100, n // 4), restarts=("shutdown", "term", "kill"),
            rate=args.rate, seed=args.seed + 5, settle_timeout=600, log=say),
        "duplicate delivery": lambda: run_duplicate_delivery(
            "duplicates", plain.url, logdir, pairs=max(20, n // 40), seed=args.seed + 3, log=say),
        "concurrent sweeps": lambda: run_concurrent_sweeps(
            "sweeps", plain.url, logdir, auths=max(20, n // 20), seed=args.seed + 4, log=say),
        "late commits": lambda: run_late_commits(
            "late-commits", plain.url, logdir, payments=n, kill_every=args.kill_every, rate=args.rate,
            seed=args.seed + 6, settle_timeout=600, log=say),
        "Sentinel kills": lambda: run_sentinel_failovers(
            "sentinel-kills", logdir, payments=n, failovers=3, mode="kill", seed=args.seed + 8, settle_timeout=600,
            log=say),
        "Sentinel partition": lambda: run_sentinel_failovers(
            "sentinel-partition", logdir, payments=max(100, n // 4), failovers=1, mode="pause", seed=args.seed + 9,
            settle_timeout=600, log=say),
        "stalled holder": lambda: run_stalled_holder(
            "stall", plain.url, logdir, payments=max(3, n // 20), seed=args.seed + 10, settle_timeout=600, log=say),
        "clock skew": lambda: run_clock_skew(
            "clock-skew", plain.url, logdir, in_flight=max(16, n // 50), late=6, seed=args.seed + 7, log=say),
    }
    if faketime_offset() is None:
        say("clock skew: left out (needs the faketime binary: Debian package faketime)")
        del runs["clock skew"]
    return runs


def summarize(reports, hits, scanned, workdir: Path, elapsed: float) -> int:
    """Print the table, the final scan, every problem and the JSON line; 1 when a promise was broken."""
    from tests.reliability.scenarios import table

    print()
    print(table(reports))
    print()
    print(f"final scan for card data in clear: {len(hits)} hit(s) in {scanned['redis_keys']} Redis keys and "
          f"{scanned['files']} files (logs, AOF)")
    print(f"logs and Redis data: {workdir}")
    broken = [f"{r.scenario}: {p}" for r in reports for p in r.problems] + [f"scan: {h}" for h in hits]
    for r in reports:
        extra = {k: v for k, v in r.details.items() if k not in ("kill_events", "events", "sweep_results")}
        print(f"{r.scenario}: statuses {dict(r.statuses)}; {json.dumps(extra, default=str)[:600]}")
    if broken:
        print(f"\n{len(broken)} problem(s):")
        for line in broken[:100]:
            print(f"  {line}")
    summary = {"payments": sum(r.payments for r in reports), "faults_injected": sum(r.faults for r in reports),
               "kills": sum(r.kills for r in reports), "redis_restarts": sum(r.restarts for r in reports),
               "duplicates_charged": sum(r.duplicates for r in reports),
               "store_ledger_disagreements": sum(r.disagreements for r in reports),
               "lost": sum(r.lost for r in reports),
               "not_final": sum(r.not_final for r in reports),
               "card_data_hits": sum(r.card_hits for r in reports) + len(hits), "problems": len(broken),
               "seconds": round(elapsed)}
    print(json.dumps(summary, sort_keys=True))
    return 1 if broken else 0


def main(argv=None) -> int:
    args = parse_args(argv)

    import logging

    from tests.reliability.scenarios import OwnRedis, scan_card_data
    from tests.support.env import TEST_CARD_KEY

    # The sweeps run in this process too; their per-record warnings (deferred voids) would drown the output.
    logging.basicConfig(level=logging.ERROR)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="reliability-"))
    workdir.mkdir(parents=True, exist_ok=True)
    logdir = workdir / "logs"
    logdir.mkdir(exist_ok=True)

    plain = OwnRedis(workdir / "redis", aof=False).start()
    durable = OwnRedis(workdir / "redis-aof").start()
    # The producer (this process) encrypts cards with the same key as the workers; TEST mode only.
    os.environ.update({"REDIS_URL": plain.url, "PAYMENTS_CARD_KEY": TEST_CARD_KEY, "BLUEPAY_MODE": "TEST"})
    started = time.monotonic()

    def say(text):
        if not text.startswith("sweep:"):
            print(f"[{time.monotonic() - started:7.1f}s] {text}", flush=True)

    runs = scenarios(args, plain, durable, logdir, say)
    wanted = [s.strip() for s in args.only.split(",")] if args.only else list(runs)
    reports = []
    try:
        for name in wanted:
            say(f"=== {name}")
            report = runs[name]()
            report.scenario = name
            reports.append(report)
            say(f"{name}: {report.row()}")
        say("=== card-data scan of every Redis key and value, the AOF files and every log")
        logs = [f for f in logdir.rglob("*") if f.is_file()]
        hits = scan_card_data(clients=[plain.client(), durable.client()], files=logs + durable.files())
        scanned = {"redis_keys": plain.client().dbsize() + durable.client().dbsize(), "files": len(logs) + len(
            durable.files())}
    finally:
        plain.stop("kill")
        durable.stop("shutdown")
    return summarize(reports, hits, scanned, workdir, time.monotonic() - started)


if __name__ == "__main__":
    sys.exit(main())
