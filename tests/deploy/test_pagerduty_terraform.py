"""deploy/pagerduty/main.tf, the PagerDuty worked example, parsed with python-hcl2 (no Terraform here, and no
PagerDuty): its services, escalation levels and priorities against the rules' alert classes, and the Helm
values of docs/deploy-pagerduty.md against the Secret it writes, loaded by the bridge's own loader."""

from __future__ import annotations

import re
from typing import Any

import hcl2
import yaml

from bridge.config import load as load_bridge_config
from bridge.decisions import Policy
from bridge.pagerduty_webhook import HANDLED
from tests.deploy.k8s import ROOT, SECRETS_DIR, with_secret_files

MAIN = ROOT / "deploy" / "pagerduty" / "main.tf"
DOC = ROOT / "docs" / "deploy-pagerduty.md"


def _plain(node: Any) -> Any:
    """python-hcl2's output without its quoting of strings and keys, and without block markers."""
    if isinstance(node, dict):
        return {_plain(k): _plain(v) for k, v in node.items() if k not in ("__is_block__", "__comments__")}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, str) and len(node) >= 2 and node[0] == node[-1] == '"':
        return node[1:-1]
    return node


TF = _plain(hcl2.loads(MAIN.read_text()))
LOCALS = {k: v for block in TF["locals"] for k, v in block.items()}


def resources(kind: str) -> dict[str, dict[str, Any]]:
    return {name: body for block in TF["resource"] for k, named in block.items() if k == kind
            for name, body in named.items()}


def _one(value: Any) -> Any:
    """A nested block is a list of one in python-hcl2's output."""
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def test_four_services_under_one_business_service():
    services = LOCALS["services"]
    assert {s["name"].split(": ", 1)[1] for s in services.values()} == {
        "Production", "Staging", "Internal PKI", "Code Signing"
    }
    (service,) = resources("pagerduty_service").values()
    assert service["for_each"] == "${local.services}"
    assert service["escalation_policy"] == "${pagerduty_escalation_policy.certificates.id}"
    assert service["auto_resolve_timeout"] == "null", "the bridge resolves; PagerDuty must not"
    (business,) = resources("pagerduty_business_service").values()
    assert business["name"] == "Certificate Management"
    (dependency,) = resources("pagerduty_service_dependency").values()
    assert dependency["for_each"] == "${pagerduty_service.certificates}"
    (integration,) = resources("pagerduty_service_integration").values()
    assert integration["type"] == "events_api_v2_inbound_integration"
    assert integration["for_each"] == "${pagerduty_service.certificates}"


def test_webhook_subscription_covers_every_event_the_ack_sync_handles():
    (subscription,) = resources("pagerduty_webhook_subscription").values()
    assert set(subscription["events"]) == set(HANDLED)
    assert _one(subscription["delivery_method"])["url"] == "${var.bridge_webhook_url}"
    assert _one(subscription["filter"]) == {"type": "service_reference", "id": "${each.value.id}"}


def test_escalation_levels_start_at_0_15_30_60_minutes():
    (policy,) = resources("pagerduty_escalation_policy").values()
    rules = policy["rule"]
    delays = [int(r["escalation_delay_in_minutes"]) for r in rules]
    starts = [sum(delays[:i]) for i in range(len(rules))]
    assert starts == [0, 15, 30, 60]
    targets = [_one(r["target"])["id"] for r in rules]
    assert targets == [
        "${pagerduty_schedule.primary.id}", "${pagerduty_schedule.secondary.id}",
        "${data.pagerduty_user.team_lead.id}", "${data.pagerduty_user.head_of_infrastructure.id}",
    ]


def test_every_alert_class_has_one_priority():
    rule_classes = set(re.findall(r"^\s+class: (\w+)$", (ROOT / "rules" / "certpager.rules.yml").read_text(),
                                  flags=re.MULTILINE))
    priorities: dict[str, list[str]] = LOCALS["class_priorities"]
    mapped = [c for classes in priorities.values() for c in classes]
    assert sorted(mapped) == sorted(rule_classes), "each class of the rules in exactly one priority"
    (orchestration,) = resources("pagerduty_event_orchestration_service").values()
    rules = _one(orchestration["set"])["rule"]
    for rule, priority in zip(rules, ("P1", "P2", "P3"), strict=True):
        condition = _one(rule["dynamic"])["condition"]
        assert condition["for_each"] == f'${{local.class_priorities["{priority}"]}}'
        assert _one(rule["actions"])["priority"] == f"${{data.pagerduty_priority.{priority.lower()}.id}}"


def test_bridge_values_read_exactly_the_secret_the_terraform_writes(tmp_path):
    (block,) = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    values = yaml.safe_load(block)
    secret = LOCALS["secret_name"]
    assert values["bridge"]["secretMounts"] == [secret]
    (k8s_secret,) = resources("kubernetes_secret").values()
    assert _one(k8s_secret["metadata"])["name"] == "${local.secret_name}"
    # One key per integration, named after the environment (the service map's key).
    assert k8s_secret["data"] == (
        '${{for environment, integration in pagerduty_service_integration.certpager : '
        '"routing-key-${environment}" => integration.integration_key}}'
    )
    (output,) = [o["routing_key_files"] for o in TF["output"] if "routing_key_files" in o]
    assert f'"{SECRETS_DIR}${{local.secret_name}}/routing-key-${{environment}}"' in output["value"]
    config = values["bridge"]["config"]
    files = config["integrations"]["pagerduty"]["routing_key_files"]
    assert set(files) == set(LOCALS["services"]), "one routing key per PagerDuty service"
    assert files == {env: f"{SECRETS_DIR}{secret}/routing-key-{env}" for env in LOCALS["services"]}
    path = tmp_path / "bridge.yml"
    path.write_text(with_secret_files(yaml.safe_dump(config), SECRETS_DIR, tmp_path))
    loaded = load_bridge_config(path, env={})
    assert set(loaded.secrets.routing_keys) == set(LOCALS["services"])
    # The severity each class's events carry with this config: the rules' severity label, unless mapped.
    policy = Policy.from_config(loaded.config)
    rules = yaml.safe_load((ROOT / "rules" / "certpager.rules.yml").read_text())
    labels = [r["labels"] for g in rules["groups"] for r in g["rules"] if "alert" in r and "class" in r["labels"]]
    severities = {lab["class"]: policy.severity_for(lab["class"], lab).value for lab in labels}
    priorities: dict[str, list[str]] = LOCALS["class_priorities"]
    assert {severities[c] for c in priorities["P1"]} == {"critical"}, "P1 classes page at once"
    assert {severities[c] for c in priorities["P3"]} == {"warning"}, "P3 classes wait (low urgency)"
