"""Running the benchmark: the environment (Redis, the sandbox, the producer's Celery apps), the
workers of each side, one measured run, the py-spy profile and the pool x concurrency x latency
matrix. What the figures mean is in ``bench/run.py``'s docstring; they are computed by
``bench.analysis`` and written by ``bench.report``.
"""
from __future__ import annotations

import itertools
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import procs
from bench.analysis import (
    ROUND_TRIPS,
    commandstats,
    config_summary,
    evaluate_targets,
    headline,
    median,
    merge_folded,
    run_metrics,
    summarize_profile,
)
from bench.sides import STORE_PREFIX, Baseline, Ours, OursMetricsOff, Side

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
ACCOUNT_ID = "100000000001"
SECRET_KEY = "SANDBOXSECRETKEY0000000000000000"
# A fixed Fernet key shared by this producer and our workers (base64url of 32 ASCII bytes). Bench only.
CARD_KEY = "cGF5bWVudHMtYmVuY2gtY2FyZC1rZXktZml4ZWQtMDE="
POLL_SECONDS = 0.02


def say(msg):
    print(msg, flush=True)


def tail(path, n=3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


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


# ------------------------------------------------------------------------------------ environment
class BenchEnv:
    """Redis, the sandbox and the producer's two Celery apps for one benchmark; ``close`` undoes it all."""

    def __init__(self, args):
        self.args = args
        self.run_id = args.run_id or uuid.uuid4().hex[:8]
        self.out = Path(args.out) if args.out else ROOT / "bench" / "results"
        self.stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.logdir = Path(tempfile.mkdtemp(prefix=f"bench-{self.run_id}-"))
        self.redis_proc: subprocess.Popen | None = None
        self.redis_tmp: str | None = None
        self.sandbox: Any = None  # subprocess.Popen once setup() has run
        self.sandbox_url = ""
        self.r: Any = None  # redis.Redis once setup() has run
        self.redis_url = ""
        self.redis_exclusive = False
        self.failed = False
        self.ours_app: Any = None
        self.baseline_app: Any = None
        self.worker_env: dict[str, str] = {}

    def setup(self) -> None:
        self._redis()
        self._sandbox()
        self._producer()

    def _redis(self) -> None:
        import redis

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

    def _sandbox(self) -> None:
        env = dict(os.environ)
        env.pop("SANDBOX_FAULTS", None)
        self.sandbox, self.sandbox_url = procs.start_sandbox(
            args=["--duplicate-window", "0", "--account-id", ACCOUNT_ID, "--secret-key", SECRET_KEY], env=env)

    def _producer(self) -> None:
        # The producer is this process: the environment must be right BEFORE `tasks` is imported.
        interfaces = self.sandbox_url + "/interfaces/"
        os.environ.update({
            "REDIS_URL": self.redis_url, "PAYMENTS_CARD_KEY": CARD_KEY, "PAYMENTS_KEY_PREFIX": STORE_PREFIX,
            "BLUEPAY_URL": interfaces, "BLUEPAY_ACCOUNT_ID": ACCOUNT_ID, "BLUEPAY_SECRET_KEY": SECRET_KEY,
            "BLUEPAY_MODE": "TEST",
            "BENCH_REDIS_URL": self.redis_url, "BENCH_BLUEPAY_URL": interfaces,
            "BENCH_ACCOUNT_ID": ACCOUNT_ID, "BENCH_SECRET_KEY": SECRET_KEY, "BENCH_BASELINE_QUEUE": Baseline.queue,
        })
        from bench.baseline import app as baseline_app
        from worker import app as ours_app

        self.ours_app, self.baseline_app = ours_app, baseline_app
        if ours_app.conf.broker_url != self.redis_url:
            raise procs.StartError("the payments settings were loaded before the benchmark set REDIS_URL")
        if not self.args.producer_subscribe:
            # Fire and forget: no pub/sub subscription per delay() (completion comes from Redis keys).
            for app in (ours_app, baseline_app):
                app.backend.on_task_call = lambda producer, task_id: None
        self.worker_env = dict(os.environ)

    def close(self) -> None:
        if self.sandbox is not None:
            procs.stop(self.sandbox, timeout=5)
        if self.r is not None and not self.redis_exclusive:
            try:
                self.r.flushdb()  # no bench data (the baseline's messages hold clear test cards) left behind
            except Exception:
                pass
        if self.redis_proc is not None:
            procs.stop(self.redis_proc, timeout=5)
        if self.redis_tmp is not None:
            shutil.rmtree(self.redis_tmp, ignore_errors=True)
        if not self.failed:
            shutil.rmtree(self.logdir, ignore_errors=True)
        else:
            print(f"bench: worker logs kept in {self.logdir}", file=sys.stderr)

    def set_latency(self, latency_ms: float) -> None:
        """Reset the sandbox's ledger and inject ``latency_ms`` into every gateway call."""
        import requests

        requests.post(self.sandbox_url + "/sandbox/reset", json={}, timeout=10).raise_for_status()
        requests.post(self.sandbox_url + "/sandbox/faults", json={"latency_ms": latency_ms, "jitter_ms": 0},
                      timeout=10).raise_for_status()

    def subscriptions(self) -> int:
        """Channels this producer is subscribed to for results (Celery's pub/sub per delay())."""
        total = 0
        for app in (self.ours_app, self.baseline_app):
            consumer = getattr(app.backend, "result_consumer", None)
            total += len(getattr(consumer, "subscribed_to", ()) or ())
        return total

    def pubsub_output_memory(self, own: Counter) -> int:
        """Bytes Redis holds in output buffers for pub/sub clients: results published to channels a
        producer subscribed to but never reads pile up there (client-output-buffer-limit pubsub)."""
        own["client"] += 1
        own[ROUND_TRIPS] += 1
        total = 0
        for client in self.r.client_list(_type="pubsub"):
            total += int(client.get("omem", 0) or 0)
        return total


# ------------------------------------------------------------------------------------ workers
#: kombu's Redis transport: how long a worker's BRPOP waits on the server (``brpop_timeout``, 1 s by default).
BRPOP_TIMEOUT = 1.0


class Workers:
    """Starts, stops, pauses and resumes the ``celery worker`` processes of a side."""

    def __init__(self, env: BenchEnv):
        self.env = env

    def start(self, side: Side, pool: str, concurrency: int, workers: int) -> None:
        env, args = self.env, self.env.args
        host = socket.gethostname()
        for i in range(workers):
            name = f"bench-{side.name}-{env.run_id}-{i}@{host}"
            log = env.logdir / f"{side.name}-{pool}-c{concurrency}-{i}.log"
            extra = list(args.ours_worker_arg) if isinstance(side, Ours) else []
            worker_env = dict(env.worker_env)
            worker_env.pop("WORKER_METRICS_PORT", None)
            if isinstance(side, OursMetricsOff):
                extra += ["-Q", side.queue]
            elif isinstance(side, Ours) and args.metrics_ab:
                worker_env["WORKER_METRICS_PORT"] = str(procs.free_port())  # one port per worker process
            if args.metrics_ab:
                # Both sides are our worker: a message kombu hands back "redelivered" (a consumer cancelled while
                # its BRPOP waited; Workers.consume now waits that out) would wait the commit horizon (60 s by
                # default) on either side. Short gateway timeouts keep any such wait to seconds, the same on both.
                worker_env.update(GATEWAY_READ_TIMEOUT="2", GATEWAY_COMMIT_HORIZON="8")
            side.procs.append(procs.start_celery_worker(
                side.app_module, env=worker_env, pool=pool, concurrency=concurrency,
                hostname=name, logfile=log, extra=extra))
            side.hostnames.append(name)
            side.logs.append(log)
        self._wait_answering(side)

    def _wait_answering(self, side: Side) -> None:
        deadline = time.monotonic() + 90
        missing = set(side.hostnames)
        while missing and time.monotonic() < deadline:
            for proc, log in zip(side.procs, side.logs, strict=True):
                if proc.poll() is not None:
                    self.env.failed = True
                    raise procs.StartError(f"{side.name} worker exited at start (rc={proc.returncode}): "
                                           f"{tail(log)}")
            replies = self.env.ours_app.control.ping(destination=sorted(missing), timeout=1.0) or []
            for reply in replies:
                missing -= set(reply)
        if missing:
            self.env.failed = True
            raise procs.StartError(f"{side.name} workers did not answer a ping: {sorted(missing)}")

    def stop(self, side: Side) -> None:
        for proc in side.procs:
            procs.stop(proc, timeout=15)
        side.procs, side.hostnames, side.logs = [], [], []

    def consume(self, side: Side, on: bool) -> None:
        control = self.env.ours_app.control
        verb = control.add_consumer if on else control.cancel_consumer
        for _ in range(5):
            replies = verb(side.queue, destination=side.hostnames, reply=True, timeout=5.0) or []
            if len(replies) >= len(side.hostnames):
                if not on:
                    # A BRPOP the worker sent before the cancel still waits on the server (up to kombu's 1 s):
                    # a message published meanwhile would be popped, handed back "redelivered" (no consumer) and
                    # then wait out the commit horizon, as a redelivered payment must. Under an event-loop pool
                    # (prefork, threads) that one message made a burst of 1,500 take a minute.
                    time.sleep(BRPOP_TIMEOUT + 0.5)
                return
        raise RuntimeError(f"{side.name} workers did not confirm {'add' if on else 'cancel'}_consumer")

    def check_alive(self, side: Side) -> None:
        for proc, log in zip(side.procs, side.logs, strict=True):
            if proc.poll() is not None:
                self.env.failed = True
                raise RuntimeError(f"{side.name} worker died (rc={proc.returncode}): {tail(log)}")

    @staticmethod
    def rss_mb(side: Side):
        peaks = [procs.tree_peak_rss_bytes(pid) for pid in side.pids]
        return round(max(peaks) / 2 ** 20, 1) if peaks else None


# ------------------------------------------------------------------------------------ one run
class Runner:
    """One measured run of N payments on one side: burst (pre-filled queue) or paced (open loop)."""

    def __init__(self, env: BenchEnv, workers: Workers):
        self.env = env
        self.workers = workers

    @property
    def r(self):
        return self.env.r

    def snapshot(self, side: Side, own: Counter) -> dict:
        import psutil

        me = psutil.Process().cpu_times()
        reads = int(self.r.info("stats").get("total_reads_processed", 0))
        cpu = self.r.info("cpu")
        cmds = commandstats(self.r.info("commandstats"))
        own["info"] += 3
        own[ROUND_TRIPS] += 3
        host = psutil.cpu_times()
        return {
            "t": time.time(),
            # the whole machine's busy CPU seconds (every core), for what other processes used meanwhile
            "host_busy": sum(host) - host.idle - getattr(host, "iowait", 0.0),
            "worker_cpu": sum(procs.tree_cpu_seconds(pid) for pid in side.pids),
            "producer_cpu": me.user + me.system,
            "sandbox_cpu": procs.tree_cpu_seconds(self.env.sandbox.pid),
            "redis_cpu": float(cpu.get("used_cpu_user", 0)) + float(cpu.get("used_cpu_sys", 0)),
            "cmds": cmds,
            # read events Redis handled: one per client round trip (a pipeline's commands arrive in one read)
            "reads": reads,
        }

    def _nothing_in_flight(self, side: Side, own: Counter) -> bool:
        pipe = self.r.pipeline(transaction=False)
        pipe.llen(side.queue)
        pipe.hlen("unacked")
        queued, unacked = pipe.execute()
        own["llen"] += 1
        own["hlen"] += 1
        own[ROUND_TRIPS] += 1
        return not queued and not unacked

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
                if self._nothing_in_flight(side, own):
                    return False
                last_change = now
            if now > deadline:
                return False
            self.workers.check_alive(side)
            time.sleep(POLL_SECONDS)

    def wait_first_pop(self, side: Side, n: int, own: Counter, limit: float = 5.0) -> float:
        """The clock starts when a worker takes the first message of the pre-filled queue (a worker
        picks up a re-added queue within one broker poll, up to 1 s after add_consumer)."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            own["llen"] += 1
            own[ROUND_TRIPS] += 1
            if self.r.llen(side.queue) < n:
                return time.time()
            time.sleep(0.001)
        return time.time()

    def drain(self, side: Side) -> None:
        """After a timed-out run: stop consuming, drop what is still queued."""
        self.workers.consume(side, False)
        self.r.delete(side.queue)
        time.sleep(1.0)

    def _burst(self, side, n, enqueue, own):
        """Enqueue ``n`` with the side's workers not consuming, then let them go: (s0, s1, t_start, sent, ids)."""
        ids, sent = [], []
        s0 = self.snapshot(side, own)
        for i in range(n):
            sent.append(time.time())
            ids.append(enqueue(i))
        s1 = self.snapshot(side, own)
        queued = self.r.llen(side.queue)  # n, plus any redelivered message of an earlier run
        own["llen"] += 1
        own[ROUND_TRIPS] += 1
        self.workers.consume(side, True)
        t_start = self.wait_first_pop(side, queued, own)
        return s0, s1, t_start, sent, ids

    def _paced(self, side, n, enqueue, own, rate):
        """Enqueue ``n`` at ``rate``/s to consuming workers: (s0, s1, t_start, sent, ids, max_lag)."""
        ids, sent, max_lag = [], [], 0.0
        self.workers.consume(side, True)
        # A worker may take up to one broker poll (kombu's BRPOP timeout, 1 s) to pick up a
        # re-added queue: do not let the first paced payments wait for that.
        time.sleep(2.0)
        s0 = self.snapshot(side, own)
        t_start = time.time() + 0.05
        interval = 1.0 / rate
        for i in range(n):
            target = t_start + i * interval
            now = time.time()
            if target > now:
                time.sleep(target - now)
            else:
                max_lag = max(max_lag, now - target)
            sent.append(target)  # latency from the scheduled time: no coordinated omission
            ids.append(enqueue(i))
        return s0, s0, t_start, sent, ids, max_lag

    def run_once(self, side: Side, n: int, latency_ms: float, *, paced_rate: float | None = None,
                 measure=True) -> dict:
        """One measured run of ``n`` payments: burst (pre-filled queue) or paced (open loop)."""
        args = self.env.args
        self.env.set_latency(latency_ms)
        own: Counter[str] = Counter()
        side.reset_poll(self.r, Counter())  # before the window: not subtracted
        side.redelivered = 0
        tag = f"{self.env.run_id}-{uuid.uuid4().hex[:6]}"
        deadline = time.monotonic() + args.timeout
        # Fire and forget keeps only the task ids. With --producer-subscribe the AsyncResults are
        # held until the run is over, as an application that tracks them would: each holds a
        # pub/sub subscription (Celery drops it when the AsyncResult is garbage collected).
        held: list | None = [] if args.producer_subscribe else None

        def enqueue(i):
            result = side.enqueue(i, tag)
            if held is not None:
                held.append(result)
            return result.id

        if paced_rate is None:
            s0, s1, t_start, sent, ids = self._burst(side, n, enqueue, own)
            max_lag = 0.0
        else:
            s0, s1, t_start, sent, ids, max_lag = self._paced(side, n, enqueue, own, paced_rate)
        subscribed = self.env.subscriptions()
        finished = self.wait_done(side, ids, own, deadline, latency_ms)
        s2 = self.snapshot(side, own)
        pubsub_omem = self.env.pubsub_output_memory(own) if held is not None else None
        held = None  # drops them (and their subscriptions) now, before the next run
        if finished:
            self.workers.consume(side, False)
        else:
            self.drain(side)
        rows = side.collect(ids, self.r)
        if not measure:
            return {}
        m = run_metrics(n=n, ids=ids, sent=sent, rows=rows, snapshots=(s0, s1, s2), own=own, t_start=t_start,
                        finished=finished, paced_rate=paced_rate, max_lag=max_lag)
        if m["error_ids"]:
            self.env.failed = True  # keep the worker logs for a look
        m["redelivered"] = side.redelivered
        m["producer_subscriptions"] = subscribed
        m["pubsub_output_buffer_bytes"] = pubsub_omem
        return m


# ------------------------------------------------------------------------------------ profiling
class Profiler:
    """py-spy attached to a side's workers during one extra, unmeasured burst."""

    def __init__(self, env: BenchEnv, runner: Runner):
        self.env = env
        self.runner = runner
        self.spies: list = []  # every py-spy still running, stopped by close()

    def _start(self, side: Side, pool: str, exe: str) -> list[Path]:
        files = []
        for i, pid in enumerate(side.pids):
            path = self.env.out / f"profile-{self.env.stamp}-{side.name}-w{i}.folded"
            cmd = [exe, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--full-filenames",
                   "-o", str(path)]
            if pool == "prefork":
                cmd.append("--subprocesses")
            self.spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                               start_new_session=True))
            files.append(path)
        return files

    def _stop(self, spies: list) -> None:
        for spy in spies:
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)
        for spy in spies:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                procs.stop(spy)
            self.spies.remove(spy)

    def profile(self, side: Side, n: int, latency_ms: float, pool: str) -> dict:
        exe = procs.py_spy_path()
        if not exe:
            return {"error": "py-spy not installed (pip install py-spy)"}
        self.env.out.mkdir(parents=True, exist_ok=True)
        already = len(self.spies)
        files = self._start(side, pool, exe)
        spies = self.spies[already:]
        time.sleep(1.5)  # attach
        try:
            run = self.runner.run_once(side, n, latency_ms)
        finally:
            self._stop(spies)
        summary = summarize_profile(merge_folded(files))
        errs = [s.stderr.read()[-500:] for s in spies if s.returncode not in (0, None)]
        return {"files": [str(f) for f in files], "run": {k: run.get(k) for k in ("per_s", "cpu_ms")},
                "summary": summary, **({"py_spy_errors": errs} if errs and not summary.get("samples") else {})}

    def close(self) -> None:
        for spy in self.spies:
            procs.stop(spy, timeout=5)


