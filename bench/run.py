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
* For every pool x concurrency: ``--workers`` processes of OUR worker (``celery -A worker worker``)
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
* the latency bound = concurrency x workers / latency (latency > 0 only).

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
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
ACCOUNT_ID = "100000000001"
SECRET_KEY = "SANDBOXSECRETKEY0000000000000000"
# A fixed Fernet key shared by this producer and our workers (base64url of 32 ASCII bytes). Bench only.
CARD_KEY = "cGF5bWVudHMtYmVuY2gtY2FyZC1rZXktZml4ZWQtMDE="
CARD = {"number": "4111111111111111", "expire": "1230", "cvv2": "123"}
CUSTOMER = {"name1": "Bob", "name2": "Tester", "addr1": "123 Test St.", "addr2": "Apt #500",
            "city": "Testville", "state": "IL", "zipcode": "54321", "country": "USA"}
AMOUNT = "3.00"  # odd dollars approve in TEST mode
OK_STATUSES = ("APPROVED", "DECLINED")
FINAL_STATUSES = ("APPROVED", "DECLINED", "ERROR", "SKIPPED", "VOIDED", "CAPTURED", "REFUNDED")
POLL_SECONDS = 0.02
STORE_PREFIX = "payments:"


# ------------------------------------------------------------------------------------ arguments
def _list(kind):
    def parse(text):
        try:
            values = [kind(v) for v in str(text).split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a comma-separated list of {kind.__name__}: {text!r}")
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
    p.add_argument("--workers", type=int, default=1, help="worker processes per side (default 1)")
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
                         help="extra `celery worker` argument for our workers, e.g. --ours-worker-arg=--prefetch-multiplier=4")
    return p


# ------------------------------------------------------------------------------------ sides
class Side:
    """One kind of worker (ours or the baseline): how to enqueue, poll and collect its payments."""

    name = ""
    queue = ""
    app_module = ""

    def __init__(self, bench):
        self.bench = bench
        self.procs: list = []
        self.hostnames: list[str] = []
        self.logs: list[Path] = []

    redelivered = 0

    @property
    def pids(self):
        return [p.pid for p in self.procs]


class Ours(Side):
    name, queue, app_module = "ours", "celery", "worker"

    def __init__(self, bench):
        super().__init__(bench)
        from tasks import sale  # after the environment is set (bench.setup)

        self.task = sale

    def enqueue(self, i, tag):
        return self.task.delay(amount=AMOUNT, card=CARD, customer=CUSTOMER)

    def _counter(self, r, own) -> int:
        pipe = r.pipeline(transaction=False)
        pipe.zcard(STORE_PREFIX + "idx:time")
        pipe.zcard(STORE_PREFIX + "idx:non_final")
        created, non_final = pipe.execute()
        own["zcard"] += 2
        return int(created) - int(non_final)

    def reset_poll(self, r, own):
        # Records are kept from run to run (a redelivered message of an earlier run must find its
        # final record, as in production), so count from this run's starting point.
        self._base = self._counter(r, own)
        self._unconfirmed = None

    def done_count(self, pending, r, own) -> int:
        """Cheap counter (records created minus non-final ones) until it says all are done; then
        the ids themselves are checked, and only the unfinished ones polled from then on."""
        if self._unconfirmed is None:
            done = self._counter(r, own) - self._base
            if done < len(pending):
                return min(done, len(pending) - 1)
            self._unconfirmed = list(pending)
        still = []
        for chunk in _chunks(self._unconfirmed, 500):
            pipe = r.pipeline(transaction=False)
            for pid in chunk:
                pipe.hget(f"{STORE_PREFIX}op:{pid}", "status")
            own["hget"] += len(chunk)
            still += [pid for pid, status in zip(chunk, pipe.execute()) if _s(status) not in FINAL_STATUSES]
        self._unconfirmed = still
        return len(pending) - len(still)

    def collect(self, ids, r):
        """[(status, recorded_epoch or None)] in the order of ids."""
        out = []
        for chunk in _chunks(ids, 500):
            pipe = r.pipeline(transaction=False)
            for pid in chunk:
                pipe.hmget(f"{STORE_PREFIX}op:{pid}", "status", "updated_ts", "attempts")
            for status, updated, attempts in pipe.execute():
                status = _s(status)
                if attempts and int(attempts) > 1:
                    self.redelivered += 1  # claimed more than once: the broker delivered it again
                final = status in FINAL_STATUSES
                out.append((status or "MISSING", float(updated) if (updated and final) else None))
        # No record: what did the task itself end with (the result backend's meta)?
        missing = [i for i, (status, _) in enumerate(out) if status == "MISSING"]
        if missing:
            metas = r.mget([f"celery-task-meta-{ids[i]}" for i in missing])
            for i, raw in zip(missing, metas):
                if raw:
                    meta = json.loads(raw)
                    exc = meta.get("result") if isinstance(meta.get("result"), dict) else {}
                    out[i] = (f"{meta.get('status')}:{exc.get('exc_type', '')}".rstrip(":"), None)
        return out


