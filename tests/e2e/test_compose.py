"""docker-compose.yml: its shape, and every service's command actually run here.

There is no Docker in the test run, so each service's ``command`` (except redis's) is run as a local
process with what the container would differ by substituted: 0.0.0.0 -> 127.0.0.1, the published ports ->
free ones, the service host names -> the local test Redis and the sandbox the sandbox command started,
/data -> a temporary directory, and ``payments``/``celery`` -> the virtualenv's. The environment is the
compose file's own (its defaults interpolated), so the test runs exactly what compose would.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import yaml

from tests.support.env import E2E_REDIS_URL
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
APP_SERVICES = ("sandbox", "worker", "beat", "flower", "metrics")
_VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:?-)([^}]*))?\}|\$(\w+)")


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose):
    return compose["services"]


def interpolate(value, variables: dict) -> str:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR-default}, $VAR, $$."""
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        if m.group(2) == ":-":
            return variables.get(name) or m.group(3)
        if m.group(2) == "-":
            return variables[name] if name in variables else m.group(3)
        return variables.get(name, "")
    return _VAR.sub(sub, str(value))


def service_env(service: dict, variables: dict | None = None) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: interpolate("" if v is None else v, variables or {}) for k, v in env.items()}


def command_of(service: dict) -> list[str]:
    command = service.get("command") or []  # prometheus and grafana run their images' own
    return command.split() if isinstance(command, str) else [str(part) for part in command]


# ---------------------------------------------------------------------------------------------- the file's shape
def test_the_stack_is_redis_sandbox_worker_one_beat_flower_and_monitoring(services):
    default = {name for name, svc in services.items() if not svc.get("profiles")}
    assert default == {"redis", "sandbox", "worker", "beat", "flower", "metrics", "prometheus", "grafana"}
    beats = [name for name, svc in services.items() if "beat" in command_of(svc)]
    assert beats == ["beat"], "exactly one service may run celery beat"
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1
    assert "scale" not in services["beat"]


def test_redis_keeps_jobs_with_aof_refuses_eviction_and_has_a_healthcheck(services):
    redis_svc = services["redis"]
    cmd = command_of(redis_svc)
    assert cmd[0] == "redis-server"
    options = dict(zip(cmd[1::2], cmd[2::2], strict=False))
    assert options.get("--appendonly") == "yes"
    assert options.get("--maxmemory-policy") == "noeviction"
    assert options.get("--appendfsync") in ("everysec", "always")
    assert any(v.split(":")[1] == "/data" for v in redis_svc.get("volumes", [])), "AOF must live on a volume"
    test = redis_svc["healthcheck"]["test"]
    assert "redis-cli" in test and "ping" in test


def test_the_ha_profile_is_two_replicas_of_redis_and_three_sentinels_the_env_file_points_the_apps_at(services):
    ha = {name for name, svc in services.items() if "ha" in svc.get("profiles", [])}
    assert ha == {"redis-replica-1", "redis-replica-2", "sentinel-1", "sentinel-2", "sentinel-3"}
    env_file = dict(line.split("=", 1) for line in (ROOT / "ops" / "redis-ha.env").read_text().splitlines()
                    if line and not line.startswith("#"))
    assert env_file["COMPOSE_PROFILES"] == "ha" and env_file["REDIS_MIN_REPLICAS_TO_WRITE"] == "1"
    assert sorted(env_file["REDIS_SENTINELS"].split(",")) == [f"sentinel-{i}:26379" for i in (1, 2, 3)]
    for name in ("sentinel-1", "sentinel-2", "sentinel-3"):
        script = command_of(services[name])[-1]
        assert f"sentinel monitor {env_file['REDIS_MASTER_NAME']} redis 6379 2" in script, name  # quorum: a majority
        assert services[name]["volumes"] == [f"{name}-data:/data"], "each sentinel keeps its own rewritten config"
    for name in ("redis", "redis-replica-1", "redis-replica-2"):
        cmd = [interpolate(part, env_file) for part in command_of(services[name])]
        assert cmd[cmd.index("--min-replicas-to-write") + 1] == "1", name  # every node may become the primary
        assert cmd[cmd.index("--replica-announce-ip") + 1] == name, name
        if name != "redis":
            assert cmd[cmd.index("--replicaof") + 1:cmd.index("--replicaof") + 3] == ["redis", "6379"], name
    app_env = service_env(services["worker"], env_file)
    assert app_env["REDIS_SENTINELS"] == env_file["REDIS_SENTINELS"] and app_env["REDIS_MASTER_NAME"] == "payments"
    assert service_env(services["worker"])["REDIS_SENTINELS"] == ""  # without the env file: one node, REDIS_URL


