"""deploy/grafana/certificates.json loads and every PromQL expression in it runs against the e2e Prometheus."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.e2e.conftest import Stack
from tests.e2e.harness import ROOT, wait_until

DASHBOARD = ROOT / "deploy" / "grafana" / "certificates.json"
# Template variables as Grafana substitutes them with "All" selected (allValue ".*").
VARIABLES = {"environment": ".*", "service": ".*"}
LABEL_VALUES = re.compile(r"^label_values\((.*),\s*\w+\)$")


def load() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every panel target's expr and the metric selector of every label_values() variable query."""
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = LABEL_VALUES.match(variable["query"]["query"])
            assert match, variable["query"]
            exprs.append(match.group(1))
    return exprs


def substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in expr, expr
    return expr


def test_dashboard_structure() -> None:
    dashboard = load()
    assert dashboard["uid"] == "certpager-certificates"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert set(variables) == {"datasource", *VARIABLES}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) == 11
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])
    titles = {panel["title"]: panel for panel in dashboard["panels"]}
    expiring = titles["Expiring soon (days left, every certificate of every chain)"]
    sort = expiring["transformations"][1]["options"]["sort"]
    assert sort == [{"field": "days left", "desc": False}]


def test_every_expression_runs_against_prometheus(stack: Stack) -> None:
    wait_until("recorded days left", lambda: stack.query("certpager:cert_days_left")["data"]["result"], timeout=20)
    exprs = [substitute(e) for e in expressions(load())]
    assert len(exprs) == 13
    for expr in exprs:
        answer = stack.query(expr)
        assert answer["status"] == "success", (expr, answer)

    table = substitute(next(e for e in expressions(load()) if e.startswith("certpager:cert_days_left{")))
    expected = {  # both jobs and the file target; the self-signed endpoint presents only its leaf
        (e.server.address, position)
        for e in stack.endpoints.values()
        for position in ("leaf", "intermediate")[: 1 + len(e.chain.intermediates)]
    } | {(str(stack.renewed_file), "leaf"), (str(stack.renewed_file), "intermediate")}

    def seen() -> set[tuple[str, str]]:
        rows = stack.query(table)["data"]["result"]
        return {(r["metric"]["target"], r["metric"]["position"]) for r in rows}

    wait_until("every endpoint's chain in the expiring table", lambda: seen() == expected, timeout=20)
