"""The Prometheus alert rules (ops/prometheus/alerts.yml): promtool checks them and runs their unit tests on
synthetic series (ops/prometheus/alerts_test.yml); every rule is tested and has a runbook in the README.

promtool comes with Debian's ``prometheus`` package (.ci/run installs it); without it the promtool tests skip,
saying so. The README and coverage checks need nothing.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops" / "prometheus"
PROMTOOL = shutil.which("promtool") or ""
needs_promtool = pytest.mark.skipif(not PROMTOOL, reason="promtool not installed (apt-get install prometheus)")


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load((OPS / "alerts.yml").read_text())["groups"] for rule in group["rules"]]


def github_anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


RUNBOOK = ROOT / "docs" / "runbook.md"
DEFAULT_BASE = re.compile(r"\{\{ with \$externalLabels\.runbook_base \}\}\{\{ \. \}\}\{\{ else \}\}"
                          r"(https://[^{}\s]+/docs/runbook\.md)\{\{ end \}\}#([a-z0-9-]+)")


def test_every_rule_links_an_absolute_runbook_url_to_its_section_of_docs_runbook():
    anchors = {github_anchor(line.lstrip("#")) for line in RUNBOOK.read_text().splitlines() if line.startswith("#")}
    bases = set()
    for rule in rules():
        assert "runbook" not in rule["annotations"], rule["alert"]  # the old relative README.md#... links
        match = DEFAULT_BASE.fullmatch(rule["annotations"]["runbook_url"])
        assert match, (rule["alert"], rule["annotations"]["runbook_url"])
        base, anchor = match.groups()
        bases.add(base)
        assert anchor == f"alert-{rule['alert'].lower()}" and anchor in anchors, (rule["alert"], anchor)
    assert len(bases) == 1  # one default base for every rule


def test_every_rule_is_exercised_by_the_promtool_tests():
    tested = {case["alertname"] for test in yaml.safe_load((OPS / "alerts_test.yml").read_text())["tests"]
              for case in test.get("alert_rule_test", [])}
    assert {rule["alert"] for rule in rules()} <= tested


@needs_promtool
def test_promtool_checks_the_rules():
    done = subprocess.run([PROMTOOL, "check", "rules", str(OPS / "alerts.yml")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_the_rules_fire_on_the_synthetic_series_and_not_on_the_near_misses():
    done = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=OPS, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_checks_the_scrape_config(tmp_path):
    # prometheus.yml names the rules where the compose service mounts them (/etc/prometheus): point it here.
    config = yaml.safe_load((OPS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    config["rule_files"] = [str(OPS / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    done = subprocess.run([PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert {job["job_name"] for job in config["scrape_configs"]} == {"payments-exporter", "payments-worker"}
