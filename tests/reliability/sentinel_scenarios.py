"""Failover scenarios under Redis Sentinel (issue 18): payments while the primary is killed or cut off.

A Sentinel group of our own on loopback (tests/support/sentinel.py: three ``redis-server`` and three
``redis-server --sentinel``, min-replicas-to-write 1), real ``celery worker`` processes under a supervisor, producers
publishing through the sentinels, and the sandbox with gateway faults on. The mix: sales (a share chained with a
void), and auths, each approved one captured by a second producer once its outcome is known. Meanwhile the primary
is SIGKILLed (``mode="kill"``: a replica is promoted, the old primary restarts as a replica) or SIGSTOPped through
a whole failover and resumed (``mode="pause"``: the partition), ``failovers`` times. Then the gateway heals, the
sweep runs until the broker is quiet and everything is final, and every job is checked against the sandbox's
ledger: none charged twice (per operation and per ORDER_ID), none lost, none non-final, the store equal to the
ledger, no card data in the Redis nodes or the logs.

Every worker runs with REDIS_MIN_REPLICAS_ACK=1 (the Sentinel default): claims, journal entries and outbox entries
are acknowledged by a replica before anything depends on them.
"""
from __future__ import annotations

import dataclasses
import random
import re
import threading
import time
from pathlib import Path

from tests.reliability.scenarios import (
    FAULT_MIX,
    SLOW_SECONDS,
    Fleet,
    Job,
    Producer,
    Report,
    _say,
    check_orders,
    faults_injected,
    producer_for,
    producer_tasks,
    sale_specs,
    scan_for_cards,
    services_for,
    settings_for,
    settle,
    verify,
    worker_env,
)
from tests.support.sandbox import running_sandbox
from tests.support.sentinel import SentinelGroup

# A promotion takes ~2-4 s (down-after 1 s, election); the client's retries (store: ~35 s; publish: ~8.5 s) cover it.
# A write a worker made after an attempt (its outcome, or its UNKNOWN) can be lost in a failover (WAIT guards only
# claims, journal entries and fences); the record then shows that attempt in flight under a holder that is alive, and
# nothing settles it as not charged before the attempt's stamp has expired at the gateway plus the commit horizon
# (docs/safety.md, point 5a): the expiry and skew margin are kept short here (the window is 60 + 60 + 0 s) and
# settle's patience counts that window.
SENTINEL_WORKER_SETTINGS = {"REDIS_MIN_REPLICAS_ACK": "1", "REDIS_REPLICA_ACK_TIMEOUT": "1",
                            "GATEWAY_SUBMIT_EXPIRY": "1m", "GATEWAY_CLOCK_SKEW_MARGIN": "0"}
FENCE_WINDOW = 60 + 60 + 0  # expiry + BluePay's minute + skew margin (PaymentFlow._fence_for)


class AppProducer(Producer):
    """A Producer thread publishing through ``app`` (Celery's current app is per thread)."""

    def __init__(self, app, specs: list[dict], rate: float):
        super().__init__(specs, rate)
        self.app = app

    def run(self) -> None:
        from worker.broker.app import current

        with current(self.app):
            super().run()


def mixed_specs(n: int, rng: random.Random) -> list[dict]:
    """Sales (30 % of them chained with a void) and auths (a quarter of the jobs), by idempotency key or task id."""
    specs = sale_specs(n, rng, hows=("key", "task_id"))
    for spec in specs:
        if not spec["chained"] and rng.random() < 0.35:
            spec["operation"] = "auth"
    return specs


class Capturer(threading.Thread):
    """Captures every approved auth once its outcome is in the store (as a shop does when it ships), publishing
    with the idempotency key ``<auth id>:cap`` and retrying while the broker is away."""

    def __init__(self, app, store, producer: Producer, stop: threading.Event):
        super().__init__(daemon=True, name="capturer")
        self.app, self.store, self.producer, self.stop_event = app, store, producer, stop
        self.jobs: list[Job] = []
        self.error: BaseException | None = None
        self.retries: list = []

    def run(self) -> None:
        from worker.broker.app import current

        with current(self.app):
            self._run()

    def _run(self) -> None:
        (capture,) = producer_tasks("capture")  # this thread's current app's (set above)

        done: set[str] = set()
        try:
            while True:
                finished = not self.producer.is_alive()
                auths = [j for j in list(self.producer.jobs) if j.operation == "auth" and j.payment_id not in done]
                for job in auths:
                    try:
                        rec = self.store.get(job.payment_id)
                    except Exception:  # Redis failing over: look again
                        break
                    if rec is None or rec.get("status") in ("PENDING", "RETRYING", "UNKNOWN"):
                        continue
                    done.add(job.payment_id)
                    if rec.get("status") != "APPROVED" or not rec.get("trans_id"):
                        continue
                    key = f"{job.payment_id}:cap"
                    deadline = time.monotonic() + 60
                    while True:
                        try:
                            tid = capture.delay(rec["trans_id"], idempotency_key=key).id
                            break
                        except Exception:
                            if time.monotonic() > deadline:
                                raise
                            self.retries.append(key)
                            time.sleep(0.3)
                    self.jobs.append(Job(key, "capture", job.amount, task_id=tid, published_at=time.time()))
                if finished and not auths:
                    return
                if self.stop_event.wait(0.5) and finished:
                    return
        except BaseException as exc:
            self.error = exc


