"""deploy/grafana/certpager-bridge.json and rules/certpager-bridge.rules.yml against a real bridge and Prometheus.

A dry-run bridge (no PagerDuty key: its sink logs and accepts) takes one firing webhook; Debian's
Prometheus scrapes it every second with the bridge's SLO rules loaded as shipped (and the lifecycle panels:
pages, time to acknowledge, time to resolve). Every dashboard
expression must run, and the ones about what just happened must show it.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.e2e.harness import ROOT, WEBHOOK_PATH, free_port, http_get, running, wait_until

PROMETHEUS = shutil.which("prometheus")
DASHBOARD = ROOT / "deploy" / "grafana" / "certpager-bridge.json"
RULES = ROOT / "rules" / "certpager-bridge.rules.yml"
FIRING = ROOT / "tests" / "bridge" / "payloads" / "firing.json"

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian package prometheus)")


@dataclass
class BridgeStack:
    bridge: str
    prometheus: str

    def query(self, expr: str) -> dict[str, Any]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as response:
            return dict(json.loads(response.read()))

    def values(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        answer = self.query(expr)
        assert answer["status"] == "success", (expr, answer)
        return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in answer["data"]["result"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeStack]:
    workdir = tmp_path_factory.mktemp("bridge-dashboard")
    bridge_port, prom_port = free_port(), free_port()
    token = secrets.token_hex(16)
    (workdir / "token").write_text(token)
    (workdir / "bridge.yml").write_text(
        f"server:\n  listen_address: 127.0.0.1:{bridge_port}\n  auth:\n    bearer_token_file: token\n"
        f"store:\n  path: {workdir / 'bridge.db'}\n"
    )
    (workdir / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "certpager-bridge",
                            "static_configs": [{"targets": [f"127.0.0.1:{bridge_port}"]}]}],
    }))
    bridge_argv = [sys.executable, "-m", "certpager", "bridge", f"--config.file={workdir / 'bridge.yml'}"]
    with running("bridge", bridge_argv, workdir) as bridge, running("prometheus", [
        str(PROMETHEUS), f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
    ], workdir) as prometheus:
        st = BridgeStack(f"http://127.0.0.1:{bridge_port}", f"http://127.0.0.1:{prom_port}")
        try:
            wait_until("bridge ready", lambda: http_get(f"{st.bridge}/-/ready") is not None, timeout=20)
            wait_until("prometheus ready", lambda: http_get(f"{st.prometheus}/-/ready") is not None, timeout=20)
            # Prometheus sees every series at 0 first, then the webhook and its delivery: rate() > 0.
            wait_until("a scrape of the idle bridge", lambda: st.values('up{job="certpager-bridge"} == 1'),
                       timeout=20)
            request = urllib.request.Request(
                f"{st.bridge}{WEBHOOK_PATH}", data=FIRING.read_bytes(), method="POST",
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as response:
                assert response.status == 200
            yield st
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{bridge.log_tail()}\n{prometheus.log_tail()}") from None


def load() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["query"]["query"].removeprefix("label_values(").rsplit(",", 1)[0])
    return exprs


def test_dashboard_structure() -> None:
    dashboard = load()
    assert dashboard["uid"] == "certpager-bridge"
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "instance"}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) == 15
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])


def test_every_expression_runs_and_shows_the_webhook(stack: BridgeStack) -> None:
    delivered = 'sum by (sink, result) (rate(certpager_bridge_deliveries_total{result="delivered"}[5m])) > 0'
    wait_until("the delivery in a rate", lambda: stack.values(delivered), timeout=30)
    wait_until("the SLO recording rules", lambda: stack.values("certpager_bridge:delivery_errors:ratio_rate5m"),
               timeout=30)
    exprs = [e.replace("$instance", ".*") for e in expressions(load())]
    assert len(exprs) == 20
    results = {expr: stack.values(expr) for expr in exprs}  # values() asserts each answered "success"

    # What the one webhook did, as the panels show it.
    availability = next(v for e, v in results.items() if "webhook_errors:ratio_rate1d" in e)
    assert list(availability.values()) == [1.0]  # no 5xx
    on_time = next(v for e, v in results.items() if "delivery_errors:ratio_rate1d" in e)
    assert list(on_time.values()) == [1.0]  # delivered within 60 s, no dead letter
    deliveries = next(v for e, v in results.items() if "deliveries_total" in e)
    assert deliveries[(("result", "delivered"), ("sink", "pagerduty"))] > 0
    assert deliveries[(("result", "dead_letter"), ("sink", "pagerduty"))] == 0  # exists at 0
    webhooks = next(v for e, v in results.items() if "webhooks_total" in e)
    assert webhooks[(("result", "accepted"),)] > 0
    assert webhooks[(("result", "store_error"),)] == 0
    dead = next(v for e, v in results.items() if "certpager_bridge_dead_letters" in e)
    assert list(dead.values()) == [0.0]
    # The page it made, in or out of working hours (the lifecycle panels answer too, with no ack or resolve yet).
    # (The incidents panel reads the raw counter: a child born at 1 shows no increase() until its next page;
    # pages_total starts at 0 in and off hours, so both series exist.)
    pages = stack.values('sum by (off_hours) (certpager_bridge_pages_total)')
    paged = sum(stack.values("sum(certpager_bridge_incidents_total)").values())
    assert sum(pages.values()) == paged > 0 and {dict(k)["off_hours"] for k in pages} == {"true", "false"}
    # No bridge alert fires for a healthy bridge (the rules are loaded: the recording rules answered).
    assert not stack.values('ALERTS{component="certpager-bridge", alertstate="firing"}')