class Baseline(Side):
    name, queue, app_module = "baseline", "bench-baseline", "bench.baseline"

    def __init__(self, bench):
        super().__init__(bench)
        from bench.baseline import sale

        self.task = sale
        self._checked = 0

    def enqueue(self, i, tag):
        return self.task.delay(AMOUNT, CARD, CUSTOMER, f"bl-{tag}-{i}")

    def done_count(self, pending, r, own) -> int:
        # Completion order is roughly FIFO: check the oldest unconfirmed result keys in batches of
        # 50 with one variadic EXISTS each, and move on while a whole batch exists.
        while self._checked < len(pending):
            batch = pending[self._checked:self._checked + 50]
            own["exists"] += 1
            if r.exists(*[f"celery-task-meta-{t}" for t in batch]) < len(batch):
                break
            self._checked += len(batch)
        return self._checked

    def reset_poll(self, r, own):
        self._checked = 0

    def collect(self, ids, r):
        out = []
        for chunk in _chunks(ids, 500):
            for raw in r.mget([f"celery-task-meta-{t}" for t in chunk]):
                if not raw:
                    out.append(("MISSING", None))
                    continue
                meta = json.loads(raw)
                result = meta.get("result") if isinstance(meta.get("result"), dict) else {}
                status = result.get("Result") if meta.get("status") == "SUCCESS" else meta.get("status")
                if result.get("MESSAGE") == "DUPLICATE":
                    status = "DUPLICATE"
                when = meta.get("date_done")
                out.append((status or "UNKNOWN", datetime.fromisoformat(when).timestamp() if when else None))
        return out


def _s(v):
    return v.decode() if isinstance(v, (bytes, bytearray)) else v


def _chunks(seq, n):
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


