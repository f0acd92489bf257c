"""The Helm chart deploy/helm/certpager, rendered by the real helm (v3.17.1, scripts/install-deploy-tools).

Each values file of tests/deploy/values is linted (--strict) and rendered once; every object of a rendering is
checked by tests/deploy/k8s.py, and values that break the schema are refused with the field named.
"""

from __future__ import annotations

import shutil

import pytest
import yaml

from tests.deploy.k8s import (
    CHART,
    ROOT,
    VALUES,
    Expect,
    check_all,
    component,
    helm_template,
    named,
    of_kind,
    parse,
    postgres_in_schema,
    run,
    tool,
    values,
)

DIGEST = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
PROFILES: dict[str | None, Expect] = {
    None: Expect(image="certpager:0.1.0", external={("ServiceAccount", "cp-certpager")}),
    "sqlite-full.yaml": Expect(
        probes=2, image=f"registry.example.com/platform/certpager@{DIGEST}", ingress=True,
        external={("Secret", "internal-ca"), ("Secret", "certpager-pagerduty"), ("Secret", "certpager-webhooks-tls"),
                  ("Secret", "certpager-probe-token")},
    ),
    "postgresql.yaml": Expect(
        store="postgresql", bridge_replicas=3,
        external={("Secret", "certpager-pagerduty"), ("Secret", "certpager-postgres")},
    ),
    "exporter-only.yaml": Expect(
        bridge=False, probes=1, rules=False, dashboards=False,
        external={("ConfigMap", "certpager-exporter-config")},
    ),
    "bridge-only.yaml": Expect(
        exporter=False, network_policies=False, service_monitors=False,
        external={("ConfigMap", "certpager-bridge-config"), ("PersistentVolumeClaim", "certpager-data"),
                  ("ServiceAccount", "certpager")},
    ),
}


@pytest.mark.parametrize("values_file", list(PROFILES), ids=lambda v: v or "defaults")
def test_lint_strict(values_file):
    args = ["lint", "--strict", CHART] + (["--values", VALUES / values_file] if values_file else [])
    result = run(tool("helm"), *args)
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values_file", list(PROFILES), ids=lambda v: v or "defaults")
def test_every_rendered_object(values_file, tmp_path):
    check_all(helm_template(values_file), PROFILES[values_file], tmp_path)


def test_values_reach_the_objects():
    """What the full values file asks for is what renders (the checks above hold for any values)."""
    objects = helm_template("sqlite-full.yaml")
    wanted = values("sqlite-full.yaml")
    exporter = component(objects, "Deployment", "exporter")
    assert exporter is not None
    container = exporter["spec"]["template"]["spec"]["containers"][0]
    assert "--log.format=json" in container["args"]
    assert exporter["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert exporter["metadata"]["labels"]["team"] == "platform"
    pvc = named(objects, "PersistentVolumeClaim", "cp-certpager-bridge")
    assert pvc["spec"]["storageClassName"] == "fast-ssd" and pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep", "uninstall keeps the store"
    for kind in ("ServiceMonitor", "Probe", "PrometheusRule"):
        assert all(o["metadata"]["labels"]["release"] == "prometheus" for o in of_kind(objects, kind))
    probes = {tuple(p["spec"]["targets"]["staticConfig"]["static"]): p["spec"] for p in of_kind(objects, "Probe")}
    assert probes[("mail.example.com:25",)]["module"] == "smtp_starttls"
    assert probes[("payments.example.com:443",)]["module"] == "tls"
    assert probes[("payments.example.com:443",)]["targets"]["staticConfig"]["labels"]["service"] == "payments"
    dashboards = [c for c in of_kind(objects, "ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard")]
    assert len(dashboards) == len(list((ROOT / "deploy" / "grafana").glob("*.json")))
    for dashboard in dashboards:
        assert dashboard["metadata"]["namespace"] == "grafana"
        assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Certificates"}
    bridge_config = yaml.safe_load(named(objects, "ConfigMap", "cp-certpager-bridge")["data"]["bridge.yml"])
    store = {"retention": "14d", "path": "/var/lib/certpager/certpager-bridge.db"}
    assert bridge_config["store"] == store
    assert bridge_config["integrations"] == wanted["bridge"]["config"]["integrations"]
    policy = named(objects, "NetworkPolicy", "cp-certpager-bridge")
    assert {"port": 9093, "protocol": "TCP"} in [p for r in policy["spec"]["egress"] for p in r.get("ports", [])]


def test_config_change_rolls_the_pods():
    def checksums(*sets: str) -> dict[str, str]:
        args = [a for s in sets for a in ("--set", s)]
        objects = run(tool("helm"), "template", "cp", CHART, *args).stdout
        return {
            d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for d in yaml.safe_load_all(objects) if d and d["kind"] == "Deployment"
        }

    before = checksums()
    after = checksums("exporter.config.global.scrape_interval=1m", "bridge.config.links.runbook=https://r.example/x")
    assert before.keys() == after.keys() and all(before[k] != after[k] for k in before)


def notes(tmp_path, *sets: str) -> str:
    """NOTES.txt as helm renders it after an install. `helm install --dry-run` needs a cluster, so a copy of the
    chart renders it as a template; --debug prints the text that then fails to parse as YAML."""
    chart = tmp_path / "certpager"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "NOTES.txt").rename(chart / "templates" / "notes.yaml")
    args = [a for s in sets for a in ("--set", s)]
    result = run(tool("helm"), "template", "cp", chart, "--namespace", "monitoring", "--debug",
                 "--show-only", "templates/notes.yaml", *args, check=False)
    text = result.stdout.split("# Source: certpager/templates/notes.yaml\n", 1)[1]
    assert "error calling" not in result.stderr and "executing" not in result.stderr, result.stderr
    return text


