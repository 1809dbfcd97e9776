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

import jsonschema
import pytest
import requests
import yaml

from tests.support.archive_db import archive_url
from tests.support.env import E2E_REDIS_URL, TEST_CARD_KEY
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
APP_SERVICES = ("sandbox", "worker", "beat", "flower", "metrics", "console")
_VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")
PROD_FILE = ROOT / "docker-compose.prod.yml"
COMPOSE_SCHEMA = ROOT / "tests" / "support" / "compose-spec.json"
# what an operator must set for docker-compose.prod.yml (each is required there, none has a default)
PROD_REQUIRED = {"REDIS_PASSWORD": "0f3c9a7e51d2b8", "BLUEPAY_ACCOUNT_ID": "100200300400",
                 "BLUEPAY_SECRET_KEY": "LIVESECRETKEY0000000000000000042", "PAYMENTS_CARD_KEY": TEST_CARD_KEY,
                 "POSTGRES_PASSWORD": "9d2e4b7a0c1f", "FLOWER_BASIC_AUTH": "ops:9b8c7d6e",
                 "GRAFANA_ADMIN_PASSWORD": "5e4d3c2b", "CONSOLE_SECRET_KEY": "7a6b5c4d3e2f1a0b"}


class MissingVariable(Exception):
    """Compose's ``${VAR:?message}`` / ``${VAR?message}`` with VAR unset (or, for ``:?``, empty)."""


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose):
    return compose["services"]