def run_sentinel_failovers(name: str, logdir: Path, *, payments: int, failovers: int = 3, mode: str = "kill",
                           faults: bool = True, rate: float | None = None, seed: int = 18,
                           settle_timeout: float = 300.0, replicas_ack: int = 1, log=None) -> Report:
    """See the module's docstring. ``rate``: payments per second (None: spread over the failovers, ~10 s each).
    ``replicas_ack``: REDIS_MIN_REPLICAS_ACK of the workers and the producer (0: no WAIT, to measure its cost)."""
    rng = random.Random(seed)
    report = Report(f"{name} ({mode})")
    started = time.monotonic()
    prefix = f"payments:{name}:"
    group = SentinelGroup(Path(logdir) / f"sentinel-{name}").start()
    try:
        url = f"redis://127.0.0.1:{group.nodes[0].port}/0"  # names the database; the sentinels find the master
        with running_sandbox() as sandbox:
            base = dataclasses.replace(settings_for(url, sandbox, prefix), **group.settings_overrides(),
                                       replica_ack_timeout=1.0, min_replicas_ack_setting=replicas_ack,
                                       submit_expiry=60.0, clock_skew_margin=0.0)
            svc = services_for(base)
            fault_config: dict = {"latency_ms": 50, "jitter_ms": 100, "slow_seconds": SLOW_SECONDS}
            if faults:
                fault_config.update(probabilities=FAULT_MIX, endpoints=["bp10emu", "stq"])
            sandbox.set_faults(fault_config)
            env = worker_env(url, sandbox, prefix, **group.env(),
                             **{**SENTINEL_WORKER_SETTINGS, "REDIS_MIN_REPLICAS_ACK": str(replicas_ack)})
            fleet = Fleet(name, env, logdir, size=2, concurrency=3, rng=rng).start().supervise()
            try:
                with producer_for(url, base) as app:
                    producer = AppProducer(app, mixed_specs(payments, rng),
                                           rate or max(2.0, payments / (10.0 * failovers)))
                    stop = threading.Event()
                    capturer = Capturer(app, svc.store, producer, stop)
                    producer.start()
                    processing_started = time.monotonic()
                    capturer.start()
                    span = payments / producer.rate
                    for i in range(failovers):
                        time.sleep(max(2.0, span / (failovers + 1) - (5 if i else 0)))
                        old, new = (group.kill_primary() if mode == "kill" else group.pause_primary())
                        _say(log, f"{name}: failover {i + 1} ({mode}) {old} -> {new}; "
                                  f"{len(producer.jobs)} published so far")
                    producer.join()
                    stop.set()
                    capturer.join(120)
                    for who in (producer, capturer):
                        if who.error:
                            report.problem(f"{who.name} failed: {who.error!r}")
                    if faults:
                        report.faults = faults_injected(sandbox)
                        sandbox.set_faults({})  # the gateway heals; what was unknown is reconciled by the sweep
                    jobs = producer.jobs + capturer.jobs
                    settle(svc, jobs, timeout=settle_timeout, report=report, log=log,
                           patience=100 + FENCE_WINDOW + base.commit_horizon)
                    report.details["processing_seconds"] = round(time.monotonic() - processing_started, 2)
                    sandbox.wait_no_held(60)
                    verify(report, svc.store, sandbox.ledger(), jobs, allow_error=faults)
                    check_orders(report, sandbox.orders())
                    report.restarts = group.failovers
                    report.details.update(
                        mode=mode, failovers=group.failovers, captures=len(capturer.jobs),
                        auths=sum(1 for j in producer.jobs if j.operation == "auth"),
                        chained=sum(1 for j in producer.jobs if j.chained),
                        publish_retries=len(producer.publish_retries) + len(capturer.retries),
                        worker_exits=fleet.crashes, group_events=group.events, fleet_events=fleet.events,
                        unacked_restored=_count(fleet.logfiles, r"Restoring (\d+) unacknowledged"),
                        not_replicated=_count(fleet.logfiles, r"ReplicasBehind", count_only=True),
                        faults_by_kind=sandbox.stats()["faults_injected"] if faults else {})
            finally:
                fleet.stop()
            scan_for_cards(report, clients=[n.client() for n in group.nodes],
                           files=fleet.logfiles + group.logfiles())
    finally:
        group.stop()
    report.seconds = time.monotonic() - started
    return report


