"""deploy/prometheus and deploy/alertmanager: valid for the Debian programs and consistent with rules/."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
TARGETS_JSON = ROOT / "deploy" / "prometheus" / "targets.example.json"
ALERTMANAGER_YML = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
RULES = ROOT / "rules" / "certpager.rules.yml"
BRIDGE_RULES = ROOT / "rules" / "certpager-bridge.rules.yml"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_check_config() -> None:
    result = _run("promtool", "check", "config", str(PROMETHEUS_YML))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 17 rules found" in result.stdout  # rules/certpager.rules.yml
    assert "SUCCESS: 21 rules found" in result.stdout  # rules/certpager-bridge.rules.yml


@pytest.mark.skipif(
    shutil.which("amtool") is None, reason="amtool not installed (Debian package prometheus-alertmanager)"
)
def test_amtool_check_config() -> None:
    result = _run("amtool", "check-config", str(ALERTMANAGER_YML))
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_jobs_and_probe_relabelling() -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["certpager"]["static_configs"][0]["targets"] == ["127.0.0.1:9879"]
    assert jobs["certpager-bridge"]["static_configs"][0]["targets"] == ["127.0.0.1:9880"]
    probe = jobs["certpager-probe"]
    assert probe["metrics_path"] == "/probe"
    assert probe["params"] == {"module": ["tls"]}
    relabel = probe["relabel_configs"]
    assert relabel[0] == {"source_labels": ["__address__"], "target_label": "__param_target"}
    assert {"source_labels": ["__param_target"], "target_label": "instance"} in relabel
    assert relabel[-1] == {"target_label": "__address__", "replacement": "127.0.0.1:9879"}
    assert config["rule_files"] == ["../../rules/*.rules.yml"]


def test_targets_example_is_file_sd() -> None:
    groups = json.loads(TARGETS_JSON.read_text())
    assert len(groups) == 4
    for group in groups:
        assert set(group) == {"targets", "labels"}
        assert all(":" in t for t in group["targets"])
        assert {"environment", "service", "owner"} <= set(group["labels"])


def test_alertmanager_webhook_to_the_bridge() -> None:
    config = yaml.safe_load(ALERTMANAGER_YML.read_text())
    route = config["route"]
    assert route["group_by"] == ["class", "certificate", "environment"]
    assert route["receiver"] == "certpager-bridge"
    receivers = {r["name"]: r for r in config["receivers"]}
    (webhook,) = receivers["certpager-bridge"]["webhook_configs"]
    assert webhook["send_resolved"] is True
    assert webhook["url"] == "http://127.0.0.1:9880/api/v1/alerts/alertmanager"
    assert webhook["http_config"]["authorization"] == {
        "type": "Bearer", "credentials_file": "/etc/alertmanager/certpager-bridge.token"
    }
    (fallback,) = receivers["certpager-fallback"]["pagerduty_configs"]
    assert set(fallback) >= {"routing_key_file", "send_resolved"}  # a secret from a file, resolves sent
    assert "webhook_configs" not in receivers["certpager-fallback"]
    assert "inhibit_rules" not in config


def _alerts(rules_file: Path) -> list[dict[str, str]]:
    rules = yaml.safe_load(rules_file.read_text())
    return [{"alertname": r["alert"], **r["labels"]} for g in rules["groups"] for r in g["rules"] if "alert" in r]


@pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool not installed (prometheus-alertmanager)")
@pytest.mark.parametrize(("rules_file", "receiver"), [
    (RULES, "certpager-bridge"), (BRIDGE_RULES, "certpager-fallback"),
], ids=["certificate alerts", "bridge alerts"])
def test_amtool_routes_every_alert(rules_file: Path, receiver: str) -> None:
    """Alertmanager's own router (amtool) sends certificate alerts to the bridge and the bridge's own alerts
    around it, whatever their severity."""
    alerts = _alerts(rules_file)
    assert {a["severity"] for a in alerts} >= {"critical", "warning"}
    for alert in alerts:
        labels = [f"{k}={v}" for k, v in alert.items()]
        result = _run("amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER_YML}", *labels)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == receiver, (alert, result.stdout)
