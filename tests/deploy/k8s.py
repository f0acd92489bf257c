"""Rendering with the real helm and kubectl (scripts/install-deploy-tools), and the checks every rendered
object set must pass, whether it came from the Helm chart or from Kustomize.

A set of objects is checked as a whole: every reference (a Service's selector, a ServiceMonitor's port, a
volume's ConfigMap, PVC or Secret, a Probe's prober) must land on an object of the set or on an object the
values say exists outside it; the services' config files are loaded by the services' own config loaders.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bridge.config import Store
from bridge.config import load as load_bridge_config
from exporter.config import load as load_exporter_config

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "certpager"
KUSTOMIZE = ROOT / "deploy" / "kubernetes"
VALUES = Path(__file__).resolve().parent / "values"
BIN = Path(sys.executable).parent
SECRETS_DIR = "/etc/certpager/secrets/"
STORE_URL = "postgresql://certpager:secret@127.0.0.1:5432/certpager"
Obj = dict[str, Any]


def tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        raise AssertionError(f"{path} is missing: run scripts/install-deploy-tools (scripts/test does)")
    return path


def run(*args: str | Path, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}")
    return result


def parse(text: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@functools.cache
def helm_template(values_file: str | None, release: str = "cp") -> tuple[Obj, ...]:
    """``helm template`` of the chart with one values file of tests/deploy/values (None: the defaults)."""
    args: list[str | Path] = [tool("helm"), "template", release, CHART, "--namespace", "monitoring"]
    if values_file:
        args += ["--values", VALUES / values_file]
    return tuple(parse(run(*args).stdout))


@functools.cache
def kustomize(overlay: str) -> tuple[Obj, ...]:
    return tuple(parse(run(tool("kubectl"), "kustomize", KUSTOMIZE / "overlays" / overlay).stdout))


def values(values_file: str | None) -> Obj:
    """The chart's values as helm merges them (defaults, then the file)."""
    merged = yaml.safe_load((CHART / "values.yaml").read_text())
    if values_file:
        _merge(merged, yaml.safe_load((VALUES / values_file).read_text()))
    return merged