def _count(files: list[Path], pattern: str, *, count_only: bool = False) -> int:
    total = 0
    for f in files:
        if not f.exists():
            continue
        for m in re.findall(pattern, f.read_text("utf-8", "replace")):
            total += 1 if count_only else int(m)
    return total



def run_beat_through_failovers(name: str, logdir: Path, *, failovers: int = 2, log=None) -> Report:
    """``celery beat`` (the sweep every second) publishing through the sentinels while the primary is SIGKILLed:
    it must still be running and publishing sweeps after every failover, without a restart. Nothing consumes the
    queue here, so its length counts what beat published (a message the old primary took just before dying may
    be lost with it: beat publishes the next one a second later)."""
    import os
    import subprocess
    import sys

    from tests.support.env import TEST_CARD_KEY
    from worker.ops.processes import stop as stop_process

    report = Report(f"{name} (beat)")
    started = time.monotonic()
    group = SentinelGroup(Path(logdir) / f"sentinel-{name}").start()
    logfile = Path(logdir) / f"beat-{name}.log"
    env = {**os.environ, **group.env(), "SWEEP_INTERVAL": "1", "PAYMENTS_CARD_KEY": TEST_CARD_KEY,
           "BLUEPAY_MODE": "TEST"}
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker", "beat", "--loglevel", "INFO",
                             "--schedule", str(Path(logdir) / f"beat-{name}.schedule"), "--logfile", str(logfile)],
                            env=env, cwd=Path(__file__).resolve().parents[2], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)

    def queued() -> int:
        return int(group.primary().client().llen("celery"))

    def grows(within: float) -> bool:
        deadline = time.monotonic() + within
        first = None
        while time.monotonic() < deadline:
            try:
                n = queued()
            except Exception:  # between a kill and the promotion
                time.sleep(0.2)
                continue
            first = n if first is None else first
            if n >= first + 2:
                return True
            time.sleep(0.2)
        return False

    try:
        if not grows(30):
            report.problem(f"beat published no sweep before any failover: {_tail_text(logfile)}")
        for i in range(failovers):
            old, new = group.kill_primary()
            report.restarts += 1
            _say(log, f"{name}: failover {i + 1}: {old} -> {new}")
            if proc.poll() is not None:
                report.problem(f"beat exited ({proc.returncode}) after failover {i + 1}: {_tail_text(logfile)}")
                break
            if not grows(20):
                report.problem(f"beat published no sweep within 20 s of failover {i + 1}: {_tail_text(logfile)}")
        report.details.update(beat_alive=proc.poll() is None, events=group.events,
                              published_errors=_count([logfile], r"ERROR", count_only=True))
    finally:
        stop_process(proc)
        group.stop()
    report.seconds = time.monotonic() - started
    return report


def run_worker_through_failover(name: str, logdir: Path, *, log=None) -> Report:
    """Does a worker survive a failover while it runs a payment (no supervisor)? The sandbox answers in 4 s, so the
    worker holds one payment while its other slot waits in BRPOP when the primary is SIGKILLed."""
    report = Report(f"{name} (one worker)")
    started = time.monotonic()
    prefix = f"payments:{name}:"
    group = SentinelGroup(Path(logdir) / f"sentinel-{name}").start()
    try:
        url = f"redis://127.0.0.1:{group.nodes[0].port}/0"
        with running_sandbox() as sandbox:
            sandbox.set_faults({"latency_ms": 4000})
            base = dataclasses.replace(settings_for(url, sandbox, prefix), **group.settings_overrides())
            svc = services_for(base)
            fleet = Fleet(name, worker_env(url, sandbox, prefix, **group.env(), **SENTINEL_WORKER_SETTINGS), logdir,
                          size=1, concurrency=2).start()
            try:
                with producer_for(url, base) as app:
                    app.tasks["payments.sale"].delay(amount="5.00", card={"number": "4111111111111111",
                                                                           "expire": "1230", "cvv2": "123"},
                                                     idempotency_key=f"{name}-one")
                deadline = time.monotonic() + 15
                while svc.store.get(f"{name}-one") is None and time.monotonic() < deadline:
                    time.sleep(0.1)
                group.kill_primary()
                report.restarts = 1
                time.sleep(8)
                alive = [w for w in fleet.workers if w.proc.poll() is None]
                report.details["workers_alive_after_failover"] = len(alive)
                if not alive:
                    report.problem("the worker exited after the failover: " + next(
                        (line for line in _tail_text(fleet.workers[0].logfile, 10**7).splitlines()
                         if "Unrecoverable error" in line), "(see its log)"))
                report.payments = 1
            finally:
                fleet.stop()
    finally:
        group.stop()
    report.seconds = time.monotonic() - started
    return report


def _tail_text(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text("utf-8", "replace")[-n:]
    except OSError:
        return "(no log)"


def run_flower_through_failover(name: str, logdir: Path, *, log=None) -> Report:
    """Flower (read-only, basic auth) through the sentinels: it shows a payment's task before a primary kill and
    another one published after it, without a restart."""
    import requests

    from tests.support.flower import AUTH, flower_env, start_flower, stop_process, wait_until
    from tests.support.ports import free_port

    report = Report(f"{name} (flower)")
    started = time.monotonic()
    prefix = f"payments:{name}:"
    group = SentinelGroup(Path(logdir) / f"sentinel-{name}").start()
    try:
        url = f"redis://127.0.0.1:{group.nodes[0].port}/0"
        with running_sandbox() as sandbox:
            base = dataclasses.replace(settings_for(url, sandbox, prefix), **group.settings_overrides())
            fleet = Fleet(name, worker_env(url, sandbox, prefix, **group.env(), **SENTINEL_WORKER_SETTINGS), logdir,
                          size=1, concurrency=2).start().supervise()
            port = free_port()
            flower_log = Path(logdir) / f"flower-{name}.log"
            sentinel_env = {k: v for k, v in group.env().items() if k != "REDIS_URL"}
            proc = start_flower(port, flower_env(url, FLOWER_BASIC_AUTH=":".join(AUTH), **sentinel_env), flower_log)
            base_url = f"http://127.0.0.1:{port}"

            def shows(task_id: str) -> bool:
                try:
                    r = requests.get(f"{base_url}/api/task/info/{task_id}", auth=AUTH, timeout=5)
                except requests.RequestException:
                    return False
                return r.status_code == 200 and r.json().get("state") == "SUCCESS"

            def hears_a_worker() -> bool:  # its event receiver is up: a worker's heartbeat reached it
                try:
                    r = requests.get(f"{base_url}/api/workers", params={"status": "1"}, auth=AUTH, timeout=5)
                except requests.RequestException:
                    return False
                return r.status_code == 200 and any(r.json().values())

            try:
                wait_until(lambda: proc.poll() is None and _answers(base_url), 30, "flower to answer")
                # Flower answers before its event receiver listens, and task events are pub/sub: a task that ran in
                # between is never shown (as the e2e Flower fixture, wait until it has heard a worker first).
                wait_until(hears_a_worker, 60, "flower to hear a worker's events", interval=0.5)
                with producer_for(url, base) as app:
                    sale = app.tasks["payments.sale"]
                    card = {"number": "4111111111111111", "expire": "1230", "cvv2": "123"}
                    task_id = sale.delay(amount="3.00", card=dict(card), idempotency_key=f"{name}-before").id
                    try:
                        wait_until(lambda: shows(task_id), 60, "flower to show the task published before")
                    except AssertionError as exc:
                        report.problem(f"{exc}: {_tail_text(flower_log)}")
                    report.payments += 1
                    group.kill_primary()
                    report.restarts = 1
                    # Task events are pub/sub: those sent while Flower was reconnecting are gone for it. A payment a
                    # few seconds, until Flower shows one.
                    deadline, shown = time.monotonic() + 60, False
                    while not shown and time.monotonic() < deadline:
                        task_id = sale.delay(amount="3.00", card=dict(card),
                                             idempotency_key=f"{name}-after-{report.payments}").id
                        report.payments += 1
                        try:
                            shown = bool(wait_until(lambda t=task_id: shows(t), 5, "flower"))
                        except AssertionError:
                            pass
                    if not shown:
                        report.problem(f"flower showed no task published after the failover: {_tail_text(flower_log)}")
                    report.details["published_after_failover"] = report.payments - 1
                report.details.update(flower_alive=proc.poll() is None, worker_exits=fleet.crashes,
                                      broker_page=requests.get(f"{base_url}/broker", auth=AUTH, timeout=10).status_code)
                _say(log, f"{name}: {report.details}")
            finally:
                stop_process(proc)
                fleet.stop()
    finally:
        group.stop()
    report.seconds = time.monotonic() - started
    return report


def _answers(base_url: str) -> bool:
    import requests

    try:
        return requests.get(base_url + "/healthcheck", timeout=2).status_code == 200
    except requests.RequestException:
        return False