def interpolate(value, variables: dict) -> str:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $VAR,
    $$."""
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        if m.group(2) == ":-":
            return variables.get(name) or m.group(3)
        if m.group(2) == "-":
            return variables[name] if name in variables else m.group(3)
        if (m.group(2) == ":?" and not variables.get(name)) or (m.group(2) == "?" and name not in variables):
            raise MissingVariable(f"{name}: {m.group(3)}")
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
    assert default == {"redis", "sandbox", "worker", "beat", "flower", "metrics", "console", "prometheus", "grafana"}
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
    assert "127.0.0.1:8090/healthz" in services["console"]["healthcheck"]["test"][3]
    assert command_of(services["console"])[-2:] == ["--port", "8090"]
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
    assert scripts["payments"] == "worker.cli.main:main"  # the entry point payments_cmd() runs when not installed


# ---------------------------------------------------------------------------------------------- both files validate
def interpolated(node, variables: dict):
    """The file as compose reads it: every value interpolated (keys are not)."""
    if isinstance(node, dict):
        return {k: interpolated(v, variables) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolated(v, variables) for v in node]
    return interpolate(node, variables) if isinstance(node, str) else node


def config_of(path: Path, variables: dict) -> dict:
    return interpolated(yaml.safe_load(path.read_text()), variables)


@pytest.fixture(scope="module")
def prod():
    return config_of(PROD_FILE, PROD_REQUIRED)


@pytest.mark.parametrize(("path", "variables"), [(COMPOSE_FILE, {}), (PROD_FILE, PROD_REQUIRED)],
                         ids=["docker-compose.yml", "docker-compose.prod.yml"])
def test_both_compose_files_are_valid_by_the_compose_spec_schema(path, variables):
    """The compose-spec JSON schema (tests/support/compose-spec.json: compose-spec/compose-spec's
    schema/compose-spec.json at commit 170098ba07d9, Apache-2.0), on the file as compose interpolates it."""
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(config_of(path, variables))]
    assert errors == []


def docker_compose() -> list[str] | None:
    """A Compose CLI that reads the compose spec and runs ``config`` without an engine: the v2 plugin, or
    docker-compose 1.29 (Debian's package; .ci/run installs it)."""
    for cmd in (["docker", "compose"], ["docker-compose"]):
        try:
            done = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        version = re.search(r"version v?(\d+)\.(\d+)", done.stdout)
        if done.returncode == 0 and version and (int(version[1]), int(version[2])) >= (1, 29):
            return cmd
    return None


@pytest.mark.parametrize(("path", "variables"), [(COMPOSE_FILE, {}), (PROD_FILE, PROD_REQUIRED)],
                         ids=["docker-compose.yml", "docker-compose.prod.yml"])
def test_docker_compose_config_accepts_both_files(path, variables):
    cmd = docker_compose()
    if cmd is None:
        pytest.skip("no Compose CLI here (docker compose plugin, or apt-get install docker-compose); the schema test "
                    "covers it")
    env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ} | variables
    done = subprocess.run([*cmd, "-f", str(path), "config", "--quiet"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    if path == PROD_FILE:  # and it refuses, naming it, when a secret is missing
        missing = {k: v for k, v in env.items() if k != "POSTGRES_PASSWORD"}
        done = subprocess.run([*cmd, "-f", str(path), "config", "--quiet"], cwd=ROOT, env=missing,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and "set POSTGRES_PASSWORD" in done.stderr


def test_production_has_no_sandbox_and_talks_to_the_gateway_in_live_mode(prod):
    services = prod["services"]
    assert "sandbox" not in services
    assert not any("sandbox" in " ".join(command_of(svc)) for svc in services.values())
    for name in ("worker", "beat", "flower", "metrics", "migrate", "console"):
        env = service_env(services[name])
        assert env["BLUEPAY_URL"] == "https://secure.bluepay.com/interfaces/", name
        assert env["BLUEPAY_MODE"] == "LIVE", name
        assert env["BLUEPAY_ACCOUNT_ID"] == PROD_REQUIRED["BLUEPAY_ACCOUNT_ID"], name
        assert env["PAYMENTS_CARD_KEY"] == PROD_REQUIRED["PAYMENTS_CARD_KEY"], name
    assert "SANDBOXSECRETKEY" not in json.dumps(prod) and "change-me" not in json.dumps(prod)


@pytest.mark.parametrize("name", sorted(PROD_REQUIRED))
def test_every_production_secret_is_required_and_compose_names_it(name):
    rest = {k: v for k, v in PROD_REQUIRED.items() if k != name}
    with pytest.raises(MissingVariable, match=f"^{name}: set {name}"):
        config_of(PROD_FILE, rest)
    with pytest.raises(MissingVariable, match=f"^{name}: "):
        config_of(PROD_FILE, {**rest, name: ""})


def test_no_password_key_or_secret_in_the_production_file_has_a_default():
    defaulted = set(re.findall(r"\$\{(\w+):?-", PROD_FILE.read_text()))
    assert {v for v in defaulted if re.search(r"PASSWORD|SECRET|_KEY$|BASIC_AUTH|TOKEN|ACCOUNT", v)} == set()
    assert set(PROD_REQUIRED) <= set(re.findall(r"\$\{(\w+):\?", PROD_FILE.read_text()))


def test_the_archive_is_postgresql_migrated_by_a_one_shot_the_workers_wait_for(prod):
    services = prod["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == PROD_REQUIRED["POSTGRES_PASSWORD"]
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    migrate = services["migrate"]
    assert command_of(migrate) == ["payments", "archive", "--migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("worker", "migrate", "beat", "metrics", "flower", "console"):
        url = service_env(services[name])["PAYMENTS_ARCHIVE_URL"]
        assert url == f"postgresql+psycopg://payments:{PROD_REQUIRED['POSTGRES_PASSWORD']}@postgres:5432/payments"
    for name in ("worker", "beat"):  # the sweep (retention) runs on workers; beat schedules it
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_production_redis_has_a_password_a_memory_limit_aof_and_noeviction(prod):
    redis_svc = prod["services"]["redis"]
    cmd = command_of(redis_svc)
    options = dict(zip(cmd[1::2], cmd[2::2], strict=False))
    assert options["--requirepass"] == PROD_REQUIRED["REDIS_PASSWORD"]
    assert options["--maxmemory-policy"] == "noeviction" and options["--appendonly"] == "yes"
    assert options["--maxmemory"]  # what PaymentsRedisMemoryNearLimit compares with
    assert redis_svc["environment"]["REDISCLI_AUTH"] == PROD_REQUIRED["REDIS_PASSWORD"]  # the healthcheck's ping
    url = urlsplit(service_env(prod["services"]["worker"])["REDIS_URL"])
    assert (url.hostname, url.password) == ("redis", PROD_REQUIRED["REDIS_PASSWORD"])


@pytest.mark.parametrize("path", [COMPOSE_FILE, PROD_FILE], ids=["docker-compose.yml", "docker-compose.prod.yml"])
def test_beat_keeps_its_schedule_on_a_volume(path):
    config = config_of(path, PROD_REQUIRED)
    beat = config["services"]["beat"]
    cmd = command_of(beat)
    schedule_dir = str(Path(cmd[cmd.index("--schedule") + 1]).parent)
    volumes = {v.split(":")[1]: v.split(":")[0] for v in beat["volumes"]}
    assert volumes[schedule_dir] in config["volumes"], "a named volume: kept across restarts and new images"


def test_every_long_running_production_service_has_a_healthcheck(prod):
    for name, svc in prod["services"].items():
        if name == "migrate":
            assert "healthcheck" not in svc  # a one-shot
            continue
        test = svc.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), name


def test_the_python_healthchecks_compile_and_the_http_ones_probe_the_services_own_port(prod):
    services = prod["services"]
    for name, svc in services.items():
        test = svc.get("healthcheck", {}).get("test") or []
        if test[1:3] == ["python", "-c"]:
            compile(test[3], f"{name} healthcheck", "exec")
    assert "127.0.0.1:9109/metrics" in services["worker"]["healthcheck"]["test"][3]
    assert service_env(services["worker"])["WORKER_METRICS_PORT"] == "9109"
    assert "127.0.0.1:5555/healthcheck" in services["flower"]["healthcheck"]["test"][3]
    assert "--port=5555" in command_of(services["flower"])
    assert "127.0.0.1:8090/healthz" in services["console"]["healthcheck"]["test"][3]
    assert command_of(services["console"])[-2:] == ["--port", "8090"]
    exporter_cmd = command_of(services["metrics"])
    assert f"127.0.0.1:{exporter_cmd[exporter_cmd.index('--port') + 1]}/metrics" in \
        services["metrics"]["healthcheck"]["test"][3]


@pytest.mark.parametrize(("asked", "bound"), [({}, "127.0.0.1"), ({"PUBLISH_ADDRESS": "0.0.0.0"}, "0.0.0.0")])
def test_production_ports_are_on_127_0_0_1_unless_asked(asked, bound):
    services = config_of(PROD_FILE, {**PROD_REQUIRED, **asked})["services"]
    published = {name: svc["ports"] for name, svc in services.items() if svc.get("ports")}
    assert set(published) == {"flower", "console", "prometheus", "grafana"}
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith(f"{bound}:"), (name, port)


def test_the_migration_one_shot_creates_the_archive_in_postgresql(tmp_path):
    """The migrate service's own command, run here against a private schema of the local PostgreSQL."""
    migrate = config_of(PROD_FILE, PROD_REQUIRED)["services"]["migrate"]
    with archive_url("postgresql", tmp_path) as url:
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
        env.update(service_env(migrate), PAYMENTS_ARCHIVE_URL=url, REDIS_URL="redis://127.0.0.1:1/0")
        cmd = [*payments_cmd(), *command_of(migrate)[1:]]
        for _ in range(2):  # and again on the next deploy: nothing to do, exit 0
            done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "schema at revision 0002" in done.stdout  # the newest migration (worker/archive/migrations)


# ---------------------------------------------------------------------------------------------- running each command
def payments_cmd() -> list[str]:
    exe = BIN / "payments"
    if exe.exists():
        return [str(exe)]
    # not installed in this virtualenv: the same console-script entry point (pyproject: worker.cli.main:main)
    return [sys.executable, "-m", "worker.cli"]


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


def test_the_production_flower_and_exporter_commands_come_up_locked_and_pass_their_healthchecks(prod, e2e_redis,
                                                                                                tmp_path):
    """docker-compose.prod.yml's flower (``payments flower --address=0.0.0.0``) and metrics commands run here as
    processes (0.0.0.0 -> 127.0.0.1, their ports -> free ones, Redis -> the e2e one), then their own healthcheck
    commands, pointed at those ports."""
    services = prod["services"]
    ports = {"5555": str(free_port()), "9108": str(free_port())}
    started = Started(tmp_path)
    try:
        flower_env = local_env(services["flower"], None)
        proc, log = started.run("flower", local_command(command_of(services["flower"]), ports, tmp_path), flower_env)
        flower_url = f"http://127.0.0.1:{ports['5555']}"
        wait_until(lambda: requests.get(flower_url + "/api/tasks", timeout=2).status_code == 401, 30,
                   "the production flower to answer", proc, log)
        user, _, password = PROD_REQUIRED["FLOWER_BASIC_AUTH"].partition(":")
        assert requests.get(flower_url + "/api/tasks", auth=(user, password), timeout=5).status_code == 200
        assert requests.post(flower_url + "/api/task/revoke/x", auth=(user, password), timeout=5).status_code == 403

        proc, log = started.run("metrics", local_command(command_of(services["metrics"]), ports, tmp_path),
                                local_env(services["metrics"], None))
        exporter_url = f"http://127.0.0.1:{ports['9108']}/metrics"
        wait_until(lambda: "payments_redis_used_memory_bytes" in requests.get(exporter_url, timeout=2).text, 30,
                   "the production exporter to serve", proc, log)

        for name, port in (("flower", "5555"), ("metrics", "9108")):
            check = services[name]["healthcheck"]["test"]
            code = check[3].replace(f"127.0.0.1:{port}", f"127.0.0.1:{ports[port]}")
            assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 0, name
        stopped = [sys.executable, "-c", services["flower"]["healthcheck"]["test"][3].replace(
            "127.0.0.1:5555", f"127.0.0.1:{free_port()}")]
        assert subprocess.run(stopped, capture_output=True, timeout=30).returncode != 0  # nobody there: unhealthy
    finally:
        started.stop_all()