# ------------------------------------------------------------------------------------ the bench
class Bench:
    def __init__(self, args):
        self.args = args
        self.run_id = args.run_id or uuid.uuid4().hex[:8]
        self.out = Path(args.out) if args.out else ROOT / "bench" / "results"
        self.stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.logdir = Path(tempfile.mkdtemp(prefix=f"bench-{self.run_id}-"))
        self.redis_proc = None
        self.redis_tmp = None
        self.sandbox = None
        self.sandbox_url = None
        self.sides: list[Side] = []
        self.pyspies: list = []
        self.r = None
        self.redis_url = None
        self.redis_exclusive = False
        self.failed = False

    # ---- setup / teardown ------------------------------------------------------------------
    def setup(self):
        import redis

        from bench import procs

        a = self.args
        if a.private_redis:
            self.redis_proc, self.redis_url, self.redis_tmp = procs.start_private_redis()
            self.redis_exclusive = True
        else:
            self.redis_url = a.redis_url or DEFAULT_REDIS_URL
            db = (urlsplit(self.redis_url).path or "/0").strip("/") or "0"
            if db == "0":
                raise procs.StartError("refusing to flush Redis database 0: give --redis-url a database of "
                                       "your own (e.g. /13) or use --private-redis")
        self.r = redis.Redis.from_url(self.redis_url, socket_timeout=30)
        try:
            self.r.ping()
        except redis.RedisError as exc:
            raise procs.StartError(f"cannot reach Redis at {self.redis_url}: {exc}") from None
        self.r.flushdb()

        env = dict(os.environ)
        env.pop("SANDBOX_FAULTS", None)
        self.sandbox, self.sandbox_url = procs.start_sandbox(
            args=["--duplicate-window", "0", "--account-id", ACCOUNT_ID, "--secret-key", SECRET_KEY], env=env)
        self._procs_started = [self.sandbox]

        # The producer is this process: the environment must be right BEFORE `tasks` is imported.
        interfaces = self.sandbox_url + "/interfaces/"
        os.environ.update({
            "REDIS_URL": self.redis_url, "PAYMENTS_CARD_KEY": CARD_KEY, "PAYMENTS_KEY_PREFIX": STORE_PREFIX,
            "BLUEPAY_URL": interfaces, "BLUEPAY_ACCOUNT_ID": ACCOUNT_ID, "BLUEPAY_SECRET_KEY": SECRET_KEY,
            "BLUEPAY_MODE": "TEST",
            "BENCH_REDIS_URL": self.redis_url, "BENCH_BLUEPAY_URL": interfaces,
            "BENCH_ACCOUNT_ID": ACCOUNT_ID, "BENCH_SECRET_KEY": SECRET_KEY, "BENCH_BASELINE_QUEUE": Baseline.queue,
        })
        from worker import app as ours_app
        from bench.baseline import app as baseline_app

        self.ours_app, self.baseline_app = ours_app, baseline_app
        if ours_app.conf.broker_url != self.redis_url:
            raise procs.StartError("the payments settings were loaded before the benchmark set REDIS_URL")
        if not a.producer_subscribe:
            # Fire and forget: no pub/sub subscription per delay() (completion comes from Redis keys).
            for app in (ours_app, baseline_app):
                app.backend.on_task_call = lambda producer, task_id: None
        self.ours, self.baseline = Ours(self), Baseline(self)
        self.worker_env = dict(os.environ)

    def close(self):
        from bench import procs

        for spy in self.pyspies:
            procs.stop(spy, timeout=5)
        for side in getattr(self, "ours", None), getattr(self, "baseline", None):
            if side is not None:
                self.stop_workers(side)
        if self.sandbox is not None:
            procs.stop(self.sandbox, timeout=5)
        if self.r is not None and not self.redis_exclusive:
            try:
                self.r.flushdb()  # no bench data (the baseline's messages hold clear test cards) left behind
            except Exception:
                pass
        if self.redis_proc is not None:
            procs.stop(self.redis_proc, timeout=5)
            shutil.rmtree(self.redis_tmp, ignore_errors=True)
        if not self.failed:
            shutil.rmtree(self.logdir, ignore_errors=True)
        else:
            print(f"bench: worker logs kept in {self.logdir}", file=sys.stderr)

    # ---- workers -----------------------------------------------------------------------------
    def start_workers(self, side: Side, pool: str, concurrency: int):
        from bench import procs

        host = socket.gethostname()
        for i in range(self.args.workers):
            name = f"bench-{side.name}-{self.run_id}-{i}@{host}"
            log = self.logdir / f"{side.name}-{pool}-c{concurrency}-{i}.log"
            extra = self.args.ours_worker_arg if side is self.ours else ()
            side.procs.append(procs.start_celery_worker(
                side.app_module, env=self.worker_env, pool=pool, concurrency=concurrency,
                hostname=name, logfile=log, extra=extra))
            side.hostnames.append(name)
            side.logs.append(log)
        deadline = time.monotonic() + 90
        missing = set(side.hostnames)
        while missing and time.monotonic() < deadline:
            for proc, log in zip(side.procs, side.logs):
                if proc.poll() is not None:
                    self.failed = True
                    raise procs.StartError(f"{side.name} worker exited at start (rc={proc.returncode}): "
                                           f"{_tail(log)}")
            replies = self.ours_app.control.ping(destination=sorted(missing), timeout=1.0) or []
            for reply in replies:
                missing -= set(reply)
        if missing:
            self.failed = True
            raise procs.StartError(f"{side.name} workers did not answer a ping: {sorted(missing)}")

    def stop_workers(self, side: Side):
        from bench import procs

        for proc in side.procs:
            procs.stop(proc, timeout=15)
        side.procs, side.hostnames, side.logs = [], [], []

    def consume(self, side: Side, on: bool):
        control = self.ours_app.control
        verb = control.add_consumer if on else control.cancel_consumer
        for _ in range(5):
            replies = verb(side.queue, destination=side.hostnames, reply=True, timeout=5.0) or []
            if len(replies) >= len(side.hostnames):
                return
        raise RuntimeError(f"{side.name} workers did not confirm {'add' if on else 'cancel'}_consumer")

    # ---- sandbox -----------------------------------------------------------------------------
    def sandbox_latency(self, latency_ms: float):
        import requests

        requests.post(self.sandbox_url + "/sandbox/reset", json={}, timeout=10).raise_for_status()
        requests.post(self.sandbox_url + "/sandbox/faults", json={"latency_ms": latency_ms, "jitter_ms": 0},
                      timeout=10).raise_for_status()

    # ---- measuring ---------------------------------------------------------------------------
    def snapshot(self, side: Side, own: Counter) -> dict:
        import psutil

        from bench import procs
        from bench.analysis import commandstats

        me = psutil.Process().cpu_times()
        cpu = self.r.info("cpu")
        cmds = commandstats(self.r.info("commandstats"))
        own["info"] += 2
        return {
            "t": time.time(),
            "worker_cpu": sum(procs.tree_cpu_seconds(pid) for pid in side.pids),
            "producer_cpu": me.user + me.system,
            "sandbox_cpu": procs.tree_cpu_seconds(self.sandbox.pid),
            "redis_cpu": float(cpu.get("used_cpu_user", 0)) + float(cpu.get("used_cpu_sys", 0)),
            "cmds": cmds,
        }

    def wait_done(self, side: Side, ids: list, own: Counter, deadline: float, latency_ms: float) -> bool:
        """Poll until every payment is recorded; False on the deadline, or early when the count
        stalls while nothing is queued or unacknowledged (a payment that failed without a record)."""
        n = len(ids)
        stall_s = max(2.0, 5 * latency_ms / 1000.0 + 1.0)
        last_done, last_change = -1, time.monotonic()
        while True:
            done = side.done_count(ids, self.r, own)
            if done >= n:
                return True
            now = time.monotonic()
            if done != last_done:
                last_done, last_change = done, now
            elif now - last_change > stall_s:
                pipe = self.r.pipeline(transaction=False)
                pipe.llen(side.queue)
                pipe.hlen("unacked")
                queued, unacked = pipe.execute()
                own["llen"] += 1
                own["hlen"] += 1
                if not queued and not unacked:
                    return False
                last_change = now
            if now > deadline:
                return False
            for proc, log in zip(side.procs, side.logs):
                if proc.poll() is not None:
                    self.failed = True
                    raise RuntimeError(f"{side.name} worker died (rc={proc.returncode}): {_tail(log)}")
            time.sleep(POLL_SECONDS)

    def wait_first_pop(self, side: Side, n: int, own: Counter, limit: float = 5.0) -> float:
        """The clock starts when a worker takes the first message of the pre-filled queue (a worker
        picks up a re-added queue within one broker poll, up to 1 s after add_consumer)."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            own["llen"] += 1
            if self.r.llen(side.queue) < n:
                return time.time()
            time.sleep(0.001)
        return time.time()

    def drain(self, side: Side):
        """After a timed-out run: stop consuming, drop what is still queued."""
        self.consume(side, False)
        self.r.delete(side.queue)
        time.sleep(1.0)

    def run_once(self, side: Side, n: int, latency_ms: float, *, paced_rate: float | None = None,
                 measure=True) -> dict:
        """One measured run of ``n`` payments: burst (pre-filled queue) or paced (open loop)."""
        self.sandbox_latency(latency_ms)
        own = Counter()
        side.reset_poll(self.r, Counter())  # before the window: not subtracted
        side.redelivered = 0
        tag = f"{self.run_id}-{uuid.uuid4().hex[:6]}"
        ids, sent = [], []
        deadline = time.monotonic() + self.args.timeout
        max_lag = 0.0
        # Fire and forget keeps only the task ids. With --producer-subscribe the AsyncResults are
        # held until the run is over, as an application that tracks them would: each holds a
        # pub/sub subscription (Celery drops it when the AsyncResult is garbage collected).
        held = [] if self.args.producer_subscribe else None

        def enqueue(i):
            result = side.enqueue(i, tag)
            if held is not None:
                held.append(result)
            return result.id

        if paced_rate is None:
            s0 = self.snapshot(side, own)
            for i in range(n):
                sent.append(time.time())
                ids.append(enqueue(i))
            s1 = self.snapshot(side, own)
            queued = self.r.llen(side.queue)  # n, plus any redelivered message of an earlier run
            own["llen"] += 1
            self.consume(side, True)
            t_start = self.wait_first_pop(side, queued, own)
        else:
            self.consume(side, True)
            # A worker may take up to one broker poll (kombu's BRPOP timeout, 1 s) to pick up a
            # re-added queue: do not let the first paced payments wait for that.
            time.sleep(2.0)
            s0 = self.snapshot(side, own)
            s1 = s0
            t_start = time.time() + 0.05
            interval = 1.0 / paced_rate
            for i in range(n):
                target = t_start + i * interval
                now = time.time()
                if target > now:
                    time.sleep(target - now)
                else:
                    max_lag = max(max_lag, now - target)
                sent.append(target)  # latency from the scheduled time: no coordinated omission
                ids.append(enqueue(i))
        subscribed = self.subscriptions()
        finished = self.wait_done(side, ids, own, deadline, latency_ms)
        s2 = self.snapshot(side, own)
        pubsub_omem = self.pubsub_output_memory(own) if held is not None else None
        del held
        if finished:
            self.consume(side, False)
        else:
            self.drain(side)
        rows = side.collect(ids, self.r)
        if not measure:
            return {}
        m = self._metrics(side, n, ids, sent, rows, s0, s1, s2, own, t_start, finished, paced_rate, max_lag)
        m["redelivered"] = side.redelivered
        m["producer_subscriptions"] = subscribed
        m["pubsub_output_buffer_bytes"] = pubsub_omem
        return m

    def _metrics(self, side, n, ids, sent, rows, s0, s1, s2, own, t_start, finished, paced_rate, max_lag) -> dict:
        from bench.analysis import command_delta, percentile

        lat = []
        ends = []
        errors = Counter()
        for (status, end), t_sent in zip(rows, sent):
            if status in OK_STATUSES and end is not None:
                lat.append((end - t_sent) * 1000.0)
                ends.append(end)
            else:
                errors[status or "MISSING"] += 1
        ok = len(ends)
        missing = [pid for pid, (status, end) in zip(ids, rows) if not (status in OK_STATUSES and end is not None)]
        if missing:
            self.failed = True  # keep the worker logs for a look
        elapsed = (max(ends) - t_start) if ends else None
        cmds = command_delta(s0["cmds"], s2["cmds"], own)
        enqueue_cmds = command_delta(s0["cmds"], s1["cmds"], Counter({"info": 2}))
        total_cmds = sum(cmds.values())
        return {
            "n": n,
            "ok": ok,
            "errors": sum(errors.values()),
            "error_kinds": dict(errors),
            "error_ids": missing[:10],
            "incomplete": not finished,
            "per_s": round(ok / elapsed, 1) if elapsed and elapsed > 0 else None,
            "elapsed_s": round(elapsed, 3) if elapsed else None,
            "p50_ms": _r(percentile(lat, 50)),
            "p95_ms": _r(percentile(lat, 95)),
            "p99_ms": _r(percentile(lat, 99)),
            "max_ms": _r(max(lat) if lat else None),
            "cpu_ms": round((s2["worker_cpu"] - s0["worker_cpu"]) * 1000.0 / n, 3),
            "redis_cmds": round(total_cmds / n, 2),
            "redis_cmds_enqueue": round(sum(enqueue_cmds.values()) / n, 2),
            "redis_cmds_top": {k: round(v / n, 2) for k, v in cmds.most_common(10)},
            "redis_cpu_ms": round((s2["redis_cpu"] - s0["redis_cpu"]) * 1000.0 / n, 3),
            "sandbox_cpu_ms": round((s2["sandbox_cpu"] - s0["sandbox_cpu"]) * 1000.0 / n, 3),
            "producer_cpu_ms": round((s1["producer_cpu"] - s0["producer_cpu"]) * 1000.0 / n, 3)
            if paced_rate is None else round((s2["producer_cpu"] - s0["producer_cpu"]) * 1000.0 / n, 3),
            "enqueue_per_s": round(n / (s1["t"] - s0["t"]), 1) if paced_rate is None and s1["t"] > s0["t"] else None,
            "paced_rate": round(paced_rate, 1) if paced_rate else None,
            "producer_max_lag_ms": round(max_lag * 1000.0, 1) if paced_rate else None,
        }

    def pubsub_output_memory(self, own: Counter) -> int:
        """Bytes Redis holds in output buffers for pub/sub clients: results published to channels a
        producer subscribed to but never reads pile up there (client-output-buffer-limit pubsub)."""
        own["client"] += 1
        total = 0
        for client in self.r.client_list(_type="pubsub"):
            total += int(client.get("omem", 0) or 0)
        return total

    def subscriptions(self) -> int:
        """Channels this producer is subscribed to for results (Celery's pub/sub per delay())."""
        total = 0
        for app in (self.ours_app, self.baseline_app):
            consumer = getattr(app.backend, "result_consumer", None)
            total += len(getattr(consumer, "subscribed_to", ()) or ())
        return total

    # ---- profiling ---------------------------------------------------------------------------
    def profile(self, side: Side, n: int, latency_ms: float, pool: str) -> dict:
        from bench import procs
        from bench.analysis import merge_folded, summarize_profile

        exe = procs.py_spy_path()
        if not exe:
            return {"error": "py-spy not installed (pip install py-spy)"}
        self.out.mkdir(parents=True, exist_ok=True)
        files = []
        spies = []
        for i, pid in enumerate(side.pids):
            path = self.out / f"profile-{self.stamp}-{side.name}-w{i}.folded"
            cmd = [exe, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--full-filenames",
                   "-o", str(path)]
            if pool == "prefork":
                cmd.append("--subprocesses")
            spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
            spies.append(spy)
            self.pyspies.append(spy)
            files.append(path)
        time.sleep(1.5)  # attach
        try:
            run = self.run_once(side, n, latency_ms)
        finally:
            for spy in spies:
                if spy.poll() is None:
                    spy.send_signal(signal.SIGINT)
            for spy in spies:
                try:
                    spy.wait(30)
                except subprocess.TimeoutExpired:
                    procs.stop(spy)
                self.pyspies.remove(spy)
        summary = summarize_profile(merge_folded(files))
        errs = [s.stderr.read()[-500:] for s in spies if s.returncode not in (0, None)]
        return {"files": [str(f) for f in files], "run": {k: run.get(k) for k in ("per_s", "cpu_ms")},
                "summary": summary, **({"py_spy_errors": errs} if errs and not summary.get("samples") else {})}

    # ---- the matrix --------------------------------------------------------------------------
    def run(self) -> dict:
        from bench.analysis import median

        a = self.args
        configs = []
        profiles = {}
        started = datetime.now(timezone.utc)
        for pool, conc in itertools.product(a.pool, a.concurrency):
            warm = a.warmup if a.warmup is not None else max(20, min(500, 2 * conc * a.workers))
            for side in (self.ours, self.baseline):
                self.start_workers(side, pool, conc)
            try:
                for side in (self.ours, self.baseline):
                    self.consume(side, False)
                for latency in a.latency_ms:
                    bound = conc * a.workers / (latency / 1000.0) if latency > 0 else None
                    label = f"{pool} c={conc} w={a.workers} latency={latency:g}ms"
                    _say(f"== {label}: warm-up {warm} per side")
                    for side in (self.ours, self.baseline):
                        self.run_once(side, warm, latency, measure=False)
                    runs = {"ours": [], "baseline": []}
                    for rep in range(a.repeat):
                        order = (self.ours, self.baseline) if rep % 2 == 0 else (self.baseline, self.ours)
                        for side in order:
                            m = self.run_once(side, a.payments, latency)
                            runs[side.name].append(m)
                            _say(f"   burst {rep + 1}/{a.repeat} {side.name:8s} {m['per_s']}/s "
                                 f"cpu {m['cpu_ms']} ms/payment errors {m['errors']}")
                    cap = median([m["per_s"] for m in runs["ours"]])
                    paced = {"ours": [], "baseline": []}
                    rate = None
                    if a.paced and cap:
                        rate = a.paced_fraction * cap
                        n_paced = min(a.payments, max(100, int(rate * a.paced_max_seconds)))
                        for rep in range(a.repeat):
                            order = (self.ours, self.baseline) if rep % 2 == 0 else (self.baseline, self.ours)
                            for side in order:
                                m = self.run_once(side, n_paced, latency, paced_rate=rate)
                                paced[side.name].append(m)
                                _say(f"   paced {rep + 1}/{a.repeat} {side.name:8s} at {rate:.0f}/s: "
                                     f"p50 {m['p50_ms']} p99 {m['p99_ms']} ms errors {m['errors']}")
                    key = (pool, conc, latency)
                    if a.profile and not profiles:
                        for side in (self.ours, self.baseline):
                            _say(f"   profiling {side.name} (one extra burst, not in the medians)")
                            profiles[side.name] = self.profile(side, a.payments, latency, pool)
                    configs.append(self._config(key, bound, runs, paced, rate))
                # Peak RSS over the workers' life in this pool/concurrency block.
                for cfg in configs:
                    if (cfg["pool"], cfg["concurrency"]) == (pool, conc):
                        for side in (self.ours, self.baseline):
                            cfg[side.name]["rss_peak_mb"] = self._rss_mb(side)
            finally:
                for side in (self.ours, self.baseline):
                    self.stop_workers(side)
        return self._result(configs, profiles, started)

    def _rss_mb(self, side):
        from bench import procs

        peaks = [procs.tree_peak_rss_bytes(pid) for pid in side.pids]
        return round(max(peaks) / 2 ** 20, 1) if peaks else None

    def _config(self, key, bound, runs, paced, rate) -> dict:
        from bench.analysis import median

        pool, conc, latency = key
        cfg = {"pool": pool, "concurrency": conc, "workers": self.args.workers, "latency_ms": latency,
               "bound_per_s": round(bound, 1) if bound else None, "paced_rate": round(rate, 1) if rate else None}
        for name in ("ours", "baseline"):
            rs = runs[name]
            ps = paced[name]
            cfg[name] = {
                "per_s": median([m["per_s"] for m in rs]),
                "cpu_ms": median([m["cpu_ms"] for m in rs]),
                "burst_p50_ms": median([m["p50_ms"] for m in rs]),
                "burst_p95_ms": median([m["p95_ms"] for m in rs]),
                "burst_p99_ms": median([m["p99_ms"] for m in rs]),
                "paced_p50_ms": median([m["p50_ms"] for m in ps]),
                "paced_p95_ms": median([m["p95_ms"] for m in ps]),
                "paced_p99_ms": median([m["p99_ms"] for m in ps]),
                "paced_per_s": median([m["per_s"] for m in ps]),
                "paced_cpu_ms": median([m["cpu_ms"] for m in ps]),
                "redis_cmds": median([m["redis_cmds"] for m in rs]),
                "redis_cmds_enqueue": median([m["redis_cmds_enqueue"] for m in rs]),
                "redis_cmds_top": rs[0]["redis_cmds_top"] if rs else {},
                "redis_cpu_ms": median([m["redis_cpu_ms"] for m in rs]),
                "sandbox_cpu_ms": median([m["sandbox_cpu_ms"] for m in rs]),
                "producer_cpu_ms": median([m["producer_cpu_ms"] for m in rs]),
                "enqueue_per_s": median([m["enqueue_per_s"] for m in rs]),
                "producer_max_lag_ms": max([m["producer_max_lag_ms"] or 0 for m in ps], default=None),
                "producer_subscriptions_max": max([m["producer_subscriptions"] for m in rs + ps], default=None),
                "pubsub_output_buffer_max": max([m["pubsub_output_buffer_bytes"] or 0 for m in rs + ps], default=None)
                if self.args.producer_subscribe else None,
                "errors": sum(m["errors"] for m in rs + ps),
                "redelivered": sum(m["redelivered"] for m in rs + ps),
                "error_kinds": dict(sum((Counter(m["error_kinds"]) for m in rs + ps), Counter())),
                "runs": {"burst": rs, "paced": ps},
            }
        o, b = cfg["ours"], cfg["baseline"]
        cfg["ratios"] = {
            "throughput": _ratio(o["per_s"], b["per_s"]),
            "cpu": _ratio(o["cpu_ms"], b["cpu_ms"]),
            "bound": _ratio(o["per_s"], bound),
            "baseline_bound": _ratio(b["per_s"], bound),
        }
        return cfg

    def _result(self, configs, profiles, started) -> dict:
        a = self.args
        primary = configs[0] if configs else None
        targets = evaluate_targets(configs)
        info = self.r.info("server")
        result = {
            "started_at": started.isoformat(timespec="seconds"),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:])]),
            "settings": {
                "payments": a.payments, "repeat": a.repeat, "workers": a.workers, "pools": a.pool,
                "concurrency": a.concurrency, "latency_ms": a.latency_ms, "paced": a.paced,
                "paced_fraction": a.paced_fraction, "producer_subscribe": a.producer_subscribe,
                "redis_exclusive": self.redis_exclusive,
                "ours_worker_args": a.ours_worker_arg,
                "redis": "private redis-server" if self.redis_exclusive else self.redis_url,
            },
            "machine": machine_info(info),
            "producer_subscriptions_at_end": self.subscriptions(),
            "configs": configs,
            "targets": targets,
            "profile": profiles or None,
        }
        if primary:
            o, b = primary["ours"], primary["baseline"]
            # The bound only means something with latency: when the primary configuration has none,
            # the bound figures come from the first configuration of the same pool and concurrency
            # that has (bound_latency_ms says which).
            at_bound = primary if primary["bound_per_s"] else next(
                (c for c in configs if c["bound_per_s"] and c["pool"] == primary["pool"]
                 and c["concurrency"] == primary["concurrency"]), None)
            result.update({
                "bound_latency_ms": at_bound["latency_ms"] if at_bound else None,
                "ours_per_s_at_bound": at_bound["ours"]["per_s"] if at_bound else None,
                "baseline_per_s_at_bound": at_bound["baseline"]["per_s"] if at_bound else None,
                "primary": {k: primary[k] for k in ("pool", "concurrency", "workers", "latency_ms")},
                "ours_per_s": o["per_s"], "baseline_per_s": b["per_s"],
                "bound_per_s": at_bound["bound_per_s"] if at_bound else None,
                "ours_cpu_ms": o["cpu_ms"], "baseline_cpu_ms": b["cpu_ms"],
                "p99_ms": o["paced_p99_ms"] if o["paced_p99_ms"] is not None else o["burst_p99_ms"],
                "p99_kind": "paced" if o["paced_p99_ms"] is not None else "burst",
                "throughput_ratio": primary["ratios"]["throughput"], "cpu_ratio": primary["ratios"]["cpu"],
                "bound_ratio": at_bound["ratios"]["bound"] if at_bound else None,
                "errors": sum(c["ours"]["errors"] + c["baseline"]["errors"] for c in configs),
            })
        return result