def _merge(base: Obj, override: Mapping[str, Any]) -> None:
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def of_kind(objects: Iterable[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: Iterable[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} rendered"
    return matches[0]


def component(objects: Iterable[Obj], kind: str, name: str) -> Obj | None:
    """The object of ``kind`` whose app.kubernetes.io/component label is ``name`` (None if absent)."""
    matches = [
        o for o in objects
        if o["kind"] == kind and o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == name
    ]
    assert len(matches) <= 1, f"{len(matches)} {kind} objects for component {name}"
    return matches[0] if matches else None


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@dataclass
class Expect:
    """What a rendering should contain, beyond the rules every rendering follows."""

    exporter: bool = True
    bridge: bool = True
    store: str = "sqlite"  # sqlite | postgresql
    bridge_replicas: int = 1
    network_policies: bool = True
    service_monitors: bool = True
    probes: int = 0
    ingress: bool = False
    rules: bool = True
    dashboards: bool = True
    image: str = ""
    # Objects the rendering may reference without containing them (existing ConfigMaps, Secrets, PVCs).
    external: set[tuple[str, str]] = field(default_factory=set)
    secrets_dir: str = SECRETS_DIR


def check_all(objects: tuple[Obj, ...], expect: Expect, tmp: Path) -> None:
    """Every check, in the order a reader would look."""
    check_metadata(objects)
    deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in of_kind(objects, "Deployment")}
    assert set(deployments) == {c for c, on in (("exporter", expect.exporter), ("bridge", expect.bridge)) if on}
    for deployment in deployments.values():
        check_pod(objects, deployment, expect)
        check_service(objects, deployment)
    if expect.bridge:
        check_bridge_store(objects, deployments["bridge"], expect)
    check_network_policies(objects, deployments, expect)
    check_ingress(objects, expect)
    check_monitoring(objects, expect)
    check_configs(objects, expect, tmp)


def check_metadata(objects: Iterable[Obj]) -> None:
    for obj in objects:
        meta = obj["metadata"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", meta["name"]) and len(meta["name"]) <= 63, meta["name"]
        labels = meta.get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "certpager", f"{obj['kind']}/{meta['name']}: name label"
        assert labels.get("app.kubernetes.io/part-of") == "certpager"


def check_pod(objects: tuple[Obj, ...], deployment: Obj, expect: Expect) -> None:
    name = deployment["metadata"]["name"]
    spec = deployment["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    assert selects(spec["selector"]["matchLabels"], pod_labels), f"{name}: selector does not match its pods"
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    account = pod["serviceAccountName"]
    assert ("ServiceAccount", account) in expect.external or named(objects, "ServiceAccount", account)
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0 and security["runAsGroup"] != 0
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (container,) = pod["containers"]
    assert container["image"] == (expect.image or container["image"]) and container["image"]
    assert ":" in container["image"] or "@sha256:" in container["image"], "image pinned to a tag or digest"
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
    assert ctx.get("privileged", False) is False and ctx["capabilities"]["drop"] == ["ALL"]
    assert "add" not in ctx["capabilities"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = (("livenessProbe", "/-/healthy"), ("readinessProbe", "/-/ready"), ("startupProbe", "/-/healthy"))
    for probe, path in probes:
        get = container[probe]["httpGet"]
        assert get["path"] == path and get["port"] in ports, f"{name}: {probe} is not GET {path} on a named port"
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for mount in mounts.values():
        assert mount["name"] in volumes, f"{name}: mount {mount['mountPath']} of an undefined volume"
    assert "/tmp" in mounts, "a writable /tmp on a read-only root"
    config_arg = next(a for a in container["args"] if a.startswith("--config.file="))
    config_path = Path(config_arg.split("=", 1)[1])
    config_mount = mounts[str(config_path.parent)]
    assert config_mount["readOnly"] is True
    config_map = volumes[config_mount["name"]]["configMap"]["name"]
    if ("ConfigMap", config_map) not in expect.external:
        assert config_path.name in named(objects, "ConfigMap", config_map)["data"], f"{name}: config key missing"
    for volume in volumes.values():
        if "secret" in volume:
            mount = next(m for m in mounts.values() if m["name"] == volume["name"])
            assert mount["readOnly"] is True and mount["mountPath"].startswith(expect.secrets_dir)
            secret = volume["secret"]["secretName"]
            assert ("Secret", secret) in expect.external, f"{name}: mounts Secret {secret} nobody declared"
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            assert ("PersistentVolumeClaim", claim) in expect.external or named(objects, "PersistentVolumeClaim", claim)
    for env in container.get("env", []):
        ref = env["valueFrom"]["secretKeyRef"]
        assert ("Secret", ref["name"]) in expect.external, f"{name}: env from undeclared Secret {ref['name']}"


def check_service(objects: tuple[Obj, ...], deployment: Obj) -> None:
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    services = [s for s in of_kind(objects, "Service") if selects(s["spec"]["selector"], pod_labels)]
    assert len(services) == 1, f"{deployment['metadata']['name']}: {len(services)} Services select its pods"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for port in services[0]["spec"]["ports"]:
        assert port["targetPort"] in ports and port["port"] == ports[port["targetPort"]]


def check_bridge_store(objects: tuple[Obj, ...], bridge: Obj, expect: Expect) -> None:
    spec = bridge["spec"]
    assert spec["replicas"] == expect.bridge_replicas
    pdbs = of_kind(objects, "PodDisruptionBudget")
    mounts = {m["mountPath"] for m in spec["template"]["spec"]["containers"][0]["volumeMounts"]}
    if expect.store == "sqlite":
        assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate", "SQLite: one writer at a time"
        assert "/var/lib/certpager" in mounts, "the SQLite store is on the PVC"
        assert not pdbs
    else:
        assert spec["replicas"] >= 2 and spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        assert "/var/lib/certpager" not in mounts
        (pdb,) = pdbs
        assert selects(pdb["spec"]["selector"]["matchLabels"], spec["template"]["metadata"]["labels"])
        assert 1 <= pdb["spec"]["minAvailable"] < spec["replicas"], "a drain can always evict one replica"
        assert not of_kind(objects, "PersistentVolumeClaim")


def check_network_policies(objects: tuple[Obj, ...], deployments: Mapping[str, Obj], expect: Expect) -> None:
    policies = of_kind(objects, "NetworkPolicy")
    if not expect.network_policies:
        assert not policies
        return
    assert len(policies) == len(deployments)
    for name, deployment in deployments.items():
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        (policy,) = [p for p in policies if selects(p["spec"]["podSelector"]["matchLabels"], pod_labels)]
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        (ingress,) = policy["spec"]["ingress"]
        assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}], f"{name}: only the service port is open"
        if name == "bridge":
            egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
            assert {53, 443} <= egress_ports, "the bridge reaches DNS and HTTPS (PagerDuty, Statuspage)"
            assert (5432 in egress_ports) == (expect.store == "postgresql")


def _exporter_config(objects: tuple[Obj, ...]) -> Obj | None:
    """The exporter's config as rendered (None when it comes from an existing ConfigMap)."""
    for config_map in of_kind(objects, "ConfigMap"):
        if "exporter.yml" in config_map.get("data", {}):
            return dict(yaml.safe_load(config_map["data"]["exporter.yml"]) or {})
    return None


def check_ingress(objects: tuple[Obj, ...], expect: Expect) -> None:
    """Only the PagerDuty webhook path is exposed, to the bridge's Service."""
    ingresses = of_kind(objects, "Ingress")
    assert len(ingresses) == int(expect.ingress)
    for ingress in ingresses:
        service = component(objects, "Service", "bridge")
        assert service is not None
        (rule,) = ingress["spec"]["rules"]
        (path,) = rule["http"]["paths"]
        assert path["path"] == "/api/v1/pagerduty/webhook" and path["pathType"] == "Exact", "one path, no prefix"
        backend = path["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
        assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
        for tls in ingress["spec"].get("tls", []):
            assert tls["hosts"] == [rule["host"]]
            assert ("Secret", tls["secretName"]) in expect.external


def check_monitoring(objects: tuple[Obj, ...], expect: Expect) -> None:
    services = of_kind(objects, "Service")
    monitors = of_kind(objects, "ServiceMonitor")
    wanted = {c for c, on in (("exporter", expect.exporter), ("bridge", expect.bridge)) if on}
    assert len(monitors) == (len(wanted) if expect.service_monitors else 0)
    for monitor in monitors:
        selector = monitor["spec"]["selector"]["matchLabels"]
        (service,) = [s for s in services if selects(selector, s["metadata"]["labels"])]
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["path"] == "/metrics"
    probes = of_kind(objects, "Probe")
    assert len(probes) == expect.probes
    if probes:
        exporter_service = component(objects, "Service", "exporter")
        assert exporter_service is not None
        host, port = probes[0]["spec"]["prober"]["url"].rsplit(":", 1)
        assert host.split(".")[0] == exporter_service["metadata"]["name"]
        assert int(port) == exporter_service["spec"]["ports"][0]["port"]
        exporter_config = _exporter_config(objects)
        guarded = exporter_config is not None and bool((exporter_config.get("web") or {}).get("auth"))
        for probe in probes:
            assert probe["spec"]["prober"]["path"] == "/probe" and probe["spec"]["targets"]["staticConfig"]["static"]
            authorization = probe["spec"].get("authorization")
            assert bool(authorization) == guarded, "Prometheus sends a token exactly when web.auth guards /probe"
            if authorization:
                secret = authorization["credentials"]["name"]
                assert ("Secret", secret) in expect.external, f"Probe authorization from undeclared Secret {secret}"
    rules = of_kind(objects, "PrometheusRule")
    sources = sorted((ROOT / "rules").glob("*.rules.yml"))
    assert len(rules) == (len(sources) if expect.rules else 0), "one PrometheusRule per rules/*.rules.yml"
    if rules:
        groups = [g for path in sources for g in yaml.safe_load(path.read_text())["groups"]]
        rendered = [g for rule in rules for g in rule["spec"]["groups"]]
        assert sorted(rendered, key=str) == sorted(groups, key=str), "the PrometheusRules are rules/*.rules.yml"
    dashboards = [c for c in of_kind(objects, "ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard")]
    json_files = {p.name: p.read_text() for p in (ROOT / "deploy" / "grafana").glob("*.json")}
    if expect.dashboards:
        assert {k: v.strip() for d in dashboards for k, v in d["data"].items()} == {
            k: v.strip() for k, v in json_files.items()
        }
    else:
        assert not dashboards


def _strings(node: Any) -> Iterable[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def with_secret_files(text: str, secrets_dir: str, tmp: Path) -> str:
    """The config with secret paths moved under ``tmp``, each file created with a well-formed value."""
    for path in {s for s in _strings(yaml.safe_load(text)) if s.startswith(secrets_dir)}:
        local = tmp / "secrets" / path.removeprefix(secrets_dir)
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text("a" * 32 + "\n")  # a valid PagerDuty routing key is a valid token too
    return text.replace(secrets_dir, f"{tmp}/secrets/")


def postgres_in_schema() -> bool:
    """Whether the bridge's store schema knows PostgreSQL yet (issue 21's work)."""
    return "url" in Store.model_fields


def check_configs(objects: tuple[Obj, ...], expect: Expect, tmp: Path) -> None:
    """Each rendered config file loads with the service's own loader (what --config.check runs)."""
    for config_map in of_kind(objects, "ConfigMap"):
        for key, text in config_map["data"].items():
            if key not in ("exporter.yml", "bridge.yml"):
                continue
            path = tmp / f"{config_map['metadata']['name']}-{key}"
            path.write_text(with_secret_files(text, expect.secrets_dir, tmp))
            if key == "exporter.yml":
                load_exporter_config(path)
                continue
            if expect.store == "postgresql" and not postgres_in_schema():
                continue  # checked once the bridge has a PostgreSQL store (test_postgres_config_waits_for_schema)
            loaded = load_bridge_config(path, env={"CERTPAGER_STORE_URL": STORE_URL})
            if expect.store == "sqlite":
                assert str(loaded.config.store.path).startswith("/var/lib/certpager/"), "the store is on the PVC"