def test_notes_tell_the_addresses_of_what_was_installed(tmp_path):
    text = notes(tmp_path / "all")
    assert "http://cp-certpager-exporter.monitoring.svc:9879/metrics" in text
    assert "http://cp-certpager-bridge.monitoring.svc:9880/api/v1/alerts/alertmanager" in text
    assert "no targets are configured" in text and "sqlite on a PersistentVolumeClaim" in text
    text = notes(tmp_path / "bridge", "exporter.enabled=false", "bridge.store.type=postgresql",
                 "bridge.store.postgresql.existingSecret=pg", "bridge.replicas=3")
    assert "Exporter:" not in text and "postgresql, 3 replicas" in text


def test_no_disruption_budget_that_blocks_node_drains():
    """PostgreSQL with one replica: a PodDisruptionBudget of minAvailable 1 could never let a drain evict it."""
    args = ["--set", "bridge.store.type=postgresql", "--set", "bridge.store.postgresql.existingSecret=pg"]
    one = parse(run(tool("helm"), "template", "cp", CHART, *args, "--set", "bridge.replicas=1").stdout)
    two = parse(run(tool("helm"), "template", "cp", CHART, *args, "--set", "bridge.replicas=2").stdout)
    assert not of_kind(one, "PodDisruptionBudget")
    assert [p["spec"]["minAvailable"] for p in of_kind(two, "PodDisruptionBudget")] == [1]


def test_bridge_may_reach_the_alertmanagers_it_syncs_with():
    """Acknowledgement sync reads and writes Alertmanager's API: the NetworkPolicy opens those ports."""
    objects = parse(run(
        tool("helm"), "template", "cp", CHART,
        "--set", "bridge.config.ack_sync.alertmanagers={http://am-0.monitoring.svc:9093,https://am.example.com}",
    ).stdout)
    (policy,) = [p for p in of_kind(objects, "NetworkPolicy") if p["metadata"]["name"] == "cp-certpager-bridge"]
    ports = [p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])]
    assert ports == [53, 53, 443, 9093, 443]


@pytest.mark.skipif(not postgres_in_schema(), reason="the bridge's store schema has no PostgreSQL yet (issue 21)")
def test_postgres_config_loads(tmp_path):
    """Runs once the bridge knows PostgreSQL: the chart's store section must be what the bridge expects
    (until then test_every_rendered_object checks everything else of this rendering)."""
    check_all(helm_template("postgresql.yaml"), PROFILES["postgresql.yaml"], tmp_path)


REFUSED = [
    (["bridge.replicas=2"], "bridge.replicas: Must be less than or equal to 1"),
    (["bridge.store.type=postgresql"], "bridge.store.postgresql.existingSecret"),
    (["bridge.store.type=mysql"], "bridge.store.type"),
    (["securityContext.readOnlyRootFilesystem=false"], "securityContext.readOnlyRootFilesystem"),
    (["podSecurityContext.runAsNonRoot=false"], "podSecurityContext.runAsNonRoot"),
    (["exporter.interval=1m"], "Additional property interval is not allowed"),
    (["exporter.port=70000"], "exporter.port"),
    (["image.digest=latest"], "image.digest"),
    (["exporter.probe.targets[0].targets[0]=no-port"], "exporter.probe.targets.0.targets.0"),
    (["bridge.serviceMonitor.interval=often"], "bridge.serviceMonitor.interval"),
    (["bridge.ingress.enabled=true"], "bridge.ingress.host"),
]


@pytest.mark.parametrize(("sets", "message"), REFUSED, ids=[s[0] for s, _ in REFUSED])
def test_schema_refuses(sets, message):
    args = [a for s in sets for a in ("--set", s)]
    result = run(tool("helm"), "template", "cp", CHART, *args, check=False)
    assert result.returncode != 0 and "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr
