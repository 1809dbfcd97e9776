"""A Redis Sentinel group on loopback for tests: one primary, replicas and three sentinels, all real processes.

``SentinelGroup(directory).start()`` runs ``redis-server`` nodes (the first the primary, the others its replicas)
and ``redis-server --sentinel`` processes on free ports of TEST_REDIS_HA_PORTS (default 26400-26499), each with a
config file and a log of its own in ``directory``; ``stop()`` ends them all. Faults: :meth:`kill_primary`
(SIGKILL; a replica is promoted; the old primary is started again as a replica of the new one, as a supervisor
would) and :meth:`pause_primary` (SIGSTOP until the sentinels promote a replica, then SIGCONT: the partition).

Primaries run with ``min-replicas-to-write`` (default 1): a primary cut off from its replicas for
``min-replicas-max-lag`` seconds refuses writes (NOREPLICAS) instead of taking writes a failover would discard.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.support.ports import free_ports_in

HA_PORTS = os.environ.get("TEST_REDIS_HA_PORTS", "26400-26499")


def _port_range() -> tuple[int, int]:
    first, _, last = HA_PORTS.partition("-")
    return int(first), int(last or first)


def _wait(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            found = predicate()
            if found:
                return found
        except (redis.RedisError, OSError) as exc:
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not within {timeout:g} s" + (f" (last error: {last_error!r})" if last_error else ""))


@dataclass
class Node:
    """One redis-server (data node) or sentinel, restartable with its config file."""

    port: int
    dir: Path
    sentinel: bool = False
    password: str = ""
    proc: subprocess.Popen | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.dir / ("sentinel.conf" if self.sentinel else "redis.conf")

    @property
    def log(self) -> Path:
        return self.dir / ("sentinel.log" if self.sentinel else "redis.log")

    def start(self, *args: str) -> Node:
        cmd = ["redis-server", str(self.conf), *(["--sentinel"] if self.sentinel else []), *self.extra_args, *args]
        self.proc = subprocess.Popen(cmd, cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        def ours() -> bool:  # answering on our port, and it is this process (not another test's server)
            if self.proc is None or self.proc.poll() is not None:
                log = self.log.read_text()[-500:] if self.log.exists() else "(no log)"
                raise RuntimeError(f"redis-server on {self.port} exited: {log}")
            return int(self.client(timeout=0.5).info("server")["process_id"]) == self.proc.pid

        _wait(ours, 15, f"redis on {self.port}")
        return self

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password or None, socket_timeout=timeout,
                           socket_connect_timeout=timeout, decode_responses=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)


class SentinelGroup:
    """One primary, ``replicas`` replicas and ``sentinels`` sentinels (quorum: a majority)."""

    def __init__(self, directory: Path, *, master_name: str = "", replicas: int = 2, sentinels: int = 3,
                 down_after_ms: int = 2000, failover_timeout_ms: int = 3000, min_replicas_to_write: int = 1,
                 min_replicas_max_lag: int = 2, password: str = "", sentinel_password: str = ""):
        self.dir = Path(directory)
        # A name of its own: sentinels of another run that reach one of our ports (reused while it was down) ignore us.
        self.master_name = master_name or f"payments-ha-{uuid.uuid4().hex[:6]}"
        self.n_replicas, self.n_sentinels = replicas, sentinels
        self.down_after_ms, self.failover_timeout_ms = down_after_ms, failover_timeout_ms
        self.min_replicas_to_write, self.min_replicas_max_lag = min_replicas_to_write, min_replicas_max_lag
        self.password, self.sentinel_password = password, sentinel_password
        self.nodes: list[Node] = []
        self.sentinel_nodes: list[Node] = []
        self.events: list[str] = []
        self.failovers = 0

    # ---- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> SentinelGroup:
        first, last = _port_range()
        ports = free_ports_in(first, last, 1 + self.n_replicas + self.n_sentinels)
        data_ports, sentinel_ports = ports[: 1 + self.n_replicas], ports[1 + self.n_replicas:]
        try:
            for i, port in enumerate(data_ports):
                node = Node(port, self.dir / f"redis-{port}", password=self.password)
                node.dir.mkdir(parents=True, exist_ok=True)
                node.conf.write_text(self._node_conf(node, replica_of=None if i == 0 else data_ports[0]))
                self.nodes.append(node.start())
            primary = self.nodes[0]
            _wait(lambda: self._connected_replicas(primary) >= self.n_replicas, 20, "replicas in sync")
            for port in sentinel_ports:
                node = Node(port, self.dir / f"sentinel-{port}", sentinel=True, password=self.sentinel_password)
                node.dir.mkdir(parents=True, exist_ok=True)
                node.conf.write_text(self._sentinel_conf(node, primary.port))
                self.sentinel_nodes.append(node.start())
            _wait(self._sentinels_agree, 30, "sentinels seeing the primary, its replicas and each other", 0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.sentinel_nodes + self.nodes:
            with contextlib.suppress(Exception):
                node.stop()

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _node_conf(self, node: Node, replica_of: int | None) -> str:
        lines = [f"port {node.port}", "bind 127.0.0.1", f"dir {node.dir}", f"logfile {node.log}", 'save ""',
                 "appendonly no", "repl-diskless-sync yes", "repl-diskless-sync-delay 0",
                 # a replica loads a full sync from the socket: no dump.rdb, whose LZF-compressed bytes (a task id
                 # cut by a back-reference) read as card-like digit runs to the raw card-data scan
                 "repl-diskless-load swapdb",
                 f"min-replicas-to-write {self.min_replicas_to_write}",
                 f"min-replicas-max-lag {self.min_replicas_max_lag}"]
        if self.password:
            lines += [f"requirepass {self.password}", f"masterauth {self.password}"]
        if replica_of:
            lines.append(f"replicaof 127.0.0.1 {replica_of}")
        return "\n".join(lines) + "\n"

    def _sentinel_conf(self, node: Node, primary_port: int) -> str:
        m = self.master_name
        quorum = self.n_sentinels // 2 + 1
        lines = [f"port {node.port}", "bind 127.0.0.1", f"dir {node.dir}", f"logfile {node.log}",
                 f"sentinel monitor {m} 127.0.0.1 {primary_port} {quorum}",
                 f"sentinel down-after-milliseconds {m} {self.down_after_ms}",
                 f"sentinel failover-timeout {m} {self.failover_timeout_ms}",
                 f"sentinel parallel-syncs {m} {self.n_replicas}"]
        if self.password:
            lines.append(f"sentinel auth-pass {m} {self.password}")
        if self.sentinel_password:
            lines += [f"requirepass {self.sentinel_password}", f"sentinel sentinel-pass {self.sentinel_password}"]
        return "\n".join(lines) + "\n"

    # ---- what the product is given ---------------------------------------------------------------------
    @property
    def sentinels_setting(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.sentinel_nodes)

    def env(self, db: int = 0) -> dict[str, str]:
        """The environment a worker, beat or producer gets (REDIS_URL only names the database)."""
        out = {"REDIS_SENTINELS": self.sentinels_setting, "REDIS_MASTER_NAME": self.master_name,
               "REDIS_URL": f"redis://127.0.0.1:{self.nodes[0].port}/{db}"}
        if self.password:
            out["REDIS_PASSWORD"] = self.password
        if self.sentinel_password:
            out["REDIS_SENTINEL_PASSWORD"] = self.sentinel_password
        return out

    def settings_overrides(self, db: int = 0) -> dict:
        """The same for a ``worker.config.Settings`` (dataclasses.replace)."""
        return {"redis_sentinels": self.sentinels_setting, "redis_master_name": self.master_name,
                "redis_url": f"redis://127.0.0.1:{self.nodes[0].port}/{db}", "redis_password": self.password,
                "redis_sentinel_password": self.sentinel_password}

    # ---- who is who --------------------------------------------------------------------------------------
    def _connected_replicas(self, node: Node) -> int:
        info = node.client().info("replication")
        if info.get("role") != "master":
            return 0
        return sum(1 for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                   and v.get("state") == "online")

    def _sentinels_agree(self) -> bool:
        for s in self.sentinel_nodes:
            master: Any = s.client().sentinel_master(self.master_name)
            if (int(master.get("num-slaves", 0)) < self.n_replicas
                    or int(master.get("num-other-sentinels", 0)) < self.n_sentinels - 1):
                return False
        return True

    def master_port(self) -> int | None:
        """The primary as the sentinels say (the first that answers)."""
        for s in self.sentinel_nodes:
            if not s.alive():
                continue
            try:
                addr: Any = s.client(timeout=0.5).sentinel_get_master_addr_by_name(self.master_name)
            except redis.RedisError:
                continue
            if addr:
                return int(addr[1])
        return None

    def primary(self) -> Node:
        port = self.master_port()
        return next(n for n in self.nodes if n.port == port)

    def replica_synced(self, node: Node, master_port: int) -> bool:
        info = node.client(timeout=0.5).info("replication")
        return (info.get("role") == "slave" and int(info.get("master_port", 0)) == master_port
                and info.get("master_link_status") == "up")

    def wait_healthy(self, timeout: float = 60.0) -> int:
        """Every data node up, one primary the sentinels agree on, every other node its synced replica."""
        def healthy():
            port = self.master_port()
            if port is None:
                return None
            for n in self.nodes:
                if n.port != port and not self.replica_synced(n, port):
                    return None
            return port
        return _wait(healthy, timeout, "a healthy group", 0.2)

    # ---- faults ------------------------------------------------------------------------------------------
    def kill_primary(self, *, down_seconds: float = 1.0, timeout: float = 60.0) -> tuple[int, int]:
        """SIGKILL the primary; wait for the sentinels to promote a replica; start the old primary again as a
        replica of the new one (a supervisor restarting it with the current master); wait until it is synced.
        Returns (old port, new port)."""
        old = self.primary()
        old.signal(signal.SIGKILL)
        assert old.proc is not None
        old.proc.wait(10)
        self.events.append(f"{time.time():.3f} SIGKILL primary {old.port}")
        new_port = _wait(lambda: (p := self.master_port()) not in (None, old.port) and p, timeout,
                         "a replica promoted", 0.1)
        self.failovers += 1
        self.events.append(f"{time.time():.3f} sentinels promoted {new_port}")
        time.sleep(down_seconds)
        old.start("--replicaof", "127.0.0.1", str(new_port))
        self.events.append(f"{time.time():.3f} old primary {old.port} restarted as a replica")
        self.wait_healthy(timeout)
        return old.port, new_port

    def pause_primary(self, *, timeout: float = 60.0, extra_seconds: float = 0.0,
                      until_replicas_follow: bool = True) -> tuple[int, int]:
        """SIGSTOP the primary (clients' connections stay open, nothing answers) for a whole failover: until the
        sentinels promote a replica and the other replicas follow it (``until_replicas_follow``; False: resume
        as soon as the promotion is announced, while the other replicas may still follow the old primary), plus
        ``extra_seconds``; then SIGCONT: it comes back believing it is the primary until the sentinels turn it
        into a replica (up to ~10 s later). Returns (old port, new port)."""
        old = self.primary()
        old.signal(signal.SIGSTOP)
        self.events.append(f"{time.time():.3f} SIGSTOP primary {old.port}")
        try:
            new_port = _wait(lambda: (p := self.master_port()) not in (None, old.port) and p, timeout,
                             "a replica promoted", 0.1)
            self.failovers += 1
            self.events.append(f"{time.time():.3f} sentinels promoted {new_port}")
            if until_replicas_follow:
                others = [n for n in self.nodes if n.port not in (old.port, new_port)]
                _wait(lambda: all(self.replica_synced(n, new_port) for n in others), timeout,
                      "the other replicas following the new primary", 0.1)
            time.sleep(extra_seconds)
        finally:
            old.signal(signal.SIGCONT)
            self.events.append(f"{time.time():.3f} SIGCONT old primary {old.port}")
        self.wait_healthy(timeout)
        return old.port, new_port

    def logfiles(self) -> list[Path]:
        return [n.log for n in self.nodes + self.sentinel_nodes]