# ------------------------------------------------------------------------------------ the matrix
class Bench:
    """The whole benchmark: every pool x concurrency x latency, both sides, ``--repeat`` times."""

    def __init__(self, args):
        self.args = args
        self.env = BenchEnv(args)
        self.workers = Workers(self.env)
        self.runner = Runner(self.env, self.workers)
        self.profiler = Profiler(self.env, self.runner)
        self.ours: Ours | None = None
        self.baseline: Side | None = None
        self.loadavg_at_start: list[float] = []

    @property
    def sides(self) -> tuple[Side, Side]:
        assert self.ours is not None and self.baseline is not None, "setup() first"
        return self.ours, self.baseline

    def setup(self) -> None:
        self.env.setup()
        self.ours = Ours()
        # --metrics-ab: the other side is our worker without metrics (the ratio is what metrics cost)
        self.baseline = OursMetricsOff() if self.args.metrics_ab else Baseline()

    def close(self) -> None:
        self.profiler.close()
        for side in (self.ours, self.baseline):
            if side is not None:
                self.workers.stop(side)
        self.env.close()

    def run(self) -> dict:
        configs: list[dict] = []
        profiles: dict = {}
        started = datetime.now(UTC)
        self.loadavg_at_start = [round(x, 2) for x in os.getloadavg()]
        for pool, conc, workers in itertools.product(self.args.pool, self.args.concurrency, self.args.workers):
            configs += self._block(pool, conc, workers, profiles)
        return self._result(configs, profiles, started)

    def _block(self, pool: str, conc: int, workers: int, profiles: dict) -> list[dict]:
        """One pool x concurrency x worker count: start both sides' workers, measure every latency, stop them."""
        a = self.args
        warm = a.warmup if a.warmup is not None else max(20, min(500, 2 * conc * workers))
        for side in self.sides:
            self.workers.start(side, pool, conc, workers)
        try:
            for side in self.sides:
                self.workers.consume(side, False)
            configs = [self._latency(pool, conc, workers, latency, warm, profiles) for latency in a.latency_ms]
            # Peak RSS over the workers' life in this pool/concurrency block.
            for cfg in configs:
                for side in self.sides:
                    cfg[side.name]["rss_peak_mb"] = Workers.rss_mb(side)
            return configs
        finally:
            for side in self.sides:
                self.workers.stop(side)

    def _alternating(self, rep: int) -> tuple[Side, Side]:
        ours, baseline = self.sides
        return (ours, baseline) if rep % 2 == 0 else (baseline, ours)

    def _latency(self, pool: str, conc: int, workers: int, latency: float, warm: int, profiles: dict) -> dict:
        a = self.args
        bound = conc * workers / (latency / 1000.0) if latency > 0 else None
        say(f"== {pool} c={conc} w={workers} latency={latency:g}ms: warm-up {warm} per side")
        for side in self.sides:
            self.runner.run_once(side, warm, latency, measure=False)
        runs = self._bursts(latency)
        cap = median([m["per_s"] for m in runs["ours"]])
        rate = a.paced_fraction * cap if a.paced and cap else None
        paced = self._paced(latency, rate) if rate else {"ours": [], "baseline": []}
        if a.profile and not profiles:
            for side in self.sides:
                say(f"   profiling {side.name} (one extra burst, not in the medians)")
                profiles[side.name] = self.profiler.profile(side, a.payments, latency, pool)
        return config_summary((pool, conc, latency), workers=workers, bound=bound, runs=runs, paced=paced,
                              rate=rate, producer_subscribe=a.producer_subscribe)

    def _bursts(self, latency: float) -> dict:
        a = self.args
        runs: dict[str, list] = {"ours": [], "baseline": []}
        for rep in range(a.repeat):
            for side in self._alternating(rep):
                m = self.runner.run_once(side, a.payments, latency)
                runs[side.name].append(m)
                say(f"   burst {rep + 1}/{a.repeat} {side.name:8s} {m['per_s']}/s "
                    f"cpu {m['cpu_ms']} ms/payment errors {m['errors']}")
        return runs

    def _paced(self, latency: float, rate: float) -> dict:
        a = self.args
        paced: dict[str, list] = {"ours": [], "baseline": []}
        n_paced = min(a.payments, max(100, int(rate * a.paced_max_seconds)))
        for rep in range(a.repeat):
            for side in self._alternating(rep):
                m = self.runner.run_once(side, n_paced, latency, paced_rate=rate)
                paced[side.name].append(m)
                say(f"   paced {rep + 1}/{a.repeat} {side.name:8s} at {rate:.0f}/s: "
                    f"p50 {m['p50_ms']} p99 {m['p99_ms']} ms errors {m['errors']}")
        return paced

    def _result(self, configs, profiles, started) -> dict:
        a, env = self.args, self.env
        result = {
            "loadavg_at_start": self.loadavg_at_start,
            "started_at": started.isoformat(timespec="seconds"),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:])]),
            "settings": {
                "payments": a.payments, "repeat": a.repeat, "workers": a.workers, "pools": a.pool,
                "concurrency": a.concurrency, "latency_ms": a.latency_ms, "paced": a.paced,
                "paced_fraction": a.paced_fraction, "producer_subscribe": a.producer_subscribe,
                "redis_exclusive": env.redis_exclusive,
                "ours_worker_args": a.ours_worker_arg,
                "metrics_ab": a.metrics_ab,
                "redis": "private redis-server" if env.redis_exclusive else env.redis_url,
            },
            "machine": machine_info(env.r.info("server")),
            "producer_subscriptions_at_end": env.subscriptions(),
            "configs": configs,
            "targets": evaluate_targets(configs),
            "profile": profiles or None,
        }
        result.update(headline(configs))
        return result
