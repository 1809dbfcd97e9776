"""Reliability scenarios shared by ``tests/reliability`` (CI size) and ``tests/reliability/large.py`` (large runs).

Everything is real: ``celery worker`` processes (prefork or threads) started as subprocesses, Redis
(database 12 of the test Redis, or a redis-server of our own with AOF for the restart scenario),
and the BluePay sandbox over HTTP. The sandbox's ledger is the source of truth for what was charged;
the results store is checked against it.

A scenario returns a :class:`Report`; ``report.problems`` lists every broken promise (a test asserts it
is empty) and the counters feed the summary table (payments, faults injected, kills, duplicates
charged, payments lost, payments not in a final state, card-data hits).

Worker settings (``RELIABILITY_SETTINGS``) keep the production relations (visibility timeout > hard
time limit > soft time limit > gateway budgets) at a small scale: gateway budgets of 0.5 s + 1 s +
0.5 s give a soft limit of 11 s, a hard limit of 26 s, a lease of 31 s and a visibility timeout of
30 s, so a job lost with its worker comes back in about 33 s. The sweep is called from here with
``RECONCILE_AFTER`` = 1 s (production keeps it above 1.1 x the visibility timeout; here the caller
first waits until the broker is quiet, so no job of the sweep's records is still queued or running).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import psutil
import redis
from kombu.exceptions import OperationalError

from tests.support.card_scan import scan_files, scan_redis
from tests.support.env import CUSTOMER, TEST_CARD, TEST_CARD_KEY, redis_url_with_db
from tests.support.ports import free_port
from tests.support.sandbox import running_sandbox
from worker.config import Settings, get_settings
from worker.ops.processes import start_worker, stop

ROOT = Path(__file__).resolve().parents[2]

RELIABILITY_REDIS_URL = os.environ.get("TEST_RELIABILITY_REDIS_URL") or redis_url_with_db(12)

RELIABILITY_SETTINGS = {
    "PAYMENTS_CARD_KEY": TEST_CARD_KEY,
    "BLUEPAY_MODE": "TEST",
    "GATEWAY_CONNECT_TIMEOUT": "0.5",
    "GATEWAY_READ_TIMEOUT": "1",
    "GATEWAY_RETRY_ATTEMPTS": "3",
    "GATEWAY_RETRY_SECONDS": "0.5",
    # > connect + read: a request the client gave up on may still commit this long after it was sent
    "GATEWAY_COMMIT_HORIZON": "3",
    # Well below the visibility timeout, as in production (30 s vs 300 s); renewed every third of it while a call
    # is in flight, so a dead holder's lease lapses long before kombu redelivers its message.
    "LEASE_SECONDS": "10",
    "OUTAGE_RETRIES": "3",
    "OUTAGE_BACKOFF": "0.5",
    "OUTAGE_BACKOFF_MAX": "2",
    "BROKER_VISIBILITY_TIMEOUT": "30",
    # The workers' own view (beat-driven sweeps) keeps the production relation RECONCILE_AFTER > 1.1 x
    # visibility; the scenarios call the sweep themselves with 1 s once the broker is quiet.
    "RECONCILE_AFTER": "40",
    "STALE_AUTH_AGE": "7d",
    "SWEEP_INTERVAL": "300",
}

# 30 % of gateway requests fail, split evenly over six of the sandbox's fault kinds.
FAULT_MIX = {"refuse": 0.05, "http_502": 0.05, "drop_after_commit": 0.05, "slow_after_commit": 0.05,
             "garbled": 0.05, "bad_stamp": 0.05}
SLOW_SECONDS = 3  # > GATEWAY_READ_TIMEOUT: a slow reply is a read timeout (outcome unknown)

# Late commits (exactly-once v2): 30 % of gateway requests fail, half of them held by the gateway and committed
# after the client gave up. The hold is longer than GATEWAY_READ_TIMEOUT (1 s: the worker sees a read timeout)
# and, with the sandbox's latency (<= 0.15 s here), shorter than GATEWAY_COMMIT_HORIZON (3 s): a gateway that
# keeps the horizon's promise. stq cannot see a held request, so an early "absent" is a lie.
LATE_COMMIT_MIX = {"late_commit": 0.15, "refuse": 0.05, "drop_after_commit": 0.05, "http_502": 0.05}
LATE_COMMIT_SECONDS = 2.0

NON_FINAL = ("PENDING", "RETRYING", "UNKNOWN")
CHARGED = ("APPROVED", "VOIDED", "CAPTURED", "REFUNDED")

UNICODE_CUSTOMER = {"name1": "Zoë", "name2": "Ødegård-Łukasz", "addr1": "1 Straße des 17. Juni",
                    "city": "Zürich", "state": "ZH", "zipcode": "8001", "country": "CHE"}


# ------------------------------------------------------------------------------------------ plumbing
def settings_for(redis_url: str, sandbox, prefix: str, **overrides) -> Settings:
    """The test process's own Settings (sweeps, store reads) matching the workers'."""
    s = Settings(
        redis_url=redis_url, key_prefix=prefix, bluepay_account_id=sandbox.account_id,
        bluepay_secret_key=sandbox.secret_key, bluepay_url=sandbox.interfaces_url, card_key=TEST_CARD_KEY,
        connect_timeout=0.5, read_timeout=1.0, retry_attempts=3, retry_seconds=0.5, outage_retries=3,
        outage_backoff=0.5, outage_backoff_max=2.0, visibility_timeout=30.0, stale_auth_age=7 * 86400.0,
        sweep_interval=300.0, reconcile_after=1.0, commit_horizon_setting=3.0, lease_seconds=10.0,
    )
    return dataclasses.replace(s, **overrides)


def _publisher():
    """What the sweep task hands in: the current payments app publishes lost messages again."""
    from worker.broker.app import current_payments_app
    from worker.broker.outbox import AppPublisher

    return AppPublisher(current_payments_app())


def services_for(settings: Settings):
    from worker.services import Services

    return Services(settings)


def worker_env(redis_url: str, sandbox, prefix: str, **overrides) -> dict:
    env = dict(os.environ)
    env.update(RELIABILITY_SETTINGS)
    env.update({
        "REDIS_URL": redis_url,
        "PAYMENTS_KEY_PREFIX": prefix,
        "BLUEPAY_URL": sandbox.interfaces_url,
        "BLUEPAY_ACCOUNT_ID": sandbox.account_id,
        "BLUEPAY_SECRET_KEY": sandbox.secret_key,
    })
    env.update({k: str(v) for k, v in overrides.items()})
    return env


#: The producer apps of the open ``producer_for`` blocks, innermost last (publishing threads read it too).
_producers: list = []


@contextlib.contextmanager
def producer_for(redis_url: str, settings: Settings | None = None):
    """A producer of its own, pointed at ``redis_url`` (broker, result backend and, as a real producer sharing the
    workers' REDIS_URL and key prefix would, the results store the publish path writes), built by the composition
    root (``worker.broker.app.create_app``); :func:`producer_tasks` publishes through it, from any thread. Nothing
    of the test process's own app is touched."""
    from worker.broker.app import create_app, current

    settings = dataclasses.replace(settings or get_settings(), redis_url=redis_url)
    app = create_app(settings, main="reliability-producer")
    _producers.append(app)
    try:
        with current(app):
            yield app
    finally:
        _producers.remove(app)
        app.close()


def producer_tasks(*names: str) -> list:
    """The payment tasks (``"sale"``, ``"void"``...) of this thread's current producer app (``current(app)``), else of
    the innermost open :func:`producer_for`, else ``worker.app``'s."""
    import celery

    from worker.broker.app import app as default_app

    app = celery.current_app._get_current_object()
    if app is default_app or getattr(app, "payments_services", None) is None:
        app = _producers[-1] if _producers else default_app
    return [app.tasks[f"payments.{name}"] for name in names]


def wait_ready(logfile: Path, proc, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}: {_tail(logfile)}")
        if logfile.exists() and " ready." in logfile.read_text("utf-8", "replace"):
            return
        time.sleep(0.1)
    raise RuntimeError(f"worker not ready after {timeout}s: {_tail(logfile)}")


def _tail(path: Path, n=2000) -> str:
    try:
        return path.read_text("utf-8", "replace")[-n:]
    except OSError:
        return "(no log)"


@dataclass
class Worker:
    proc: subprocess.Popen
    name: str
    logfile: Path


class Fleet:
    """Celery worker processes of one scenario; kills them (SIGKILL) and starts replacements."""

    def __init__(self, name: str, env: dict, logdir: Path, *, size=2, pool="prefork", concurrency=3,
                 queues: str | None = None, rng: random.Random | None = None, prefix: list[str] | None = None):
        """``prefix``: a command the workers run under (``["faketime", "-f", "+120s"]``)."""
        self.redis_url = env["REDIS_URL"]
        self.name, self.env, self.logdir = name, env, Path(logdir)
        self.size, self.pool, self.concurrency, self.queues = size, pool, concurrency, queues
        self.prefix = list(prefix or [])
        self.rng = rng or random.Random()
        self.workers: list[Worker] = []
        self.retired: list[Worker] = []
        self.seq = 0
        self.child_kills = 0
        self.worker_kills = 0
        self.crashes = 0  # workers that exited on their own (restarted by the supervisor, if running)
        self.events: list[str] = []
        self._supervising = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.lock = threading.Lock()

    @property
    def kills(self) -> int:
        return self.child_kills + self.worker_kills

    @property
    def logfiles(self) -> list[Path]:
        return [w.logfile for w in self.workers + self.retired]

    def start(self) -> Fleet:
        starting = [self._launch() for _ in range(self.size)]
        for w in starting:
            wait_ready(w.logfile, w.proc)
            self.workers.append(w)
        return self

    def _launch(self) -> Worker:
        self.seq += 1
        name = f"{self.name}{self.seq}-{uuid.uuid4().hex[:6]}"
        logfile = self.logdir / f"worker-{name}.log"
        if self.prefix:
            cmd = [*self.prefix, sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool", self.pool,
                   "--concurrency", str(self.concurrency), "--loglevel", "INFO", "--without-gossip",
                   "--without-mingle", "--hostname", f"{name}@%h", "--logfile", str(logfile)]
            if self.queues:
                cmd += ["--queues", self.queues]
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        else:
            proc = start_worker(env=self.env, pool=self.pool, concurrency=self.concurrency, loglevel="INFO",
                                logfile=logfile, hostname=f"{name}@%h", queues=self.queues)
        return Worker(proc, name, logfile)

    def pids(self) -> set[int]:
        """Every process of the live workers (prefix wrappers, main processes, prefork children)."""
        out = set()
        for w in self.workers:
            with contextlib.suppress(psutil.Error):
                top = psutil.Process(w.proc.pid)
                out |= {top.pid, *(p.pid for p in top.children(recursive=True))}
        return out

    def kill_child(self) -> bool:
        """SIGKILL one prefork child of a random worker (the main process requeues its job)."""
        with self.lock:
            live = [w for w in self.workers if w.proc.poll() is None]
            self.rng.shuffle(live)
            for w in live:
                try:
                    kids = psutil.Process(w.proc.pid).children()
                except psutil.NoSuchProcess:
                    continue
                if not kids:
                    continue
                victim = self.rng.choice(kids)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim.pid, signal.SIGKILL)
                    self.child_kills += 1
                    self.events.append(f"{time.time():.3f} SIGKILL child {victim.pid} of {w.name}")
                    return True
        return False

    def kill_worker(self, restart=True, fenced=False) -> bool:
        """SIGKILL a whole worker (main process and children: its process group), then start another.

        ``fenced``: first stop the worker (SIGSTOP) at a moment when its broker connection is provably
        waiting in BRPOP, and unblock that BRPOP from the Redis side, so that no message is between
        Redis and the worker's unacked record when it dies. Without it the kill may land in kombu's
        fetch gap (a message popped by BRPOP and not yet recorded as unacked), which loses the message:
        see :func:`run_fetch_gap`. Returns False when no such moment came within a few seconds."""
        with self.lock:
            live = [w for w in self.workers if w.proc.poll() is None]
            if not live:
                return False
            w = self.rng.choice(live)
            if fenced and not self._fence(w):
                self.events.append(f"{time.time():.3f} no safe moment to kill worker {w.name}; skipped")
                return False
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w.proc.pid, signal.SIGKILL)
            self.events.append(f"{time.time():.3f} SIGKILL worker {w.name} (process group {w.proc.pid})"
                               f"{' fenced' if fenced else ''}")
            w.proc.wait(10)
            self.worker_kills += 1
            self.workers.remove(w)
            self.retired.append(w)
        if restart:
            fresh = self._launch()
            wait_ready(fresh.logfile, fresh.proc)
            with self.lock:
                self.workers.append(fresh)
        return True

    def stop_at_safe_point(self, w: Worker, client: redis.Redis, *, timeout=8.0, blocked_only=False) -> list | None:
        """SIGSTOP ``w`` at a moment when no message is between Redis and its unacked record; None if no such
        moment came within ``timeout`` (the worker runs on).

        Its prefork children are stopped first, so that no slot frees up and the main process stops fetching
        (prefetch full). Then the main process is stopped and its broker connections are looked at: either
        the BRPOP waits (blocked: nothing popped for it; returns those connections, to unblock) or the last
        BRPOP returned over a second ago and none followed (returns []: whatever it fetched was recorded long
        ago; or the last fetch was the pop script, which records what it takes in the same call). ``blocked_only``:
        insist on a waiting BRPOP."""
        port = int(client.connection_pool.connection_kwargs.get("port", 6379))
        try:
            children = psutil.Process(w.proc.pid).children()
        except psutil.Error:
            children = []
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(w.proc.pid, signal.SIGSTOP)
            try:
                ports = {c.laddr.port for c in psutil.Process(w.proc.pid).net_connections(kind="tcp")
                         if c.raddr and c.raddr.port == port}
            except psutil.Error:
                ports = set()
            mine = [c for c in client.client_list() if int(c["addr"].rsplit(":", 1)[1]) in ports]
            fetching = [c for c in mine if c.get("cmd") in ("brpop", "blpop", "blmove", "brpoplpush")]
            if fetching and all("b" in c["flags"] for c in fetching):
                return fetching
            if (not blocked_only and fetching and not any("b" in c["flags"] for c in fetching)
                    and min(int(c.get("idle", 0)) for c in fetching) >= 2):
                return []
            # No connection's last command a BRPOP: the fetch connection last ran the pop script
            # (worker/broker/atomic_fetch.py), which records what it takes in the same call, or has not fetched yet.
            if not blocked_only and not fetching and mine:
                return []
            os.kill(w.proc.pid, signal.SIGCONT)
            time.sleep(self.rng.uniform(0.02, 0.1))
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGCONT)
        return None

    def _fence(self, w: Worker) -> bool:
        """Leave ``w`` stopped at a safe point, a waiting BRPOP unblocked from the Redis side (it returns nil,
        not a message)."""
        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        try:
            for _ in range(10):
                fetching = self.stop_at_safe_point(w, client)
                if fetching is None:
                    return False
                if all(client.client_unblock(int(c["id"])) for c in fetching):
                    return True
                os.killpg(w.proc.pid, signal.SIGCONT)  # a message arrived in between: let it be recorded
            return False
        finally:
            client.close()

    def supervise(self) -> Fleet:
        """Restart workers that exit on their own, as any deployment's process supervisor does."""
        def loop():
            while not self._supervising.wait(0.5):
                with self.lock:
                    dead = [w for w in self.workers if w.proc.poll() is not None]
                    for w in dead:
                        self.workers.remove(w)
                        self.retired.append(w)
                        self.crashes += 1
                        self.events.append(f"{time.time():.3f} worker {w.name} exited on its own "
                                           f"({w.proc.returncode}); restarting")
                for _ in dead:
                    fresh = self._launch()
                    try:
                        wait_ready(fresh.logfile, fresh.proc)
                    finally:
                        with self.lock:
                            self.workers.append(fresh)

        self._supervisor = threading.Thread(target=loop, daemon=True, name="supervisor")
        self._supervisor.start()
        return self

    def stop(self) -> None:
        self._supervising.set()
        if self._supervisor is not None:
            self._supervisor.join(30)
        for w in self.workers:
            stop(w.proc)
        for w in self.retired:  # already dead; reap
            stop(w.proc)
        self.retired += self.workers
        self.workers = []


class OwnRedis:
    """A redis-server of our own with AOF (appendfsync always) in ``directory``, restartable in place.
    ``aof=False``: a throwaway one without persistence (the large run's own database)."""

    def __init__(self, directory: Path, port: int | None = None, aof: bool = True):
        self.aof = aof
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)

    def start(self, timeout=15.0) -> OwnRedis:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
               "--daemonize", "no", "--logfile", str(self.dir / "redis-server.log")]
        cmd += ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else ["--appendonly", "no"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=2).ping():
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {_tail(self.dir / 'redis-server.log')}")
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer")

    def stop(self, how="shutdown") -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if how == "shutdown":
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            with contextlib.suppress(redis.RedisError):  # no client-side retries: the server is meant to go
                redis.Redis(port=self.port, socket_timeout=10, retry=Retry(NoBackoff(), 0)).shutdown()
        elif how == "term":
            self.proc.send_signal(signal.SIGTERM)
        else:
            self.proc.kill()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self, how="shutdown", down_seconds=1.0) -> None:
        self.stop(how)
        time.sleep(down_seconds)
        self.start()
        self.restarts += 1

    def files(self) -> list[Path]:
        return sorted(p for p in self.dir.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------ jobs
@dataclass
class Job:
    payment_id: str
    operation: str  # "sale" or "auth"
    amount: str
    chained: bool = False  # (sale | void): an approved sale must end voided exactly once
    stale_void: bool = False  # an approved auth the stale-auth sweep must void exactly once
    how: str = "key"
    task_id: str = ""
    published_at: float = 0.0

    @property
    def approves(self) -> bool:
        return int(Decimal(self.amount)) % 2 == 1


_LETTERS = str.maketrans("0123456789", "ghijklmnop")


def new_key(prefix="rel") -> str:
    """An idempotency key without digits. (Celery's own task ids, canonical UUIDs, are used too: a few in a
    thousand hold a Luhn-valid digit run, which once made the store refuse them as card numbers.)"""
    return f"{prefix}-{uuid.uuid4().hex.translate(_LETTERS)}"


def make_amount(rng: random.Random, approve: bool | None = None) -> str:
    dollars = rng.randint(1, 400)
    if approve is True and dollars % 2 == 0:
        dollars += 1
    if approve is False and dollars % 2 == 1:
        dollars += 1
    return f"{dollars}.{rng.choice(['00', '01', '25', '50', '99', f'{rng.randint(0, 99):02d}'])}"


def publish(spec: dict, *, retry_for: float = 60.0, retries: list | None = None) -> Job:
    """Publish one job the way producers do; retry (same operation id) while the broker is unreachable.

    ``spec``: operation, amount, chained, how ("key": idempotency_key; "task_id": an explicit task id;
    "delay": plain ``delay()`` with the id Celery picks, only where the broker stays up).
    """
    auth, sale, void = producer_tasks("auth", "sale", "void")

    task = sale if spec["operation"] == "sale" else auth
    kwargs = {"amount": spec["amount"], "card": dict(TEST_CARD), "customer": dict(spec.get("customer") or CUSTOMER)}
    if spec.get("token"):  # a repeat charge of a stored card: no card at all (docs/tokens.md)
        kwargs = {"amount": spec["amount"], "token": spec["token"], "customer": kwargs["customer"]}
    how, chained = spec.get("how", "key"), spec.get("chained", False)
    key = spec.get("payment_id") or new_key()
    deadline = time.monotonic() + retry_for
    while True:
        try:
            if chained:
                if how == "delay":
                    res = (task.s(**kwargs) | void.s()).delay()
                    pid = tid = res.parent.id
                else:
                    tid = (task.s(**kwargs, idempotency_key=key) | void.s()).delay().parent.id
                    pid = key
            elif how == "key":
                tid = task.delay(**kwargs, idempotency_key=key).id
                pid = key
            elif how == "task_id":
                pid = tid = task.apply_async(kwargs=kwargs, task_id=key).id
            else:
                pid = tid = task.delay(**kwargs).id
            return Job(pid, spec["operation"], spec["amount"], chained=chained,
                       stale_void=spec.get("stale_void", False), how=how, task_id=tid, published_at=time.time())
        # The broker went away (RuntimeError: Celery's result-backend subscriber gave up reconnecting; it
        # recovers once Redis is back): publish the same id again.
        except (OperationalError, redis.RedisError, OSError, RuntimeError):
            if how == "delay" or time.monotonic() > deadline:
                raise
            if retries is not None:
                retries.append(key)
            time.sleep(0.3)


class Producer(threading.Thread):
    """Publishes ``specs`` at ``rate`` per second in the background; ``jobs`` fills as it goes."""

    def __init__(self, specs: list[dict], rate: float):
        super().__init__(daemon=True, name="producer")
        self.specs, self.rate = specs, rate
        self.jobs: list[Job] = []
        self.error: BaseException | None = None
        self.publish_retries: list = []

    def run(self):
        start = time.monotonic()
        try:
            for i, spec in enumerate(self.specs):
                due = start + i / self.rate
                if due > time.monotonic():
                    time.sleep(max(0.0, due - time.monotonic()))  # the time may pass due in between
                self.jobs.append(publish(spec, retries=self.publish_retries))
        except BaseException as exc:  # reported by the scenario
            self.error = exc


def sale_specs(n: int, rng: random.Random, *, chained_share=0.3, hows=("key", "task_id", "delay"),
               token: str = "", token_share: float = 0.0) -> list[dict]:
    """``token``: a stored card's transaction id; ``token_share`` of the sales charge it instead of a card."""
    specs = []
    for i in range(n):
        chained = rng.random() < chained_share
        how = rng.choice([h for h in hows if h != "task_id"] if chained else list(hows))
        specs.append({"operation": "sale", "amount": make_amount(rng), "chained": chained, "how": how,
                      "customer": UNICODE_CUSTOMER if i % 7 == 3 else CUSTOMER,
                      "token": token if token and rng.random() < token_share else ""})
    return specs


def stored_card(svc) -> tuple[str, str]:
    """A card stored with a $0 auth through the flow (a record, so that reconciliation agrees): (its payment id,
    its trans id: the token)."""
    key = new_key("stored")
    outcome = svc.flow.charge("auth", key, amount="0.00", card=dict(TEST_CARD), customer=dict(CUSTOMER))
    assert outcome["status"] == "APPROVED" and outcome["message"] == "INFORMATION STORED", outcome
    return key, outcome["trans_id"]


# ------------------------------------------------------------------------------------------ checks
@dataclass
class Report:
    scenario: str
    payments: int = 0
    faults: int = 0
    kills: int = 0
    restarts: int = 0
    duplicates: int = 0
    disagreements: int = 0  # stored outcomes that disagree with the ledger
    lost: int = 0
    not_final: int = 0
    card_hits: int = 0
    seconds: float = 0.0
    statuses: Counter = field(default_factory=Counter)
    details: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def row(self) -> dict:
        return {"scenario": self.scenario, "payments": self.payments, "faults injected": self.faults,
                "kills": self.kills, "Redis restarts": self.restarts, "duplicates charged": self.duplicates,
                "store ≠ ledger": self.disagreements, "payments lost": self.lost, "not final": self.not_final,
                "card-data hits": self.card_hits,
                "seconds": round(self.seconds)}


def broker_quiet(client: redis.Redis, queues=("celery",)) -> bool:
    """No message waiting, none delivered and unacknowledged (running or held for a countdown)."""
    pipe = client.pipeline(transaction=False)
    pipe.hlen("unacked")
    for q in queues:
        pipe.llen(q)
    return not any(pipe.execute())


def pending_work(store, jobs: list[Job]) -> list[str]:
    """Operation ids not yet final, approved chained sales / stale auths not yet voided, and chain voids whose
    record is not final (a declined sale's void, SKIPPED once its link has run)."""
    pipe = store.redis.pipeline(transaction=False)
    for job in jobs:
        pipe.hget(store.record_key(job.payment_id), "status")
        pipe.hget(store.record_key(f"{job.payment_id}:void"), "status")
    out = []
    replies = pipe.execute()
    for job, status, void_status in zip(jobs, replies[::2], replies[1::2], strict=False):
        if status is None or status in NON_FINAL:
            out.append(job.payment_id)
        elif (job.chained or job.stale_void) and status == "APPROVED":
            out.append(job.payment_id + " (void due)")
        elif job.chained and void_status in NON_FINAL:
            out.append(job.payment_id + f" (void {void_status})")
    return out


def settle(svc, jobs: list[Job], *, timeout: float, report: Report, quiet_for=2.0, queues=("celery",),
           log=None, patience: float = 100.0) -> None:
    """Wait until the broker is quiet and every job is final (and voided where due), sweeping as needed.

    The sweep runs only once the broker has been quiet for ``quiet_for`` seconds: by then no job of a
    record it looks at is still queued or running, as RECONCILE_AFTER guarantees in production. ``patience``: how
    long a quiet broker may go without progress before the wait gives up (past lease, visibility, reconcile delay;
    a scenario whose holders may lose an attempt's report must add the fence window: docs/safety.md, point 5a).
    """
    from worker.payments.sweep import run_sweep

    sweeps: Counter = Counter()
    deadline = time.monotonic() + timeout
    quiet_since = None
    last_left, last_change = None, time.monotonic()
    client = svc.redis
    while True:
        try:
            quiet = broker_quiet(client, queues)
            left = pending_work(svc.store, jobs)
        except redis.ConnectionError:
            time.sleep(0.5)
            continue
        now = time.monotonic()
        quiet_since = (quiet_since or now) if quiet else None
        if left != last_left:
            last_left, last_change = left, now
        if not left and quiet_since and now - quiet_since >= quiet_for:
            report.details["all_final_at"] = time.time() - (now - last_change)
            break
        stuck = quiet_since and now - max(quiet_since, last_change) > patience
        if now > deadline or stuck:
            report.details["left_at_timeout"] = left[:20]
            report.details["left_records"] = _left_records(svc.store, left[:5])
            break
        if left and quiet_since and now - quiet_since >= quiet_for:
            result = run_sweep(svc, publisher=_publisher())
            sweeps.update({k: v for k, v in result.items() if isinstance(v, int) and not isinstance(v, bool)})
            sweeps["runs"] += 1
            if log:
                log(f"sweep: {result}; {len(left)} left")
        time.sleep(1.0)
    report.details["sweeps"] = dict(sweeps)


def _left_records(store, left: list[str]) -> dict[str, dict]:
    """What a wait that gave up saw of the records left: enough to tell which rule held each one back."""
    wanted = ("status", "lease_owner", "lease_until", "in_flight", "sent_ts", "fence_until", "next_check_ts",
              "reconcile_tries", "attempts", "message")
    out = {}
    for item in left:
        pid = item.split(" ")[0]
        try:
            rec = store.get(pid) or {}
        except redis.RedisError as exc:
            rec = {"error": type(exc).__name__}
        out[item] = {k: rec[k] for k in (*wanted, "error") if rec.get(k)}
    return out


def verify(report: Report, store, ledger: list[dict], jobs: list[Job], *, allow_error: bool,
           extra_order_ids: set | None = None) -> None:
    """Check every job against the ledger: one charge at most, a final record that matches it, voids."""
    by_order: dict[str, list[dict]] = defaultdict(list)
    approved_voids: dict[str, list[dict]] = defaultdict(list)
    for e in ledger:
        by_order[e["order_id"]].append(e)
        if e["trans_type"] == "VOID" and e["status"] == "1":
            approved_voids[e["origin"]].append(e)
    known = set(extra_order_ids or ())
    resumed = reconciled = 0

    def disagree(text: str) -> None:
        report.disagreements += 1
        report.problem(text)

    report.payments += len(jobs)
    for job in jobs:
        pid, ttype = job.payment_id, job.operation.upper()
        void_ids = [f"{pid}:void", f"{pid}:void-sweep", f"{pid}:void-stale"]
        void_ids += [f"{v}-{n}" for v in void_ids[1:] for n in range(2, 6)]  # sweep.fresh_void_id
        known.update([pid, *void_ids])
        charges = [e for e in by_order.get(pid, []) if e["trans_type"] == ttype]
        if len(charges) > 1:
            report.duplicates += len(charges) - 1
            report.problem(f"{pid}: charged {len(charges)} times: {[e['id'] for e in charges]}")
        rec = store.get(pid)
        if rec is None:
            report.lost += 1
            report.problem(f"{pid}: no record in the store (lost; task {job.task_id} published at "
                           f"{job.published_at:.3f}, {job.how}"
                           f"{', chained' if job.chained else ''}); ledger has {len(charges)} charge(s)")
            continue
        status = rec["status"]
        report.statuses[status] += 1
        resumed += int(rec.get("attempts") or 0) > 1
        reconciled += rec.get("reconciled") == "stq"
        if status in NON_FINAL:
            report.not_final += 1
            report.problem(f"{pid}: left {status}")
            continue
        charge = charges[0] if len(charges) == 1 else None
        if status in CHARGED or status == "DECLINED":
            want = "1" if status in CHARGED else "0"
            if charge is None or charge["status"] != want or charge["id"] != rec.get("trans_id"):
                disagree(f"{pid}: store says {status} {rec.get('trans_id')!r}, ledger has "
                         f"{[(e['id'], e['status']) for e in charges]}")
                continue
            if (status != "DECLINED") != job.approves:
                disagree(f"{pid}: {job.amount} ended {status}")
        elif status == "ERROR":
            if charges:
                disagree(f"{pid}: recorded ERROR ({rec.get('message')}) but the ledger has "
                         f"{[(e['id'], e['status']) for e in charges]}")
                continue
            if not allow_error:
                report.problem(f"{pid}: ended ERROR: {rec.get('message')}")
        else:
            report.problem(f"{pid}: unexpected final status {status}")
            continue
        # Voids: exactly one approved VOID of an approved chained sale / stale auth, none otherwise.
        voids = approved_voids.get(charge["id"], []) if charge is not None and charge["status"] == "1" else []
        must_void = (job.chained or job.stale_void) and charge is not None and charge["status"] == "1"
        if must_void:
            if len(voids) != 1:
                report.problem(f"{pid}: approved and due a void, ledger has {len(voids)} approved VOID(s)")
                continue
            assert charge is not None  # must_void says so
            if status != "VOIDED" or not charge.get("voided"):
                disagree(f"{pid}: voided in the ledger ({voids[0]['id']}) but the store says {status}")
            void_rec = store.get(voids[0]["order_id"])
            if voids[0]["order_id"] not in void_ids or void_rec is None:
                disagree(f"{pid}: void {voids[0]['id']} has order id {voids[0]['order_id']!r} with no record")
            elif void_rec["status"] != "APPROVED" or void_rec.get("trans_id") != voids[0]["id"]:
                disagree(f"{pid}: void record {void_rec['payment_id']} says {void_rec['status']} "
                         f"{void_rec.get('trans_id')!r}, ledger VOID {voids[0]['id']}")
        elif voids:
            report.problem(f"{pid}: voided ({[v['id'] for v in voids]}) though no void was asked for")
        elif status == "VOIDED":
            disagree(f"{pid}: store says VOIDED, the ledger has no void")
        if job.chained and not must_void:
            void_rec = store.get(f"{pid}:void")
            if void_rec is None:
                report.problem(f"{pid}: sale {status}, its chained void never ran")
            elif void_rec["status"] != "SKIPPED":
                report.problem(f"{pid}: sale {status}, its chained void ended {void_rec['status']}")
    stray = [e for e in ledger if e["order_id"] not in known]
    for e in stray:
        report.problem(f"ledger entry {e['id']} {e['trans_type']} order {e['order_id']!r} belongs to no job")
    report.details["resumed_after_redelivery"] = resumed
    report.details["adopted_from_stq"] = reconciled


def check_orders(report: Report, orders: dict[str, dict]) -> list[str]:
    """The ledger counted per ORDER_ID (the sandbox's ``/sandbox/orders``): one ORDER_ID is one operation, so at
    most one approved entry each, whatever its type. Returns the order ids charged more than once."""
    twice = []
    for order_id, row in sorted(orders.items()):
        approved = sum((row.get("approved") or {}).values())
        if approved > 1:
            twice.append(order_id)
            report.problem(f"order {order_id}: {approved} approved ledger entries {row.get('approved')}")
        if row.get("held"):
            report.problem(f"order {order_id}: {row['held']} late commit(s) still held when checked")
    report.details["orders_charged_twice"] = len(twice)
    return twice


def reconcile_run(report: Report, env: dict, wall_started: float, *, log=None) -> None:
    """The run ends as a day ends: ``payments reconcile`` over its days (UTC) against the sandbox's report must
    find no difference; each one found is a problem."""
    first = datetime.datetime.fromtimestamp(wall_started, datetime.UTC).date().isoformat()
    last = datetime.datetime.now(datetime.UTC).date().isoformat()
    done = subprocess.run([sys.executable, "-m", "worker.cli",
                           "reconcile", "--from", first, "--to", last, "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode not in (0, 1):
        report.problem(f"payments reconcile gave no verdict: {done.stderr.strip().splitlines()[-1:]}")
        return
    result = json.loads(done.stdout)
    report.details["reconcile"] = {d["day"]: {"rows": d["report_rows"], "records": d["records"],
                                              "differences": d["differences"]} for d in result["days"]}
    _say(log, f"{report.scenario}: payments reconcile --from {first} --to {last}: "
              f"{result['differences']} differences")
    for day in result["days"]:
        for f in day["findings"]:
            if f["kind"] != "adopted":
                report.problem(f"reconcile {day['day']}: {f['kind']} {f['payment_id'] or '-'} trans "
                               f"{f['trans_id'] or '-'}: {f['detail']}")


def scan_card_data(*, clients=(), files=()) -> list[str]:
    """Card numbers and the test CVV2 in clear in every key and value of ``clients`` and in ``files``."""
    hits = []
    for client in clients:
        hits += scan_redis(client, cvv2=TEST_CARD["cvv2"])
    return hits + scan_files(list(files), cvv2=TEST_CARD["cvv2"])


def scan_for_cards(report: Report, *, clients=(), files=()) -> list[str]:
    hits = scan_card_data(clients=clients, files=files)
    report.card_hits += len(hits)
    for hit in hits[:20]:
        report.problem(f"card data in clear: {hit}")
    return hits


def faults_injected(sandbox) -> int:
    return sum(sandbox.stats()["faults_injected"].values())


def _say(log, text):
    if log:
        log(text)


# ------------------------------------------------------------------------------------------ scenarios
def run_payments_under_chaos(name: str, redis_url: str, logdir: Path, *, payments: int, kill_every: float | None,
                             faults: bool, rate: float = 20.0, seed: int = 0, workers: int = 2,
                             concurrency: int = 3, settle_timeout: float = 240.0, sweep_during_faults=False,
                             fenced_kills=True, worker_overrides=None, fault_mix: dict | None = None,
                             duplicate_window: float | None = 0, late_commit_seconds: float | None = None,
                             latency_ms=(100, 200), token_share: float = 0.0, min_kills: tuple[int, int] = (0, 0),
                             log=None) -> Report:
    """Scenarios 1 and 2 (and both at once): sales, some chained with a void, while workers are
    SIGKILLed (prefork children, and whole workers every third kill) and/or 30 % of gateway requests
    fail. Then settle (sweeping once the broker is quiet) and check everything against the ledger.

    ``fenced_kills``: whole workers die at a safe point (:meth:`Fleet.stop_at_safe_point`), never inside
    kombu's fetch gap, which :func:`run_fetch_gap` hits on purpose; without it a kill may land anywhere.
    ``fault_mix``: the fault kinds and their shares (default :data:`FAULT_MIX`); ``duplicate_window``: the
    sandbox's duplicate rule (default 0: off, as BluePay publishes none; the sandbox otherwise answers in its
    documented dialect: stq unstamped); ``late_commit_seconds``: how long a ``late_commit`` is held.
    ``details["last_kill_to_all_final_s"]``: from the last SIGKILL to the moment every record was final.
    ``min_kills``: (prefork children, whole workers) killed at least, the kills going on past the publishing for up to
    30 s more until then (on a loaded host a whole worker's restart takes long, and fewer kills fit in the publishing).
    """
    rng = random.Random(seed)
    report = Report(name)
    started = time.monotonic()
    wall_started = time.time()
    prefix = f"payments:{name}:"
    with running_sandbox(duplicate_window=duplicate_window) as sandbox, \
            producer_for(redis_url, settings_for(redis_url, sandbox, prefix)):
        svc = services_for(settings_for(redis_url, sandbox, prefix))
        stored_id, token = stored_card(svc) if token_share else ("", "")  # before the faults: a card to charge
        fault_config = {"latency_ms": latency_ms[0], "jitter_ms": latency_ms[1], "slow_seconds": SLOW_SECONDS}
        if late_commit_seconds is not None:
            fault_config["late_commit_seconds"] = late_commit_seconds
        if faults:
            fault_config.update(probabilities=fault_mix or FAULT_MIX, endpoints=["bp10emu", "stq"])
        sandbox.set_faults(fault_config)
        fleet = Fleet(name, worker_env(redis_url, sandbox, prefix, **(worker_overrides or {})), logdir,
                      size=workers, concurrency=concurrency, rng=rng).start()
        try:
            producer = Producer(sale_specs(payments, rng, token=token, token_share=token_share), rate)
            producer.start()
            # Kill while publishing and a little after: prefork children mostly, a whole worker every third.
            kill_until = None
            n = 0
            while kill_every:
                time.sleep(kill_every * rng.uniform(0.6, 1.4))
                if not producer.is_alive():
                    kill_until = kill_until or time.monotonic() + 2 * kill_every
                    if time.monotonic() > kill_until + (0 if _enough_kills(fleet, min_kills) else 30):
                        break
                n += 1
                whole = n % 3 == 0
                if kill_until is not None and not _enough_kills(fleet, min_kills):  # past publishing: what is missing
                    whole = fleet.worker_kills < min_kills[1]
                if whole and fleet.kill_worker(fenced=fenced_kills):
                    _say(log, f"{name}: killed a whole worker ({fleet.kills} kills)")
                else:
                    fleet.kill_child()
                    _say(log, f"{name}: killed a prefork child ({fleet.kills} kills)")
            producer.join()
            if producer.error:
                report.problem(f"producer failed: {producer.error!r}")
            _say(log, f"{name}: {len(producer.jobs)} published in {time.monotonic() - started:.0f}s; settling")
            if faults and sweep_during_faults:
                # One sweep while the gateway still fails: it must neither raise nor do harm. (What it
                # cannot tell waits RECONCILE's 60 s retry delay, so CI leaves this to the sweep tests.)
                from worker.payments.sweep import run_sweep

                while not broker_quiet(svc.redis) and time.monotonic() - started < settle_timeout:
                    time.sleep(1)
                try:
                    report.details["sweep_during_faults"] = run_sweep(services_for(settings_for(
                        redis_url, sandbox, prefix, reconcile_after=0.5)), publisher=_publisher())
                except Exception as exc:
                    report.problem(f"a sweep during gateway faults raised {type(exc).__name__}: {exc}")
            if faults:
                report.faults = faults_injected(sandbox)
                report.details["faults_by_kind"] = sandbox.stats()["faults_injected"]
                sandbox.set_faults({})  # the gateway heals; what was unknown is reconciled by the sweep
            settle(svc, producer.jobs, timeout=settle_timeout, report=report, log=log)
            sandbox.wait_no_held(60)  # every request the gateway still held has committed: the ledger is complete
            report.kills = fleet.kills
            report.details.update(child_kills=fleet.child_kills, worker_kills=fleet.worker_kills,
                                  kill_events=fleet.events)
            kill_times = [float(e.split()[0]) for e in fleet.events if "SIGKILL" in e]
            if kill_times and "all_final_at" in report.details:
                report.details["last_kill_to_all_final_s"] = round(report.details["all_final_at"] - max(kill_times), 1)
            verify(report, svc.store, sandbox.ledger(), producer.jobs, allow_error=faults,
                   extra_order_ids={stored_id} if stored_id else None)
            report.details["token_sales"] = sum(1 for s in producer.specs if s.get("token"))
            check_orders(report, sandbox.orders())
            reconcile_run(report, worker_env(redis_url, sandbox, prefix), wall_started, log=log)
            stats = sandbox.stats()
            report.details["ledger_entries"] = stats["ledger_size"]
            report.details["late_commits"] = stats["late_commits"]["committed"]
            report.details["duplicate_window"] = stats["duplicate_window"]
        finally:
            fleet.stop()
        scan_for_cards(report, clients=[svc.redis], files=fleet.logfiles)
    report.seconds = time.monotonic() - started
    return report


def _enough_kills(fleet: Fleet, min_kills: tuple[int, int]) -> bool:
    return fleet.child_kills >= min_kills[0] and fleet.worker_kills >= min_kills[1]


def run_late_commits(name: str, redis_url: str, logdir: Path, *, payments: int, kill_every: float | None = 2.0,
                     rate: float = 20.0, seed: int = 31, settle_timeout: float = 300.0, fenced_kills=True,
                     token_share: float = 0.0, log=None) -> Report:
    """Late commits (exactly-once v2), with the sandbox's duplicate rule OFF (BluePay publishes no duplicate
    window, so nothing at the gateway catches a second send): 30 % of ``bp10emu`` and ``stq`` requests fail,
    half of them ``late_commit`` (held :data:`LATE_COMMIT_SECONDS`, longer than the read timeout and shorter
    than the commit horizon, invisible to stq until committed, then committed whatever the client did), the
    rest refused, 502 before processing, or dropped after the commit. Meanwhile prefork children and (every
    third kill, fenced) whole workers are SIGKILLed. The gateway then heals and the sweep runs until the
    broker is quiet and every operation is final.

    Checked: at most one SALE per operation and at most one approved ledger entry per ORDER_ID
    (:func:`check_orders`); every stored outcome agrees with the ledger (:func:`verify`: status, trans id,
    amount, voids); nothing non-final; no card data. A worker that trusts stq's "absent" right after a read
    timeout sends again while the first request is still held, and both commit."""
    return run_payments_under_chaos(name, redis_url, logdir, payments=payments, kill_every=kill_every, faults=True,
                                    rate=rate, seed=seed, settle_timeout=settle_timeout, fenced_kills=fenced_kills,
                                    fault_mix=LATE_COMMIT_MIX, duplicate_window=0,
                                    late_commit_seconds=LATE_COMMIT_SECONDS, latency_ms=(50, 100),
                                    token_share=token_share, log=log)


# A worker whose clock runs ahead. The gateway is slow here so that calls are in flight long enough for a
# duplicate delivery to arrive during one: read timeout 8 s (hence a 20 s horizon, a 60 s visibility timeout and
# RECONCILE_AFTER > 1.1 x that), and a lease of 3 s, shorter than a call, so that only the heartbeat keeps it.
SKEW = "+120s"
SKEW_SETTINGS = {"GATEWAY_READ_TIMEOUT": "8", "GATEWAY_COMMIT_HORIZON": "20", "BROKER_VISIBILITY_TIMEOUT": "60",
                 "LEASE_SECONDS": "3", "RECONCILE_AFTER": "70"}
_RESUMED = re.compile(r"resumed by (\S+) from (\w+)")
# A host whose wall clock is wrong: only CLOCK_REALTIME is off. libfaketime fakes CLOCK_MONOTONIC too by default,
# and then every timed wait on a lock or Event (Python computes an absolute CLOCK_MONOTONIC deadline from the
# faked clock, the kernel waits on the real one) lasts the offset longer: the heartbeat thread's
# ``Event.wait(lease / 3)`` would stall for two minutes, which no real clock skew does.
FAKETIME_ENV = {"FAKETIME_DONT_FAKE_MONOTONIC": "1"}
_FAKETIME_PROBE = ("import threading, time; t = time.monotonic(); threading.Event().wait(0.2); "
                   "print(time.time(), time.monotonic() - t)")


def faketime_offset(spec: str = SKEW) -> float | None:
    """Seconds by which ``faketime -f spec`` (with :data:`FAKETIME_ENV`) moves a Python process's ``time.time()``;
    None without faketime (Debian package ``faketime``), when it has no effect, or when a timed wait under it
    does not return in time."""
    if shutil.which("faketime") is None:
        return None
    try:
        out = subprocess.run(["faketime", "-f", spec, sys.executable, "-c", _FAKETIME_PROBE], capture_output=True,
                             text=True, timeout=10, check=True, env={**os.environ, **FAKETIME_ENV}).stdout
        now, waited = (float(x) for x in out.strip().splitlines()[-1].split())
        offset = now - time.time()
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return None
    return offset if abs(offset) > 1 and waited < 2 else None


def run_clock_skew(name: str, redis_url: str, logdir: Path, *, in_flight: int = 16, late: int = 6, skew: str = SKEW,
                   seed: int = 41, settle_timeout: float = 240.0, log=None) -> Report:
    """A worker whose clock runs ``skew`` ahead (``faketime``) gets duplicate deliveries of sales another worker
    holds. The sandbox's duplicate rule is off, so a second send is a second charge.

    Two workers on queues of their own: the normal one (prefork, 6 slots) and the skewed one (prefork, 4 slots,
    under ``faketime -f skew``, its monotonic clock left alone: see :data:`FAKETIME_ENV`). Each sale, with its
    idempotency key (every other one chained with a void, the void on the same worker's queue), goes to the normal
    worker first; once its record is held, the same sale is published to the skewed worker.

    1. In flight: the gateway answers in 2.5-4 s, longer than the 3 s lease: the normal worker's heartbeat keeps
       the lease. The duplicate is published while the call is in flight. Leases are judged on Redis server time,
       so the skewed worker must find them live (re-queue itself), never take one over.
    2. Late commits: the gateway holds every SALE 10 s (read timeout 8 s) before committing it. The normal worker
       times out and parks the sale UNKNOWN (its lease released); then the duplicate reaches the skewed worker,
       which may take the parked sale over but, with stq saying "absent" and the commit horizon (20 s, Redis
       time) still running, must not send it again.

    Checked besides :func:`verify` and :func:`check_orders`: no record ever went from PENDING to another holder
    (nobody dies here, so every PENDING record had a live lease); in phase 1 no record changed holder at all;
    every delivery (both workers', sales and voids) returned a final outcome to the result backend, none
    PENDING, UNKNOWN or ERROR; no card data.
    """
    offset = faketime_offset(skew)
    if offset is None:
        raise RuntimeError("faketime is missing or has no effect (Debian package: faketime)")
    rng = random.Random(seed)
    report = Report(name)
    report.details["skew_seconds"] = round(offset, 1)
    started = time.monotonic()
    prefix = f"payments:{name}:"
    tag = uuid.uuid4().hex[:6]
    q_normal, q_ahead = f"skew-normal-{tag}", f"skew-ahead-{tag}"
    with running_sandbox(duplicate_window=0) as sandbox, \
            producer_for(redis_url, settings_for(redis_url, sandbox, prefix)):
        svc = services_for(settings_for(redis_url, sandbox, prefix, read_timeout=8.0, commit_horizon_setting=20.0,
                                        visibility_timeout=60.0, lease_seconds=3.0))
        env = worker_env(redis_url, sandbox, prefix, **SKEW_SETTINGS)
        normal = Fleet(f"{name}-normal", env, logdir, size=1, concurrency=6, queues=q_normal, rng=rng)
        ahead = Fleet(f"{name}-ahead", {**env, **FAKETIME_ENV}, logdir, size=1, concurrency=4, queues=q_ahead,
                      rng=rng, prefix=["faketime", "-f", skew])
        deliveries: list[tuple[str, str, str]] = []  # (payment id, "normal"/"ahead", task id)
        phase1: list[Job] = []
        phase2: list[Job] = []
        ahead_pids: set[int] = set()
        try:
            normal.start()
            ahead.start()
            ahead_pids |= ahead.pids()

            def deliver(queue: str, who: str, job: Job) -> None:
                sale, void = producer_tasks("sale", "void")

                kwargs = {"amount": job.amount, "card": dict(TEST_CARD), "customer": dict(CUSTOMER),
                          "idempotency_key": job.payment_id}
                if job.chained:
                    res = (sale.s(**kwargs).set(queue=queue) | void.s().set(queue=queue)).apply_async()
                    deliveries.extend([(job.payment_id, who, res.parent.id), (job.payment_id + ":void", who, res.id)])
                else:
                    deliveries.append((job.payment_id, who, sale.apply_async(kwargs=kwargs, queue=queue).id))

            def wait_status(pid: str, statuses: tuple, *, in_flight=False, timeout=30.0) -> bool:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    status, flying = svc.redis.hmget(svc.store.record_key(pid), "status", "in_flight")
                    if status in statuses and (not in_flight or flying == "1"):
                        return True
                    time.sleep(0.02)
                return False

            # 1. calls in flight
            sandbox.set_faults({"latency_ms": 2500, "jitter_ms": 1500, "endpoints": ["bp10emu"]})
            during = 0
            for i in range(in_flight):
                chained = i % 2 == 0  # chained sales approve: their voids must run, once
                job = Job(new_key("rel-skew"), "sale", make_amount(rng, approve=True if chained else None),
                          chained=chained, how="key", published_at=time.time())
                phase1.append(job)
                deliver(q_normal, "normal", job)
                if not wait_status(job.payment_id, ("PENDING",), in_flight=True):
                    report.problem(f"{job.payment_id}: the normal worker never had it in flight")
                deliver(q_ahead, "ahead", job)
                during += svc.redis.hget(svc.store.record_key(job.payment_id), "status") == "PENDING"
            report.details["duplicates_published_while_in_flight"] = during
            _say(log, f"{name}: {in_flight} sales in flight, each also delivered to the skewed worker")
            deadline = time.monotonic() + 90
            while pending_work(svc.store, phase1) and time.monotonic() < deadline:
                time.sleep(0.5)
            ahead_pids |= ahead.pids()

            # 2. late commits: parked UNKNOWN by the normal worker, then delivered to the skewed one
            sandbox.set_faults({"probabilities": {"late_commit": 1.0}, "late_commit_seconds": 10,
                                "endpoints": ["bp10emu"]})
            for _ in range(late):
                job = Job(new_key("rel-skew-late"), "sale", make_amount(rng), how="key", published_at=time.time())
                phase2.append(job)
                deliver(q_normal, "normal", job)
            for job in phase2:
                if not wait_status(job.payment_id, ("UNKNOWN",), timeout=40):
                    report.problem(f"{job.payment_id}: never parked UNKNOWN after its read timeout")
                deliver(q_ahead, "ahead", job)
            _say(log, f"{name}: {late} late-committed sales parked, each also delivered to the skewed worker")
            time.sleep(3)
            sandbox.set_faults({})
            jobs = phase1 + phase2
            settle(svc, jobs, timeout=settle_timeout, report=report, queues=(q_normal, q_ahead), log=log)
            sandbox.wait_no_held(60)
            ahead_pids |= ahead.pids()
            verify(report, svc.store, sandbox.ledger(), jobs, allow_error=False)
            check_orders(report, sandbox.orders())
            report.details["late_commits"] = sandbox.stats()["late_commits"]["committed"]

            # Who held what: nobody dies here, so no PENDING record may change holder (its lease was live).
            taken: Counter = Counter()
            for job in jobs:
                for pid in (job.payment_id, job.payment_id + ":void"):
                    for entry in svc.store.history(pid):
                        m = _RESUMED.match(entry.get("note", ""))
                        if not m:
                            continue
                        owner, before = m.groups()
                        holder_pid = owner.split(":")[1] if owner.count(":") >= 2 else ""
                        who = "skewed" if holder_pid.isdigit() and int(holder_pid) in ahead_pids else "normal"
                        taken[f"{who}_from_{before}"] += 1
                        if before == "PENDING":
                            report.problem(f"{pid}: the {who} worker took over a live lease: {entry}")
                        elif job in phase1:
                            report.problem(f"{pid}: changed holder while in flight ({who}): {entry}")
            report.details["takeovers"] = dict(taken)
            # Every delivery returned a final outcome (never PENDING, UNKNOWN or an ERROR of its own).
            results: Counter = Counter()
            for pid, who, task_id in deliveries:
                raw = svc.redis.get(f"celery-task-meta-{task_id}")
                meta: dict = json.loads(raw) if raw else {}
                outcome: dict = meta["result"] if isinstance(meta.get("result"), dict) else {}
                status = outcome.get("status")
                results[f"{who}:{status}"] += 1
                if meta.get("status") != "SUCCESS" or status not in ("APPROVED", "DECLINED", "VOIDED", "SKIPPED"):
                    report.problem(f"{pid}: the {who} worker's task {task_id} returned "
                                   f"{meta.get('status')} {status} {outcome.get('message', '')!r}")
            report.details["task_results"] = dict(results)
            report.details["skewed_busy_requeues"] = sum(
                f.read_text("utf-8", "replace").count("] retry: Retry in") for f in ahead.logfiles if f.exists())
        finally:
            normal.stop()
            ahead.stop()
        scan_for_cards(report, clients=[svc.redis], files=normal.logfiles + ahead.logfiles)
    report.seconds = time.monotonic() - started
    return report


# A worker and a sweep whose calendar is days behind (issue 24, item 3): stq's REPORT_START_DATE/REPORT_END_DATE
# must come from the records' Redis times in the gateway's day, or stq says "absent" for every payment of today.
CALENDAR_BEHIND = "-3d"


def _sweep_under(prefix: list[str], env: dict, *, reconcile_after: float = 1.0) -> dict:
    """One sweep (``worker.payments.sweep.run_sweep``) in a process of its own run under ``prefix`` (faketime)."""
    code = ("import dataclasses, json; from worker.config import get_settings; from worker.services import Services; "
            "from worker.payments.sweep import run_sweep; "
            f"s = dataclasses.replace(get_settings(), reconcile_after={reconcile_after!r}); "
            "from worker.broker.app import default_app; from worker.broker.outbox import AppPublisher; "
            "print(json.dumps(run_sweep(Services(s), publisher=AppPublisher(default_app())), default=str))")
    out = subprocess.run([*prefix, sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_calendar_behind(name: str, redis_url: str, logdir: Path, *, sales: int = 8, skew: str = CALENDAR_BEHIND,
                        seed: int = 43, settle_timeout: float = 180.0, log=None) -> Report:
    """Workers and a sweep whose calendar is ``skew`` behind (``faketime``), every sale committed late (held
    :data:`LATE_COMMIT_SECONDS`, longer than the read timeout, shorter than the horizon), the duplicate rule off.

    1. Worker: each sale times out on read, stq says absent (held), it is parked UNKNOWN and re-queued; the next
       delivery asks stq again after the horizon. With a window from the worker's calendar stq says "absent" again
       and the sale is sent a second time (a second charge); it must be found and adopted instead.
    2. Sweep: another worker (``OUTAGE_RETRIES=0``) leaves each sale UNKNOWN for the sweep at its first parking;
       once the sales have committed and the horizon has passed, one sweep under the same ``faketime`` reconciles
       them. With a window from its calendar it closed them ``not_charged`` while the gateway had the charge; each
       must be adopted. Checked right after that sweep, before any sweep of this process (real clock) runs.
    Then :func:`verify` (no charge twice, store = ledger) and :func:`check_orders`.
    """
    offset = faketime_offset(skew)
    if offset is None:
        raise RuntimeError("faketime is missing or has no effect (Debian package: faketime)")
    rng = random.Random(seed)
    report = Report(name)
    report.details["skew_seconds"] = round(offset, 1)
    prefix_cmd = ["faketime", "-f", skew]
    prefix = f"payments:{name}:"
    tag = uuid.uuid4().hex[:6]
    q_resend, q_sweep = f"behind-resend-{tag}", f"behind-sweep-{tag}"
    with running_sandbox(duplicate_window=0) as sandbox, \
            producer_for(redis_url, settings_for(redis_url, sandbox, prefix)):
        svc = services_for(settings_for(redis_url, sandbox, prefix))
        env = {**worker_env(redis_url, sandbox, prefix), **FAKETIME_ENV}
        resending = Fleet(f"{name}-resend", env, logdir, size=1, concurrency=2, queues=q_resend, rng=rng,
                          prefix=prefix_cmd)
        leaving = Fleet(f"{name}-sweep", {**env, "OUTAGE_RETRIES": "0"}, logdir, size=1, concurrency=2,
                        queues=q_sweep, rng=rng, prefix=prefix_cmd)
        try:
            resending.start()
            leaving.start()
            sandbox.set_faults({"probabilities": {"late_commit": 1.0}, "late_commit_seconds": LATE_COMMIT_SECONDS,
                                "endpoints": ["bp10emu"]})
            (sale,) = producer_tasks("sale")
            jobs: dict[str, list[Job]] = {q_resend: [], q_sweep: []}
            for i in range(sales):
                queue = q_resend if i % 2 == 0 else q_sweep
                job = Job(new_key(f"rel-behind-{'resend' if queue == q_resend else 'sweep'}"), "sale",
                          make_amount(rng, approve=True), how="key", published_at=time.time())
                job.task_id = sale.apply_async(kwargs={"amount": job.amount, "card": dict(TEST_CARD),
                                                       "customer": dict(CUSTOMER), "idempotency_key": job.payment_id},
                                               queue=queue).id
                jobs[queue].append(job)
            _say(log, f"{name}: {sales} sales published to workers {skew} behind, every one committed late")
            # 2. the sweep's share: left UNKNOWN at the first parking, then the late commits land
            deadline = time.monotonic() + 60
            left = [j.payment_id for j in jobs[q_sweep]]
            while left and time.monotonic() < deadline:
                left = [pid for pid in left if (svc.store.get(pid) or {}).get("status") != "UNKNOWN"]
                time.sleep(0.2)
            if left:
                report.problem(f"never left UNKNOWN for the sweep: {left}")
            sandbox.wait_no_held(60)
            time.sleep(float(RELIABILITY_SETTINGS["GATEWAY_COMMIT_HORIZON"]) + 2)  # the horizon and next check passed
            swept = _sweep_under(prefix_cmd, {**env, "OUTAGE_RETRIES": "0"})
            report.details["sweep_behind"] = {k: v for k, v in swept.items() if isinstance(v, int)}
            for job in jobs[q_sweep]:
                rec = svc.store.get(job.payment_id) or {}
                if rec.get("status") != "APPROVED" or rec.get("reconciled") != "stq":
                    report.problem(f"{job.payment_id}: the sweep {skew} behind left it {rec.get('status')} "
                                   f"{'not_charged ' if rec.get('not_charged') else ''}({rec.get('message')!r})")
            # 1. the resending worker's share: settled by its own re-queued deliveries
            deadline = time.monotonic() + 60
            while pending_work(svc.store, jobs[q_resend]) and time.monotonic() < deadline:
                time.sleep(0.5)
            sandbox.set_faults({})
            every = jobs[q_resend] + jobs[q_sweep]
            settle(svc, every, timeout=settle_timeout, report=report, queues=(q_resend, q_sweep), log=log)
            sandbox.wait_no_held(60)
            verify(report, svc.store, sandbox.ledger(), every, allow_error=False)
            check_orders(report, sandbox.orders())
            report.details["late_commits"] = sandbox.stats()["late_commits"]["committed"]
            report.details["adopted_by_the_worker"] = sum(
                (svc.store.get(j.payment_id) or {}).get("reconciled") == "stq" for j in jobs[q_resend])
        finally:
            resending.stop()
            leaving.stop()
    return report


def fenced_restart(fleet: Fleet, own: OwnRedis, how: str, attempts=20) -> None:
    """Restart ``own`` while every worker of ``fleet`` is stopped at a safe point, then resume them."""
    client = own.client()
    with fleet.lock:
        for _ in range(attempts):
            stopped, ok = [], True
            for w in fleet.workers:
                fetching = fleet.stop_at_safe_point(w, client)
                if fetching is None or not all(client.client_unblock(int(c["id"])) for c in fetching):
                    ok = False
                    if fetching is not None:
                        stopped.append(w)
                    break
                stopped.append(w)
            if ok:
                down = time.monotonic()
                own.restart(how, down_seconds=1.5)
                down = time.monotonic() - down
            for w in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.proc.pid, signal.SIGCONT)
            if ok:
                fleet.events.append(f"{time.time():.3f} Redis restarted ({how}, down {down:.1f}s) with every worker "
                                    "at a safe point")
                return
            time.sleep(0.2)
    raise RuntimeError("no moment with every worker at a safe point")


def run_fetch_gap(name: str, redis_url: str, logdir: Path, *, settle_timeout=150.0, log=None) -> Report:
    """kombu's fetch gap, made deterministic: a worker's main process is stalled (SIGSTOP) while its BRPOP
    is pending, a sale is published (Redis pops it into the stalled worker's socket), then the worker
    dies (SIGKILL). The message is then in no queue and not in ``unacked``, and the payment has no record:
    kombu cannot bring it back, and a worker stalled by load, swap or a VM pause and then killed loses it
    the same way. A replacement worker starts and the sweep runs as usual (``settle``): the payment must
    still end charged exactly once, whatever mechanism brings it back.
    """
    report = Report(name)
    started = time.monotonic()
    prefix = f"payments:{name}:"
    with running_sandbox(duplicate_window=0) as sandbox, \
            producer_for(redis_url, settings_for(redis_url, sandbox, prefix)):
        svc = services_for(settings_for(redis_url, sandbox, prefix))
        fleet = Fleet(name, worker_env(redis_url, sandbox, prefix), logdir, size=1, concurrency=2).start()
        try:
            w = fleet.workers[0]
            time.sleep(1.0)
            if fleet.stop_at_safe_point(w, svc.redis, blocked_only=True) is None:  # stalled, its BRPOP pending
                raise RuntimeError("the worker never waited in BRPOP")
            job = publish({"operation": "sale", "amount": "3.00", "how": "key"})
            time.sleep(0.5)
            report.details["message_in_queue_or_unacked"] = (
                any(job.task_id in v for v in svc.redis.hvals("unacked"))
                or any(job.task_id in m for m in svc.redis.lrange("celery", 0, -1)))
            os.killpg(w.proc.pid, signal.SIGKILL)
            w.proc.wait(10)
            fleet.worker_kills += 1
            fleet.workers.remove(w)
            fleet.retired.append(w)
            report.kills = 1
            fleet.start()  # a replacement
            settle(svc, [job], timeout=settle_timeout, report=report, log=log)
            verify(report, svc.store, sandbox.ledger(), [job], allow_error=False)
        finally:
            fleet.stop()
    report.seconds = time.monotonic() - started
    return report


def run_redis_restart(name: str, own: OwnRedis, logdir: Path, *, payments: int, restarts=("shutdown", "term"),
                      rate: float = 15.0, seed: int = 1, settle_timeout: float = 240.0, fenced=False,
                      latency_ms=(20, 40), log=None) -> Report:
    """Scenario 3: our own redis-server (AOF, fsync always) is restarted mid-run; no job or outcome lost.

    Workers run under a supervisor (kombu 5.7.0 makes a worker exit when the broker connection drops while it
    holds a message: see :func:`run_workers_through_redis_restart`). ``fenced``: Redis goes down while every
    worker is stopped at a safe point (see :meth:`Fleet.stop_at_safe_point`) and resumes right after, so no
    message is in kombu's fetch gap (popped, not yet recorded as unacked) at that moment: a message in the gap
    is lost (see :func:`run_fetch_gap`); unfenced, a restart can land in it."""
    rng = random.Random(seed)
    report = Report(name)
    started = time.monotonic()
    prefix = f"payments:{name}:"
    with running_sandbox(duplicate_window=0) as sandbox, producer_for(own.url, settings_for(own.url, sandbox, prefix)):
        sandbox.set_faults({"latency_ms": latency_ms[0], "jitter_ms": latency_ms[1]})
        svc = services_for(settings_for(own.url, sandbox, prefix))
        fleet = Fleet(name, worker_env(own.url, sandbox, prefix), logdir, size=2, concurrency=3,
                      rng=rng).start().supervise()
        try:
            specs = sale_specs(payments, rng, hows=("key", "task_id"))
            producer = Producer(specs, rate)
            producer.start()
            span = payments / rate
            for how in restarts:
                time.sleep(span / (len(restarts) + 1))
                if fenced:
                    fenced_restart(fleet, own, how)
                else:
                    own.restart(how, down_seconds=1.5)
                report.restarts += 1
                _say(log, f"{name}: Redis restarted ({how}); {len(producer.jobs)} published so far")
            producer.join()
            if producer.error:
                report.problem(f"producer failed: {producer.error!r}")
            settle(svc, producer.jobs, timeout=settle_timeout, report=report, log=log)
            verify(report, svc.store, sandbox.ledger(), producer.jobs, allow_error=False)
            # The result backend (what AsyncResult.get() reads) kept every outcome too, not only our store.
            backend = own.client()
            for job in producer.jobs:
                meta = backend.get(f"celery-task-meta-{job.task_id}")
                result = json.loads(meta).get("result") if meta else None
                if not isinstance(result, dict) or result.get("payment_id") != job.payment_id:
                    report.problem(f"{job.payment_id}: the result backend has no outcome for task {job.task_id}: "
                                   f"{(meta[:200] if meta else None)!r}")
            report.details["publish_retries"] = len(producer.publish_retries)
            report.details["worker_crashes"] = fleet.crashes
            report.details["events"] = fleet.events
            report.details["unacked_restored_by_workers"] = sum(
                int(m) for f in fleet.logfiles if f.exists()
                for m in re.findall(r"Restoring (\d+) unacknowledged", f.read_text("utf-8", "replace")))
        finally:
            fleet.stop()
        scan_for_cards(report, clients=[svc.redis], files=fleet.logfiles + own.files())
    report.seconds = time.monotonic() - started
    return report


def run_workers_through_redis_restart(name: str, own: OwnRedis, logdir: Path, *, log=None) -> Report:
    """Does a worker survive a Redis restart while it runs a payment? (kombu 5.7.0: no. On a lost broker
    connection with a message in hand and a BRPOP in progress, ``Connection.collect()`` drops the transport
    and the following ``close()`` restores unacked messages through it: AttributeError ``'NoneType' object
    has no attribute 'hostname'``, "Unrecoverable error", the worker exits.) Deterministic: the sandbox
    answers in 4 s, so the worker holds one payment while its second slot waits in BRPOP."""
    report = Report(name)
    started = time.monotonic()
    prefix = f"payments:{name}:"
    with running_sandbox(duplicate_window=0) as sandbox, producer_for(own.url, settings_for(own.url, sandbox, prefix)):
        sandbox.set_faults({"latency_ms": 4000})
        svc = services_for(settings_for(own.url, sandbox, prefix))
        fleet = Fleet(name, worker_env(own.url, sandbox, prefix), logdir, size=1, concurrency=2).start()
        try:
            job = publish({"operation": "sale", "amount": "5.00", "how": "key"})
            deadline = time.monotonic() + 10
            while svc.store.get(job.payment_id) is None and time.monotonic() < deadline:
                time.sleep(0.1)
            own.restart("shutdown", down_seconds=1.0)
            report.restarts = 1
            time.sleep(5)
            alive = [w for w in fleet.workers if w.proc.poll() is None]
            report.details["workers_alive_after_restart"] = len(alive)
            if not alive:
                report.problem("the worker exited after the Redis restart: "
                               + next((line for line in _tail(fleet.workers[0].logfile, 10**7).splitlines()
                                       if "Unrecoverable error" in line), "(see its log)"))
            report.payments = 1
        finally:
            fleet.stop()
    report.seconds = time.monotonic() - started
    return report


def run_duplicate_delivery(name: str, redis_url: str, logdir: Path, *, pairs: int = 20, seed: int = 2,
                           log=None) -> Report:
    """Scenario 4: the same message consumed by two workers at once gives one charge.

    (a) raw duplicates: messages staged in a list no worker reads, each pushed twice, moved into the
    consumed queue in one RENAME while two workers wait on it; (b) the same task id published twice.
    The sandbox answers in 300 ms so both deliveries are in flight together.
    """
    rng = random.Random(seed)
    report = Report(name)
    started = time.monotonic()
    prefix = f"payments:{name}:"
    queue = f"dupq-{uuid.uuid4().hex[:6]}"
    with running_sandbox(duplicate_window=0) as sandbox, \
            producer_for(redis_url, settings_for(redis_url, sandbox, prefix)):
        (sale,) = producer_tasks("sale")
        sandbox.set_faults({"latency_ms": 300})
        svc = services_for(settings_for(redis_url, sandbox, prefix))
        client = svc.redis
        jobs = []
        for _i in range(pairs):  # (a) published while nobody consumes the queue
            amount = make_amount(rng)
            tid = new_key("rel-dup-raw")
            sale.apply_async(kwargs={"amount": amount, "card": TEST_CARD, "customer": CUSTOMER}, task_id=tid,
                             queue=queue)
            jobs.append(Job(tid, "sale", amount, how="raw-duplicate"))
        raw = client.lrange(queue, 0, -1)
        staging = queue + "-staging"
        pipe = client.pipeline()
        pipe.delete(queue)
        for body in raw:
            pipe.rpush(staging, body, body)
        pipe.execute()
        fleet = Fleet(name, worker_env(redis_url, sandbox, prefix), logdir, size=2, concurrency=3, rng=rng,
                      queues=queue).start()
        try:
            client.rename(staging, queue)
            for _i in range(pairs):  # (b) the same task id twice, the workers consuming
                amount = make_amount(rng)
                tid = new_key("rel-dup-id")
                for _ in range(2):
                    sale.apply_async(kwargs={"amount": amount, "card": TEST_CARD, "customer": CUSTOMER},
                                     task_id=tid, queue=queue)
                jobs.append(Job(tid, "sale", amount, how="same-task-id"))
            settle(svc, jobs, timeout=120, report=report, queues=(queue,), log=log)
            ledger = sandbox.ledger()
            verify(report, svc.store, ledger, jobs, allow_error=False)
            sends = sandbox.stats()["requests"].get("bp10emu", 0)
            report.details["gateway_sends"] = sends
            if sends != len(jobs):
                report.problem(f"{sends} gateway sends for {len(jobs)} operations delivered twice each")
        finally:
            fleet.stop()
            client.delete(queue, staging)
        requeued = sum(f.read_text("utf-8", "replace").count("] retry: Retry in") for f in fleet.logfiles
                       if f.exists())
        report.details["second_deliveries_requeued"] = requeued
        scan_for_cards(report, clients=[client], files=fleet.logfiles)
    report.seconds = time.monotonic() - started
    return report


def run_concurrent_sweeps(name: str, redis_url: str, logdir: Path, *, auths: int = 30, seed: int = 3,
                          log=None) -> Report:
    """Scenario 5: sweeps running at once void each stale authorization exactly once.

    Approved (and declined) AUTHs go through a worker; then, at the same moment: two sweeps in threads
    that take the sweep lock, two that ignore it (a sweep that outlived its lock), two ``payments sweep``
    processes and a beat that schedules ``payments.sweep`` on the worker every second, all with
    STALE_AUTH_AGE = 1 s. The sandbox answers in 100 ms so the sweeps overlap.
    """
    from worker.guard.shared import breaker_state
    from worker.payments.sweep import run_sweep

    rng = random.Random(seed)
    report = Report(name)
    started = time.monotonic()
    prefix = f"payments:{name}:"
    beat = None
    with running_sandbox(duplicate_window=0) as sandbox, \
            producer_for(redis_url, settings_for(redis_url, sandbox, prefix)):
        env = worker_env(redis_url, sandbox, prefix, STALE_AUTH_AGE="1s", SWEEP_INTERVAL="1")
        svc = services_for(settings_for(redis_url, sandbox, prefix))
        fleet = Fleet(name, env, logdir, size=1, pool="threads", concurrency=8, rng=rng).start()
        threads, procs, errors, results = [], [], [], []
        try:
            specs = [{"operation": "auth", "amount": make_amount(rng, approve=i % 4 != 3), "how": "key",
                      "stale_void": True} for i in range(auths)]
            jobs = [publish(s) for s in specs]
            settle(svc, [dataclasses.replace(j, stale_void=False) for j in jobs], timeout=60, report=report)
            time.sleep(1.2)  # older than STALE_AUTH_AGE
            # First a sweep while every gateway request fails: it must finish (deferring the voids), not raise.
            sandbox.set_faults({"probabilities": {"http_502": 1.0}, "endpoints": ["bp10emu", "stq"]})
            try:
                report.details["sweep_while_gateway_fails"] = run_sweep(
                    services_for(settings_for(redis_url, sandbox, prefix, stale_auth_age=1.0)), publisher=_publisher())
            except Exception as exc:
                report.problem(f"a sweep while the gateway fails raised {type(exc).__name__}: {exc}")
            if any(e["trans_type"] == "VOID" for e in sandbox.ledger()):
                report.problem("a void went through while every gateway request failed")
            sandbox.set_faults({"latency_ms": 100})
            # That run of failures opened the shared breaker (on by default): the concurrent sweeps below are about
            # each other, not about a gateway still held back, so they start once its cooldown is over.
            breaker = breaker_state(svc.redis, prefix=prefix, merchant="default")
            report.details["breaker_after_failing_sweep"] = breaker.state
            time.sleep(breaker.open_for + 0.5 if breaker.state == "open" else 0)
            open_before = len(svc.store.open_auths(1.0))
            report.details["open_auths_before"] = open_before

            def sweeper(ignore_lock: bool):
                s = services_for(settings_for(redis_url, sandbox, prefix, stale_auth_age=1.0))
                if ignore_lock:
                    s.store.locks.acquire = lambda name, ttl_seconds: "ignored"
                try:
                    results.append(run_sweep(s, publisher=_publisher()))
                except Exception as exc:  # a sweep must never fail on what another sweep is doing
                    errors.append(f"sweep raised {type(exc).__name__}: {exc}")

            barrier_at = time.monotonic()
            beat_log = Path(logdir) / f"beat-{name}.log"
            beat = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "worker", "beat", "--loglevel", "INFO", "--logfile",
                 str(beat_log), "--schedule", str(Path(logdir) / f"beat-{name}-schedule")],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
            for _ in range(2):
                procs.append(subprocess.Popen([sys.executable, "-m", "worker.cli", "sweep"], cwd=ROOT, env=env,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            for ignore in (False, False, True, True):
                t = threading.Thread(target=sweeper, args=(ignore,))
                t.start()
                threads.append(t)
            for t in threads:
                t.join(120)
            for p in procs:
                out, err = p.communicate(timeout=120)
                if p.returncode != 0:
                    errors.append(f"payments sweep exited {p.returncode}: {err[-500:]}")
                else:
                    results.append(json.loads(out.strip().splitlines()[-1]))
            time.sleep(3)  # let beat's sweeps run too
            stop(beat)
            report.details["sweeps_that_ran"] = sum(1 for r in results if r.get("ran"))
            report.details["sweep_results"] = results
            report.details["sweep_seconds"] = round(time.monotonic() - barrier_at, 1)
            for e in errors:
                report.problem(e)
            settle(svc, jobs, timeout=60, report=report)
            verify(report, svc.store, sandbox.ledger(), jobs, allow_error=False)
            voids_sent = sandbox.stats()["requests"].get("bp10emu", 0) - auths
            report.details["void_requests"] = voids_sent
        finally:
            if beat is not None:
                stop(beat)
            fleet.stop()
        files = fleet.logfiles + ([beat_log] if beat is not None else [])
        scan_for_cards(report, clients=[svc.redis], files=files)
    report.seconds = time.monotonic() - started
    return report


# ------------------------------------------------------------------------------------------ table
COLUMNS = ("scenario", "payments", "faults injected", "kills", "Redis restarts", "duplicates charged",
           "store ≠ ledger", "payments lost", "not final", "card-data hits", "seconds")


def table(reports: list[Report]) -> str:
    rows = [r.row() for r in reports]
    total = {c: sum(r[c] for r in rows) for c in COLUMNS[1:]}
    total["scenario"] = "total"
    rows.append(total)
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in COLUMNS}
    line = lambda r: "| " + " | ".join(str(r[c]).ljust(widths[c]) if c == "scenario" else  # noqa: E731
                                       str(r[c]).rjust(widths[c]) for c in COLUMNS) + " |"
    head = line({c: c for c in COLUMNS})
    sep = "|" + "|".join(("-" * (widths[c] + 1)) + (":" if c != "scenario" else "-") for c in COLUMNS) + "|"
    return "\n".join([head, sep, *(line(r) for r in rows)])


# A holder frozen inside the client's retry loop (issue 24, item 1). The loop keeps retrying "not sent" for up to
# 30 s (the sandbox refuses connections); the lease (3 s) lapses while the worker is stopped. Submit expiry 1 minute,
# no skew margin (one host): a takeover waits 2 minutes (+ the 3 s horizon) after the frozen attempt's stamp before it
# may send. Visibility > hard limit (3 x 31.5 + 20 = 114.5 s); enough outage re-queues (each <= visibility / 4) for
# the taker to outlast the fence.
STALL_SETTINGS = {"GATEWAY_RETRY_ATTEMPTS": "100", "GATEWAY_RETRY_SECONDS": "30", "LEASE_SECONDS": "3",
                  "BROKER_VISIBILITY_TIMEOUT": "150", "RECONCILE_AFTER": "200", "OUTAGE_RETRIES": "12",
                  "OUTAGE_BACKOFF_MAX": "30", "GATEWAY_SUBMIT_EXPIRY": "1m", "GATEWAY_CLOCK_SKEW_MARGIN": "0"}


def _signal_tree(pid: int, sig: int) -> None:
    top = psutil.Process(pid)
    for proc in [top, *top.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def run_stalled_holder(name: str, redis_url: str, logdir: Path, *, payments: int = 3, stop_for: float = 20.0,
                       seed: int = 24, settle_timeout: float = 400.0, log=None) -> Report:
    """Workers SIGSTOPped inside the gateway client's retry loop for longer than their lease; meanwhile each of
    their sales is delivered again, to another worker, which takes the operation over; then SIGCONT.

    The sandbox refuses connections (a 6 s outage), so the holder's attempts are "not sent" and its client retries
    them. Once every sale is in the loop, the holder's whole worker is stopped for ``stop_for`` seconds; the outage
    ends meanwhile, and once the 3 s lease has lapsed the same sales (same idempotency keys) are published to the
    second worker's queue; then the stopped worker is resumed. Before the fence, the taker charged each sale 3 s
    (the commit horizon) after the lease ran out, and the resumed holder's retry charged it again (the duplicate rule
    is off). Checked: exactly one charge per sale in the ledger (an approved one; none for
    a decline), the record final and equal to the ledger, and the stalled worker's deliveries all ended (no task
    left running, none recorded anything else)."""
    rng = random.Random(seed)
    report = Report(name)
    started = time.monotonic()
    prefix = f"payments:{name}:"
    tag = uuid.uuid4().hex[:6]
    q_stalled, q_taker = f"stall-held-{tag}", f"stall-taker-{tag}"
    with running_sandbox(duplicate_window=0) as sandbox, \
            producer_for(redis_url, settings_for(redis_url, sandbox, prefix)):
        svc = services_for(settings_for(redis_url, sandbox, prefix, lease_seconds=3.0, visibility_timeout=150.0,
                                        retry_attempts=100, retry_seconds=30.0, submit_expiry=60.0,
                                        clock_skew_margin=0.0))
        env = worker_env(redis_url, sandbox, prefix, **STALL_SETTINGS)
        stalled = Fleet(f"{name}-held", env, logdir, size=1, pool="threads", concurrency=payments, queues=q_stalled,
                        rng=rng)
        taker = Fleet(f"{name}-taker", env, logdir, size=1, pool="threads", concurrency=payments, queues=q_taker,
                      rng=rng)
        jobs = [Job(new_key("rel-stall"), "sale", make_amount(rng, approve=i % 3 != 2), published_at=time.time())
                for i in range(payments)]
        deliveries: list[tuple[str, str, str]] = []
        stopped_pid = None
        try:
            stalled.start()
            taker.start()
            sale = producer_tasks("sale")[0]

            def deliver(queue: str, who: str, job: Job) -> None:
                kwargs = {"amount": job.amount, "card": dict(TEST_CARD), "customer": dict(CUSTOMER),
                          "idempotency_key": job.payment_id}
                deliveries.append((job.payment_id, who, sale.apply_async(kwargs=kwargs, queue=queue).id))

            sandbox.outage(6)  # the holder's first attempts are refused: its client retries them
            for job in jobs:
                deliver(q_stalled, "stalled", job)
            deadline = time.monotonic() + 5
            rows: list = []
            while time.monotonic() < deadline:  # every sale in flight (journalled), retried at least once below
                rows = [svc.redis.hmget(svc.store.record_key(j.payment_id), "status", "in_flight") for j in jobs]
                if all(r[0] == "PENDING" and r[1] == "1" for r in rows):
                    break
                time.sleep(0.05)
            time.sleep(1.0)  # a retry or two: the loop is running
            stopped_at = time.monotonic()
            stopped_pid = stalled.workers[0].proc.pid
            _signal_tree(stopped_pid, signal.SIGSTOP)
            rows = [svc.redis.hmget(svc.store.record_key(j.payment_id), "status", "in_flight") for j in jobs]
            if not all(r[0] == "PENDING" and r[1] == "1" for r in rows):
                report.problem(f"the holder was not inside its retry loop with every sale when stopped: {rows}")
            report.details["stopped_for_s"] = stop_for
            _say(log, f"{name}: holder stopped inside its retry loop")
            sandbox.wait_ready(30)  # the outage ends while the holder is stopped: a retry it sent would be processed
            time.sleep(max(0.0, stopped_at + 4.0 - time.monotonic()))  # past the 3 s lease
            for job in jobs:
                deliver(q_taker, "taker", job)
            _say(log, f"{name}: sales delivered again, to the taker")
            time.sleep(max(0.0, stopped_at + stop_for - time.monotonic()))
            _signal_tree(stopped_pid, signal.SIGCONT)
            stopped_pid = None
            _say(log, f"{name}: holder resumed")
            settle(svc, jobs, timeout=settle_timeout, report=report, queues=(q_stalled, q_taker), log=log)
            verify(report, svc.store, sandbox.ledger(), jobs, allow_error=False)
            check_orders(report, sandbox.orders())
            results: Counter = Counter()
            for pid, who, task_id in deliveries:
                raw = svc.redis.get(f"celery-task-meta-{task_id}")
                meta: dict = json.loads(raw) if raw else {}
                outcome: dict = meta["result"] if isinstance(meta.get("result"), dict) else {}
                results[f"{who}:{meta.get('status')}:{outcome.get('status')}"] += 1
                if meta.get("status") != "SUCCESS":
                    report.problem(f"{pid}: the {who} worker's task {task_id} did not end: {meta.get('status')}")
            report.details["task_results"] = dict(results)
            held_log = "\n".join(f.read_text("utf-8", "replace") for f in stalled.logfiles if f.exists())
            report.details["holder_fence_lost"] = held_log.count("FenceLost")
            report.details["holder_too_old"] = held_log.count("Expired")
            report.payments = len(jobs)
        finally:
            if stopped_pid is not None:
                with contextlib.suppress(psutil.Error):
                    _signal_tree(stopped_pid, signal.SIGCONT)
            stalled.stop()
            taker.stop()
        scan_for_cards(report, clients=[svc.redis], files=stalled.logfiles + taker.logfiles)
    report.seconds = time.monotonic() - started
    return report

