"""End-to-end benchmark: our payment worker against a bare Celery baseline, in one run.

    payments bench --payments 2000 --latency-ms 0,200 --pool gevent --concurrency 50 --repeat 3
    python -m bench.run ...            (the same)

What one run does
-----------------
* Redis: ``--redis-url`` (default ``redis://127.0.0.1:6379/13``, flushed at the start and the end;
  database 0 is refused) or ``--private-redis`` (a throw-away ``redis-server`` on a free port: the
  only way to get exact per-payment Redis command counts and Redis CPU when others share the server).
* The sandbox gateway (``python -m worker.sandbox --port 0 --duplicate-window 0``); the injected
  latency is set through ``POST /sandbox/faults`` and the ledger is reset before every measured run.
* For every pool x concurrency x ``--workers`` count: that many processes of OUR worker (``celery -A worker worker``)
  and as many of the BASELINE (``celery -A bench.baseline worker``, bench/baseline.py) with the
  same pool, concurrency and flags, all started once and kept warm.
* For every latency, ``--repeat`` times, alternating which side goes first:

  - capacity ("burst"): with the side's workers not consuming (``cancel_consumer``), the producer
    (this process) enqueues N payments with ``sale.delay(...)``, then ``add_consumer`` starts the
    clock; payments/s = N / (last recorded - start). Producer CPU does not compete with the
    workers here, so this is the workers' capacity. Enqueue->recorded percentiles of this phase are
    mostly queueing time (the queue was pre-filled) and are reported as such.
  - latency ("paced", unless ``--no-paced``): an open-loop producer enqueues N payments at
    ``--paced-fraction`` (0.5) x OUR median capacity, both sides at the same rate; latency is
    measured from each payment's scheduled send time (no coordinated omission) to its record.

What is measured
----------------
* recorded: ours = the results store record's ``updated_ts`` once final (APPROVED/DECLINED);
  baseline = the result backend's ``date_done``. Anything else, or nothing by ``--timeout``, is an error.
* worker CPU ms per payment: user+system CPU of the worker processes, their descendants and reaped
  children (psutil), before/after, divided by N. Not wall time.
* peak RSS per worker: VmHWM summed over a worker's processes (prefork: main + children), max over
  the workers of one side, for the whole life of the workers (warm-up and all latencies included).
* Redis commands per payment: ``INFO commandstats`` delta from before the enqueue to the end
  (commands run inside Lua scripts are counted by Redis too), minus the benchmark's own polling,
  divided by N; with a shared server other clients' traffic is included (``redis_exclusive``).
* the latency bound = concurrency x workers / latency (latency > 0 only); the CPU capacity = workers x
  1000 / worker CPU ms per payment (one worker process uses at most one core); ``ours/min(bound, CPU)``.
* Redis CPU ms per payment: ``INFO cpu`` (used_cpu_user + used_cpu_sys) delta / N, and the ceiling it implies
  for the whole system: one Redis core / Redis CPU per payment = payments/s (Redis runs commands on one thread).
* host load: the machine's CPU time used by other processes during the run (system-wide busy time minus
  the workers, this producer, the sandbox and Redis), in cores, and the load average at start and end.

Producer and result subscriptions
---------------------------------
With a Redis result backend every ``delay()`` SUBSCRIBEs the producer to the task's result channel
(Celery's ``backend.on_task_call``), and dropping the AsyncResult UNSUBSCRIBEs it again: a producer
that keeps its AsyncResults accumulates subscriptions. This producer fires and forgets: it takes
completion from the results store (ours) or the result keys (baseline), never ``.get()``, and by
default disables that subscription for both sides (``--producer-subscribe`` restores Celery's
default to measure what it costs).

Output: a table, ``OUT/bench-<timestamp>.json``, ``OUT/bench-<timestamp>.png`` and, as the LAST line
of stdout, one line of JSON with ``ours_per_s``, ``baseline_per_s``, ``bound_per_s``, ``ours_cpu_ms``,
``baseline_cpu_ms``, ``p99_ms`` (primary = first pool/concurrency/latency; ``p99_ms`` is ours' paced
p99, or the burst p99 with ``--no-paced``) and every configuration under ``configs``.
``--profile`` adds a py-spy profile of one extra (unmeasured) burst of each side.

Modules: this one (options, ``main``), ``bench.runner`` (processes and measuring), ``bench.sides``
(enqueue/poll/collect per side), ``bench.analysis`` (pure computations), ``bench.report`` (table,
chart, files, the JSON line), ``bench.baseline`` (the baseline's Celery app), ``bench.procs``.
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.runner import DEFAULT_REDIS_URL, Bench  # noqa: E402  (after the path set-up: python bench/run.py)


# ------------------------------------------------------------------------------------ arguments
def _list(kind):
    def parse(text):
        try:
            values = [kind(v) for v in str(text).split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a comma-separated list of {kind.__name__}: {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError("empty list")
        return values
    return parse


def _pools(text):
    pools = [p.strip() for p in str(text).split(",") if p.strip()]
    bad = [p for p in pools if p not in ("prefork", "threads", "gevent")]
    if bad or not pools:
        raise argparse.ArgumentTypeError(f"pool must be prefork, threads or gevent (got {text!r})")
    return pools


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="payments bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--payments", type=int, default=2000,
                   help="payments per measured run (default 2000: a burst's ramp and last round weigh less)")
    p.add_argument("--latency-ms", type=_list(float), default=[0.0, 200.0],
                   help="injected gateway latency, comma list (default 0,200)")
    p.add_argument("--pool", type=_pools, default=["gevent"], help="prefork|threads|gevent (comma list allowed)")
    p.add_argument("--concurrency", type=_list(int), default=[50], help="comma list (default 50)")
    p.add_argument("--workers", type=_list(int), default=[1],
                   help="worker processes per side, comma list (default 1; 1,2: scale-out, each measured side by side)")
    p.add_argument("--repeat", type=int, default=3, help="repetitions; medians are reported (default 3)")
    p.add_argument("--out", default=None, help="output directory (default bench/results/)")
    p.add_argument("--redis-url", default=None, help=f"Redis for broker/backend/store (default {DEFAULT_REDIS_URL})")
    p.add_argument("--private-redis", action="store_true", help="start a throw-away redis-server instead")
    p.add_argument("--no-paced", dest="paced", action="store_false",
                   help="skip the open-loop latency phase at a fraction of capacity")
    p.add_argument("--paced-fraction", type=float, default=0.5, help="paced rate / our capacity (default 0.5)")
    p.add_argument("--paced-max-seconds", type=float, default=30.0,
                   help="cap one paced run at about this long (fewer payments at low rates; default 30)")
    p.add_argument("--producer-subscribe", action="store_true",
                   help="keep Celery's default pub/sub subscription per delay() (default: off, fire and forget)")
    p.add_argument("--profile", action="store_true",
                   help="py-spy one extra burst of each side on the primary configuration")
    p.add_argument("--warmup", type=int, default=None, help="unmeasured payments per side first (default 2 x c x w)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds one run may take (default 300)")
    p.add_argument("--run-id", default=None, help="tag in worker host names (default random)")
    p.add_argument("--no-chart", dest="chart", action="store_false", help="skip the PNG chart")
    what_if = p.add_argument_group("what-if experiments on OUR side only (recorded in the JSON settings)")
    what_if.add_argument("--ours-worker-arg", action="append", default=[], metavar="ARG",
                         help="extra `celery worker` argument for our workers, "
                              "e.g. --ours-worker-arg=--prefetch-multiplier=4")
    what_if.add_argument("--metrics-ab", action="store_true",
                         help="measure what the worker's metrics cost: 'ours' serves WORKER_METRICS_PORT, and the "
                              "'baseline' side is our worker without metrics (ratios ours/baseline = on/off)")
    return p


# ------------------------------------------------------------------------------------ main
def _settings_already_bound() -> bool:
    return any(m in sys.modules for m in ("celeryconfig", "tasks", "worker.broker.celeryconfig", "worker.tasks",
                                          "worker.broker.app"))


def _sigterm(signum, frame):
    raise SystemExit(128 + signum)


def _measure(args) -> tuple[Bench, dict | None, int]:
    """Set up, run the matrix, tear down: (bench, result or None, exit status when there is no result)."""
    from bench.procs import StartError

    bench = Bench(args)
    try:
        bench.setup()
        return bench, bench.run(), 0
    except (KeyboardInterrupt, SystemExit) as exc:
        bench.env.failed = True
        print("bench: interrupted", file=sys.stderr)
        if isinstance(exc, KeyboardInterrupt):
            return bench, None, 130
        return bench, None, exc.code if isinstance(exc.code, int) else 1
    except StartError as exc:
        bench.env.failed = True
        print(f"bench: error: {exc}", file=sys.stderr)
        return bench, None, 2
    except Exception:
        bench.env.failed = True
        raise
    finally:
        bench.close()


def main(argv=None) -> int:
    from bench import report

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.payments < 1 or args.repeat < 1 or min(args.workers) < 1 or min(args.concurrency) < 1:
        build_parser().error("--payments, --repeat, --workers and --concurrency must be >= 1")
    if _settings_already_bound():
        # Celery settings are read once per process; this one already has them: run in a fresh one.
        return subprocess.call([sys.executable, "-m", "bench.run", *argv], cwd=ROOT)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        bench, result, status = _measure(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if result is None:
        return status
    json_path, png_path = report.write_files(result, bench.env.out, bench.env.stamp, with_chart=args.chart)
    report.print_report(result, json_path, png_path)
    return 0 if not result.get("errors") else 1


if __name__ == "__main__":
    sys.exit(main())
