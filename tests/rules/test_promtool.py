"""The rules in rules/ pass Debian's ``promtool check rules`` and every ``promtool test rules`` case."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((ROOT / "rules").glob("*.yml"))
CERT_RULES = ROOT / "rules" / "certpager.rules.yml"
BRIDGE_RULES = ROOT / "rules" / "certpager-bridge.rules.yml"
TEST_FILES = sorted((ROOT / "rules" / "tests").glob("*.test.yml"))
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package prometheus; CI installs it)"
)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)


def test_there_are_rules_and_tests() -> None:
    assert [p.name for p in RULE_FILES] == ["certpager-bridge.rules.yml", "certpager.rules.yml"]
    assert len(TEST_FILES) >= 5


def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 17 rules found" in result.stdout  # certpager.rules.yml
    assert "SUCCESS: 21 rules found" in result.stdout  # certpager-bridge.rules.yml


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_promtool_test_rules(test_file: Path) -> None:
    result = _promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout + result.stderr


def test_every_alert_has_a_test_case() -> None:
    import yaml

    alerts = {str(r["alert"]) for f in (CERT_RULES, BRIDGE_RULES) for r in _alert_rules(f)}
    tested = {
        case["alertname"]
        for f in TEST_FILES
        for test in yaml.safe_load(f.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts == tested


def _alert_rules(rules_file: Path = CERT_RULES) -> list[dict[str, object]]:
    import yaml

    rules = yaml.safe_load(rules_file.read_text())
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


def test_every_class_has_a_runbook_section() -> None:
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    headings = {line[3:].strip() for line in runbooks.splitlines() if line.startswith("## ")}
    for rule in _alert_rules():
        labels = rule["labels"]
        assert isinstance(labels, dict)
        assert labels["class"] in headings
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        assert str(annotations["runbook_url"]).endswith(f"#{labels['class']}")


def test_docs_alert_table_matches_the_rules() -> None:
    docs = (ROOT / "docs" / "rules.md").read_text()
    for rule in _alert_rules():
        labels = rule["labels"]
        assert isinstance(labels, dict)
        row = f"| `{rule['alert']}` | `{labels['class']}` | {labels['severity']} | {rule['for']} |"
        assert row in docs


def test_bridge_alerts_go_around_the_bridge_and_have_runbooks() -> None:
    """The bridge's own alerts carry no class (the bridge would take them for a certificate problem) and
    the label the fallback route matches; each runbook_url points at a section of docs/runbooks.md."""
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    headings = {line[3:].strip() for line in runbooks.splitlines() if line.startswith("## ")}
    docs = (ROOT / "docs" / "rules.md").read_text()
    rules = _alert_rules(BRIDGE_RULES)
    assert len(rules) == 7
    for rule in rules:
        labels, annotations = rule["labels"], rule["annotations"]
        assert isinstance(labels, dict) and isinstance(annotations, dict)
        assert "class" not in labels
        assert labels["component"] == "certpager-bridge"
        assert str(annotations["runbook_url"]).rsplit("#", 1)[1] in headings
        assert f"| `{rule['alert']}` | {labels['severity']} | {rule.get('for', '0m')} |" in docs