def test_the_worker_scales_and_waits_for_a_healthy_redis(services):
    worker = services["worker"]
    assert "container_name" not in worker, "a fixed container name breaks `docker compose up --scale worker=N`"
    assert "ports" not in worker, "published ports break --scale"
    assert command_of(worker)[:4] == ["celery", "-A", "worker", "worker"]
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in ("beat", "flower"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_every_app_service_gets_the_same_settings_and_flower_gets_basic_auth(services):
    envs = {name: service_env(services[name]) for name in APP_SERVICES}
    for name, env in envs.items():
        assert env["REDIS_URL"].startswith("redis://redis:6379/"), name
        assert env["BLUEPAY_URL"] == "http://sandbox:8001/interfaces/", name
        assert env["BLUEPAY_MODE"] == "TEST", name
        for key in ("BLUEPAY_ACCOUNT_ID", "BLUEPAY_SECRET_KEY", "PAYMENTS_CARD_KEY", "BROKER_VISIBILITY_TIMEOUT",
                    "STALE_AUTH_AGE", "SWEEP_INTERVAL", "RECONCILE_AFTER"):
            assert key in env, (name, key)
    assert envs["flower"]["FLOWER_BASIC_AUTH"], "flower must not run open"
    assert ":" in envs["flower"]["FLOWER_BASIC_AUTH"]
    assert service_env(services["flower"], {"FLOWER_BASIC_AUTH": "ops:pw"})["FLOWER_BASIC_AUTH"] == "ops:pw"
    assert "FLOWER_BASIC_AUTH" not in envs["worker"]
    images = {services[name].get("image") for name in APP_SERVICES}
    assert len(images) == 1 and all(services[name].get("build") for name in APP_SERVICES)


def test_prometheus_scrapes_the_exporter_and_every_worker_and_grafana_gets_the_dashboard(services):
    mounts = {name: {v.split(":")[1]: ROOT / v.split(":")[0] for v in services[name]["volumes"] if v.startswith("./")}
              for name in ("prometheus", "grafana")}
    for target, source in [*mounts["prometheus"].items(), *mounts["grafana"].items()]:
        assert source.exists(), f"{target} mounts {source}, which does not exist"
    config = yaml.safe_load(mounts["prometheus"]["/etc/prometheus/prometheus.yml"].read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert "/etc/prometheus/alerts.yml" in mounts["prometheus"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    exporter_cmd = command_of(services["metrics"])
    assert jobs["payments-exporter"]["static_configs"][0]["targets"] == \
        [f"metrics:{exporter_cmd[exporter_cmd.index('--port') + 1]}"]
    assert "--host" in exporter_cmd and exporter_cmd[exporter_cmd.index("--host") + 1] == "0.0.0.0"
    worker_sd = jobs["payments-worker"]["dns_sd_configs"][0]
    assert worker_sd["names"] == ["worker"]
    assert str(worker_sd["port"]) == service_env(services["worker"])["WORKER_METRICS_PORT"]
    provisioning = mounts["grafana"]["/etc/grafana/provisioning"]
    providers = yaml.safe_load((provisioning / "dashboards" / "payments.yml").read_text())["providers"]
    dashboard_dir = providers[0]["options"]["path"]
    assert f"{dashboard_dir}/payments.json" in mounts["grafana"]
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    dashboard = json.loads((ROOT / "ops" / "grafana" / "payments.json").read_text())
    # the data source is a dashboard variable (any Prometheus of the Grafana it is imported into), defaulting to the
    # one provisioned here
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == datasource["uid"]
    used = [p["datasource"] for p in dashboard["panels"]]
    used += [t["datasource"] for p in dashboard["panels"] for t in p["targets"] if "datasource" in t]
    assert {(d["type"], d["uid"]) for d in used} == {("prometheus", "${datasource}")}


def test_the_image_holds_what_the_commands_need():
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = " ".join(line for line in dockerfile.splitlines() if line.startswith("COPY"))
    for needed in ("pyproject.toml", "celeryconfig.py", "flowerconfig.py", "worker", "tasks"):
        assert needed in copied, needed
    assert "pip install" in dockerfile
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["payments"] == "worker.cli:main"  # the entry point payments_cmd() runs when not installed


# ---------------------------------------------------------------------------------------------- running each command
def payments_cmd() -> list[str]:
    exe = BIN / "payments"
    if exe.exists():
        return [str(exe)]
    # not installed in this virtualenv: the same console-script entry point (pyproject: worker.cli:main)
    return [sys.executable, "-c", "import sys; from worker.cli import main; sys.exit(main())"]


def local_command(cmd: list[str], ports: dict[str, str], data_dir: Path) -> list[str]:
    exe = {"payments": payments_cmd(), "celery": [str(BIN / "celery")]}[cmd[0]]
    out = []
    for arg in cmd[1:]:
        arg = arg.replace("0.0.0.0", "127.0.0.1")
        if arg.startswith("/data/"):
            arg = str(data_dir / arg[len("/data/"):])
        name, eq, value = arg.partition("=")
        if eq and value in ports:
            arg = f"{name}={ports[value]}"
        elif arg in ports:
            arg = ports[arg]
        out.append(arg)
    return exe + out


def local_env(service: dict, sandbox_url: str | None) -> dict:
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT") if k in os.environ}
    env["PYTHONPATH"] = str(ROOT)  # the image has the project installed; here it is the checkout
    env.update(service_env(service))
    redis_parts = urlsplit(env["REDIS_URL"])
    assert redis_parts.hostname == "redis"
    env["REDIS_URL"] = E2E_REDIS_URL
    if sandbox_url:
        env["BLUEPAY_URL"] = env["BLUEPAY_URL"].replace("http://sandbox:8001", sandbox_url)
    return env


class Started:
    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def run(self, name, cmd, env):
        log = self.tmp_path / f"{name}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append((name, proc, log))
        return proc, log

    def stop_all(self):
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc, _ in reversed(self.procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def wait_until(predicate, timeout, what, proc=None, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if predicate():
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:] if log else ''}")


def test_every_compose_command_runs_and_comes_up(services, e2e_redis, tmp_path):
    from worker import app

    ports = {"8001": str(free_port()), "5555": str(free_port()), "9108": str(free_port())}
    started = Started(tmp_path)
    try:
        # sandbox: answers /sandbox/health
        sandbox_url = f"http://127.0.0.1:{ports['8001']}"
        proc, log = started.run("sandbox", local_command(command_of(services["sandbox"]), ports, tmp_path),
                                local_env(services["sandbox"], None))
        wait_until(lambda: requests.get(sandbox_url + "/sandbox/health", timeout=2).json()["ok"], 30,
                   "the sandbox to answer /sandbox/health", proc, log)
        assert requests.get(sandbox_url + "/sandbox/health", timeout=2).json()["account_id"] == \
            service_env(services["worker"])["BLUEPAY_ACCOUNT_ID"]

        # worker: answers a ping under its default node name, and serves its metrics (its port: a free one here)
        worker_env = local_env(services["worker"], sandbox_url)
        worker_env["WORKER_METRICS_PORT"] = str(free_port())
        proc, log = started.run("worker", local_command(command_of(services["worker"]), ports, tmp_path), worker_env)
        node = f"celery@{socket.gethostname()}"
        wait_until(lambda: app.control.ping(destination=[node], timeout=1.0), 60, "the worker to answer a ping",
                   proc, log)

        # beat: logs that it starts, and keeps running
        proc, log = started.run("beat", local_command(command_of(services["beat"]), ports, tmp_path),
                                local_env(services["beat"], sandbox_url))
        wait_until(lambda: "beat: Starting..." in log.read_text(), 30, "beat to log that it starts", proc, log)
        # Celery logs "beat: Starting..." just before it builds its scheduler, which opens (creates) the schedule
        # file: a few ms later, more on a loaded machine. Checking the instant the line shows up was a race.
        wait_until(lambda: list(tmp_path.glob("celerybeat-schedule*")), 10,
                   "beat to keep its schedule where compose says (/data)", proc, log)

        # flower: 401 without credentials, 200 with the compose file's own
        flower_url = f"http://127.0.0.1:{ports['5555']}"
        flower_env = local_env(services["flower"], sandbox_url)
        proc, log = started.run("flower", local_command(command_of(services["flower"]), ports, tmp_path), flower_env)
        wait_until(lambda: requests.get(flower_url + "/api/workers", timeout=2).status_code == 401, 30,
                   "flower to answer", proc, log)
        user, _, password = flower_env["FLOWER_BASIC_AUTH"].partition(":")
        assert requests.get(flower_url + "/api/tasks", timeout=5, auth=(user, password)).status_code == 200
        assert requests.get(flower_url + "/api/tasks", timeout=5, auth=(user, password + "x")).status_code == 401

        worker_metrics = f"http://127.0.0.1:{worker_env['WORKER_METRICS_PORT']}/metrics"
        wait_until(lambda: requests.get(worker_metrics, timeout=2).status_code == 200, 30,
                   "the worker to serve its metrics")

        # metrics: the exporter answers /metrics with the store's gauges
        exporter_url = f"http://127.0.0.1:{ports['9108']}/metrics"
        proc, log = started.run("metrics", local_command(command_of(services["metrics"]), ports, tmp_path),
                                local_env(services["metrics"], sandbox_url))
        wait_until(lambda: "payments_exporter_redis_up 1.0" in requests.get(exporter_url, timeout=2).text, 30,
                   "the exporter to serve the store's gauges", proc, log)

        for name, proc, log in started.procs:
            assert proc.poll() is None, f"{name} exited:\n{log.read_text()[-3000:]}"
    finally:
        started.stop_all()
    for name, _proc, log in started.procs:
        assert "Traceback" not in log.read_text(), f"{name}:\n{log.read_text()[-3000:]}"