# ------------------------------------------------------------------------------------ reporting
def evaluate_targets(configs) -> list[dict]:
    out = []
    for c in configs:
        o, b, r = c["ours"], c["baseline"], c["ratios"]
        where = f"{c['pool']} c={c['concurrency']} w={c['workers']} latency={c['latency_ms']:g}ms"
        if c["latency_ms"] == 0 and c["pool"] == "gevent":
            out.append({"target": "throughput ours/baseline >= 0.8", "where": where, "value": r["throughput"],
                        "pass": r["throughput"] is not None and r["throughput"] >= 0.8})
            out.append({"target": "CPU ms ours/baseline <= 1.25", "where": where, "value": r["cpu"],
                        "pass": r["cpu"] is not None and r["cpu"] <= 1.25})
        if c["latency_ms"] == 200 and c["concurrency"] == 50:
            out.append({"target": "ours/latency bound >= 0.9", "where": where, "value": r["bound"],
                        "pass": r["bound"] is not None and r["bound"] >= 0.9})
        if o["paced_p99_ms"] is not None:
            limit = c["latency_ms"] + 50
            out.append({"target": f"paced p99 <= latency + 50 ms ({limit:g} ms)", "where": where,
                        "value": o["paced_p99_ms"], "pass": o["paced_p99_ms"] <= limit})
    return out


def machine_info(redis_info=None) -> dict:
    import celery
    import kombu
    import redis as redis_py

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import gevent
        gv = gevent.__version__
    except ImportError:
        gv = None
    return {
        "nproc": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
        "celery": celery.__version__, "kombu": kombu.__version__, "redis_py": redis_py.__version__,
        "gevent": gv, "redis_server": (redis_info or {}).get("redis_version"),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def _r(v, nd=1):
    return None if v is None else round(v, nd)


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def _fmt(v, nd=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def table(result) -> str:
    cols = [("pool", 7), ("c", 4), ("w", 2), ("lat", 5), ("ours/s", 7), ("base/s", 7), ("bound/s", 8),
            ("o/b", 5), ("o/bnd", 6), ("cpu o", 6), ("cpu b", 6), ("cpu o/b", 7), ("p50", 6), ("p95", 6),
            ("p99", 6), ("p99 b", 6), ("@/s", 5), ("rss o", 6), ("rss b", 6), ("cmd o", 6), ("cmd b", 6),
            ("err", 4)]
    head = " ".join(f"{n:>{w}}" for n, w in cols)
    lines = [head, "-" * len(head)]
    for c in result["configs"]:
        o, b, r = c["ours"], c["baseline"], c["ratios"]
        vals = [c["pool"], c["concurrency"], c["workers"], _fmt(c["latency_ms"], 0), _fmt(o["per_s"]),
                _fmt(b["per_s"]), _fmt(c["bound_per_s"]), _fmt(r["throughput"], 2), _fmt(r["bound"], 2),
                _fmt(o["cpu_ms"], 2), _fmt(b["cpu_ms"], 2), _fmt(r["cpu"], 2),
                _fmt(o["paced_p50_ms"] if o["paced_p50_ms"] is not None else o["burst_p50_ms"]),
                _fmt(o["paced_p95_ms"] if o["paced_p95_ms"] is not None else o["burst_p95_ms"]),
                _fmt(o["paced_p99_ms"] if o["paced_p99_ms"] is not None else o["burst_p99_ms"]),
                _fmt(b["paced_p99_ms"] if b["paced_p99_ms"] is not None else b["burst_p99_ms"]),
                _fmt(c["paced_rate"], 0), _fmt(o.get("rss_peak_mb"), 0), _fmt(b.get("rss_peak_mb"), 0),
                _fmt(o["redis_cmds"]), _fmt(b["redis_cmds"]), o["errors"] + b["errors"]]
        lines.append(" ".join(f"{str(v):>{w}}" for v, (_, w) in zip(vals, cols)))
    lines += [
        "",
        "ours/s, base/s: capacity (pre-filled queue), median payments/s; bound/s = c x w / latency;",
        "o/b, o/bnd: ours/baseline and ours/bound; cpu o/b: worker CPU ms per payment (OS user+sys);",
        "p50/p95/p99 (ours) and p99 b (baseline): enqueue->recorded ms in the paced phase at @/s",
        "(half our capacity; burst percentiles when --no-paced); rss: peak MB per worker (VmHWM, all",
        "processes of a worker); cmd: Redis commands per payment (commandstats, Lua inner calls included"
        + ("" if result["settings"]["redis_exclusive"] else "; SHARED server: others' traffic included") + ").",
    ]
    return "\n".join(lines)


def markdown(result) -> str:
    """The table as Markdown (written next to the JSON, for docs/performance.md)."""
    head = ("| pool | c | w | latency ms | ours/s | baseline/s | bound/s | ours/base | ours/bound | "
            "CPU ms ours | CPU ms base | CPU ours/base | p50 ms | p95 ms | p99 ms | p99 ms base | paced at /s | "
            "RSS MB ours | RSS MB base | Redis cmds ours | Redis cmds base | errors | redelivered |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in result["configs"]:
        o, b, r = c["ours"], c["baseline"], c["ratios"]

        def pick(side, q):
            v = side[f"paced_{q}_ms"]
            return v if v is not None else side[f"burst_{q}_ms"]
        vals = [c["pool"], c["concurrency"], c["workers"], _fmt(c["latency_ms"], 0), _fmt(o["per_s"]),
                _fmt(b["per_s"]), _fmt(c["bound_per_s"]), _fmt(r["throughput"], 2), _fmt(r["bound"], 2),
                _fmt(o["cpu_ms"], 2), _fmt(b["cpu_ms"], 2), _fmt(r["cpu"], 2), _fmt(pick(o, "p50")),
                _fmt(pick(o, "p95")), _fmt(pick(o, "p99")), _fmt(pick(b, "p99")), _fmt(c["paced_rate"], 0),
                _fmt(o.get("rss_peak_mb"), 0), _fmt(b.get("rss_peak_mb"), 0), _fmt(o["redis_cmds"]),
                _fmt(b["redis_cmds"]), o["errors"] + b["errors"], o.get("redelivered", 0)]
        lines.append("| " + " | ".join(str(v) for v in vals) + " |")
    return "\n".join(lines)


def chart(result, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    configs = result["configs"]
    latencies = sorted({c["latency_ms"] for c in configs})
    pools = list(dict.fromkeys(c["pool"] for c in configs))
    fig, axes = plt.subplots(len(latencies), 2, figsize=(11, 3.6 * len(latencies)), squeeze=False)
    colors = {"gevent": "tab:blue", "threads": "tab:green", "prefork": "tab:red"}
    for row, lat in enumerate(latencies):
        ax_t, ax_l = axes[row]
        for pool in pools:
            cs = sorted((c for c in configs if c["latency_ms"] == lat and c["pool"] == pool),
                        key=lambda c: c["concurrency"])
            xs = [c["concurrency"] for c in cs]
            col = colors.get(pool)
            ax_t.plot(xs, [c["ours"]["per_s"] for c in cs], "o-", color=col, label=f"ours {pool}")
            ax_t.plot(xs, [c["baseline"]["per_s"] for c in cs], "s--", color=col, alpha=0.6,
                      label=f"baseline {pool}")
            if lat > 0 and pool == pools[0]:
                ax_t.plot(xs, [c["bound_per_s"] for c in cs], ":", color="grey", label="latency bound")

            def p99(side, c):
                v = c[side]["paced_p99_ms"]
                return v if v is not None else c[side]["burst_p99_ms"]
            ax_l.plot(xs, [p99("ours", c) for c in cs], "o-", color=col, label=f"ours {pool}")
            ax_l.plot(xs, [p99("baseline", c) for c in cs], "s--", color=col, alpha=0.6, label=f"baseline {pool}")
        ax_l.axhline(lat + 50, color="grey", ls=":", label="target: latency + 50 ms")
        ax_t.set_title(f"throughput, gateway latency {lat:g} ms")
        ax_t.set_xlabel("concurrency per worker")
        ax_t.set_ylabel("payments/s")
        ax_t.set_ylim(bottom=0)
        ax_l.set_title(f"p99 enqueue->recorded (paced at half capacity), {lat:g} ms")
        ax_l.set_xlabel("concurrency per worker")
        ax_l.set_ylabel("ms")
        ax_l.set_ylim(bottom=0)
        for ax in (ax_t, ax_l):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    m = result["machine"]
    fig.suptitle(f"payments bench {result['started_at']}  ({m['nproc']} x {m['cpu_model']}, "
                 f"workers={result['settings']['workers']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def profile_text(profiles) -> str:
    lines = []
    for name, prof in (profiles or {}).items():
        s = prof.get("summary") or {}
        if not s.get("samples"):
            lines.append(f"profile {name}: no samples ({prof.get('error') or prof.get('py_spy_errors')})")
            continue
        lines.append(f"profile {name}: {s['samples']} samples (py-spy, non-idle), files {', '.join(prof['files'])}")
        lines.append("   exclusive split:")
        for part in s.get("partition_pct", []):
            lines.append(f"   {part['pct']:5.1f}%  {part['part']}")
        lines.append("   inclusive, by stage:")
        for st in s["stages_inclusive_pct"]:
            lines.append(f"   {st['pct']:5.1f}%  {st['stage']}")
        lines.append("   top self (leaf) frames:")
        for fr in s["top_self"][:12]:
            lines.append(f"   {fr['pct']:5.1f}%  {fr['frame']}")
    return "\n".join(lines)


def _say(msg):
    print(msg, flush=True)


def _tail(path, n=3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _settings_already_bound() -> bool:
    return any(m in sys.modules for m in ("celeryconfig", "tasks", "worker.celery_app"))


def _sigterm(signum, frame):
    raise SystemExit(128 + signum)


# ------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.payments < 1 or args.repeat < 1 or args.workers < 1 or min(args.concurrency) < 1:
        build_parser().error("--payments, --repeat, --workers and --concurrency must be >= 1")
    if _settings_already_bound():
        # Celery settings are read once per process; this one already has them: run in a fresh one.
        return subprocess.call([sys.executable, "-m", "bench.run", *argv], cwd=ROOT)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _sigterm)
    bench = Bench(args)
    try:
        bench.setup()
        result = bench.run()
    except (KeyboardInterrupt, SystemExit) as exc:
        bench.failed = True
        print("bench: interrupted", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else (exc.code if isinstance(exc.code, int) else 1)
    except Exception as exc:
        from bench.procs import StartError

        bench.failed = True
        if isinstance(exc, StartError):
            print(f"bench: error: {exc}", file=sys.stderr)
            return 2
        raise
    finally:
        bench.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

    bench.out.mkdir(parents=True, exist_ok=True)
    json_path = bench.out / f"bench-{bench.stamp}.json"
    png_path = bench.out / f"bench-{bench.stamp}.png"
    result["json_path"] = str(json_path)
    if args.chart and chart(result, png_path):
        result["chart_path"] = str(png_path)
    json_path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    (bench.out / f"bench-{bench.stamp}.md").write_text(markdown(result) + "\n")

    print()
    print(table(result))
    print()
    for t in result["targets"]:
        print(f"{'PASS' if t['pass'] else 'FAIL'}  {t['target']:45s} {t['where']:40s} {t['value']}")
    if result.get("profile"):
        print()
        print(profile_text(result["profile"]))
    print()
    print(f"json: {json_path}" + (f"\nchart: {png_path}" if result.get("chart_path") else ""))
    last = {k: result.get(k) for k in ("ours_per_s", "baseline_per_s", "bound_per_s", "ours_cpu_ms",
                                        "baseline_cpu_ms", "p99_ms", "p99_kind", "throughput_ratio",
                                        "cpu_ratio", "bound_latency_ms", "ours_per_s_at_bound",
                                        "baseline_per_s_at_bound", "bound_ratio", "errors", "primary",
                                        "json_path")}
    last["targets_passed"] = sum(1 for t in result["targets"] if t["pass"])
    last["targets_total"] = len(result["targets"])
    last["configs"] = [{
        "pool": c["pool"], "concurrency": c["concurrency"], "workers": c["workers"],
        "latency_ms": c["latency_ms"], "ours_per_s": c["ours"]["per_s"], "baseline_per_s": c["baseline"]["per_s"],
        "bound_per_s": c["bound_per_s"], "ours_cpu_ms": c["ours"]["cpu_ms"], "baseline_cpu_ms": c["baseline"]["cpu_ms"],
        "p99_ms": c["ours"]["paced_p99_ms"] if c["ours"]["paced_p99_ms"] is not None else c["ours"]["burst_p99_ms"],
        "baseline_p99_ms": c["baseline"]["paced_p99_ms"] if c["baseline"]["paced_p99_ms"] is not None
        else c["baseline"]["burst_p99_ms"],
        "ours_redis_cmds": c["ours"]["redis_cmds"], "baseline_redis_cmds": c["baseline"]["redis_cmds"],
        "errors": c["ours"]["errors"] + c["baseline"]["errors"],
    } for c in result["configs"]]
    print(json.dumps(last, separators=(",", ":")), flush=True)
    return 0 if not result.get("errors") else 1


if __name__ == "__main__":
    sys.exit(main())
