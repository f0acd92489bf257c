"""``certpager demo``: the README's run command, end to end on loopback.

The end-to-end test runs the real command in a subprocess with Prometheus and Alertmanager (skipped, with
the reason, when they are not installed; CI installs them) and follows an expired certificate from its
TLS endpoint to the dry-run PagerDuty event the bridge logs. The in-process test runs without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from bridge.cli import synthetic_payload
from bridge.keys import incident_key
from certpager import demo, demo_alerting

ROOT = Path(__file__).resolve().parents[1]
NAMES = [spec.name for spec in demo.LEAVES]
CHAIN_VERIFIED = {"valid": 1, "expiring-20d": 1, "expiring-5d": 1, "expired": 0, "untrusted": 0, "wrong-hostname": 1}
HOSTNAME_VERIFIED = {"valid": 1, "expiring-20d": 1, "expiring-5d": 1, "expired": 1, "untrusted": 1,
                     "wrong-hostname": 0}
VERIFY_REASONS = {"expired": "expired", "untrusted": "self_signed"}
DAYS_LEFT = {"valid": 400, "expiring-20d": 20, "expiring-5d": 5, "expired": -1, "untrusted": 60, "wrong-hostname": 60}
DRY_RUN_LINE = re.compile(r'msg="dry-run: would send PagerDuty event" .*body=("(?:[^"\\]|\\.)*")')
STATUSPAGE_LINE = re.compile(
    r'msg="dry-run: would send Statuspage request" method=(\w+) path=(\S+) body=("(?:[^"\\]|\\.)*")'
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def leaf_not_after(data_dir: Path, name: str) -> float:
    cert = x509.load_pem_x509_certificate((data_dir / "pki" / f"{name}-leaf.crt").read_bytes())
    return cert.not_valid_after_utc.timestamp()


def exporter_samples(body: str) -> dict[str, dict[tuple[str, str], float]]:
    """service -> {(metric, position-or-reason): value} for the demo's targets."""
    found: dict[str, dict[tuple[str, str], float]] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.labels.get("environment") == "demo":
                detail = s.labels.get("position") or s.labels.get("reason") or ""
                found.setdefault(s.labels["service"], {})[(s.name, detail)] = s.value
    return found


def check_exporter_metrics(samples: dict[str, dict[tuple[str, str], float]], data_dir: Path) -> None:
    assert sorted(samples) == sorted(NAMES)
    now = time.time()
    for name in NAMES:
        got = samples[name]
        assert got[("tls_probe_success", "")] == 1, name
        assert got[("tls_chain_verified", "")] == CHAIN_VERIFIED[name], name
        assert got[("tls_hostname_verified", "")] == HOSTNAME_VERIFIED[name], name
        not_after = got[("tls_cert_not_after_timestamp_seconds", "leaf")]
        assert not_after == leaf_not_after(data_dir, name), name
        assert abs((not_after - now) / 86400 - DAYS_LEFT[name]) < 0.01, name  # generated relative to now
        reasons = {detail for metric, detail in got if metric == "tls_verify_error_info"}
        assert reasons == ({VERIFY_REASONS[name]} if name in VERIFY_REASONS else set()), name


def dry_run_events(log_text: str) -> list[dict]:
    return [json.loads(json.loads(m.group(1))) for m in DRY_RUN_LINE.finditer(log_text)]


def statuspage_requests(log_text: str) -> list[tuple[str, str, dict]]:
    return [(m.group(1), m.group(2), json.loads(json.loads(m.group(3)))) for m in STATUSPAGE_LINE.finditer(log_text)]


def poll(check, *, timeout: float, interval: float = 0.5):
    """Call ``check`` until it returns something truthy or ``timeout`` passes (then return its last answer)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def processes_in_group(pgid: int) -> dict[int, str]:
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            fields = text[text.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                found[int(stat.parent.name)] = text[text.index("(") + 1:text.rindex(")")]
    return found


@pytest.fixture
def demo_process(tmp_path):
    """``certpager demo`` in its own process group; whatever happens, nothing of it outlives the test."""
    ports = {name: free_port() for name in ("exporter", "bridge", "prometheus", "alertmanager")}
    data_dir = tmp_path / "demo-data"
    argv = [sys.executable, "-m", "certpager", "demo", "--data-dir", str(data_dir), "--duration", "85"]
    argv += [f"--{name}-address=127.0.0.1:{port}" for name, port in ports.items()]
    with (tmp_path / "stdout").open("wb") as out, (tmp_path / "stderr").open("wb") as err:
        proc = subprocess.Popen(argv, cwd=tmp_path, stdout=out, stderr=err, start_new_session=True)
    try:
        yield proc, ports, data_dir, tmp_path / "stderr"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # children left behind by a failed test


@pytest.mark.skipif(demo_alerting.find_binaries() is None,
                    reason="prometheus and prometheus-alertmanager are not on PATH (CI installs them)")
@pytest.mark.timeout(110)
def test_demo_alerts_flow_from_endpoint_to_dry_run_pagerduty_event(demo_process):
    proc, ports, data_dir, stderr = demo_process
    started = time.monotonic()
    exporter = f"http://127.0.0.1:{ports['exporter']}/metrics"

    def demo_targets_probed():
        assert proc.poll() is None, stderr.read_text()
        with contextlib.suppress(httpx.HTTPError):
            samples = exporter_samples(httpx.get(exporter, timeout=5).text)
            if all(("tls_probe_success", "") in samples.get(name, {}) for name in NAMES):
                return samples
        return None

    samples = poll(demo_targets_probed, timeout=30)
    assert samples, f"the exporter never showed all demo targets; log:\n{stderr.read_text()}"
    check_exporter_metrics(samples, data_dir)

    expected_key = incident_key("certificate_expired", "expired.certpager.test", "demo")

    def expired_trigger():
        assert proc.poll() is None, stderr.read_text()
        return [e for e in dry_run_events(stderr.read_text()) if e["dedup_key"] == expected_key]

    events = poll(expired_trigger, timeout=85 - (time.monotonic() - started))
    assert events, f"no dry-run event for the expired certificate; log:\n{stderr.read_text()}"
    assert len(events) == 1  # one page, not two
    event = events[0]
    assert event["event_action"] == "trigger"
    assert event["routing_key"] == "<dry-run>"
    assert event["payload"]["severity"] == "critical"
    assert event["payload"]["class"] == "certificate_expired"
    assert event["payload"]["component"] == "expired.certpager.test"
    assert event["payload"]["group"] == "demo"
    expired_at = dt.datetime.fromtimestamp(leaf_not_after(data_dir, "expired"), dt.UTC)
    assert event["payload"]["custom_details"]["expired_date"] == expired_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    # The critical alerts on the status page (dry-run): the expired endpoint's service is a major outage.
    def expired_incident():
        return [body["incident"] for method, path, body in statuspage_requests(stderr.read_text())
                if (method, path) == ("POST", "/v1/pages/demo/incidents")
                and "demoexpired" in body["incident"]["components"]]

    opened = poll(expired_incident, timeout=10)
    assert opened, f"no dry-run Statuspage incident for the expired endpoint; log:\n{stderr.read_text()}"
    assert opened[0]["components"] == {"demoexpired": "major_outage"}
    assert opened[0]["name"] == "Connection problems with expired"
    assert opened[0]["status"] == "investigating"
    # Every URL the banner prints answers on this machine (Debian: /classic/alerts, Alertmanager's API).
    printed = re.findall(r"http://\S+", (data_dir.parent / "stdout").read_text())
    assert len(printed) == 5, printed
    assert {url: httpx.get(url, timeout=5).status_code for url in printed} == dict.fromkeys(printed, 200)
    # And so does every loopback URL of the README's quick start (the demo's default ports, here moved).
    defaults = {"9879": "exporter", "9880": "bridge", "19090": "prometheus", "19093": "alertmanager"}
    readme = re.findall(r"<http://127\.0\.0\.1:(\d+)(/[^>]*)>", (Path(__file__).parents[1] / "README.md").read_text())
    assert len(readme) >= 3
    moved = [f"http://127.0.0.1:{ports[defaults[port]]}{path}" for port, path in readme]
    assert {url: httpx.get(url, timeout=5).status_code for url in moved} == dict.fromkeys(moved, 200)
    bridge = httpx.get(f"http://127.0.0.1:{ports['bridge']}/metrics", timeout=5).text
    assert 'certpager_bridge_incidents_total{class="certificate_expired",environment="demo",severity="critical"} 1.0' \
        in bridge
    assert time.monotonic() - started < 90

    children = processes_in_group(proc.pid)
    children.pop(proc.pid)
    binaries = demo_alerting.find_binaries()
    assert sorted(children.values()) == sorted(Path(b).name[:15] for b in binaries)  # comm is cut at 15 chars
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=25) == 0
    assert processes_in_group(proc.pid) == {}  # Prometheus and Alertmanager were stopped and reaped
    log_text = stderr.read_text()
    assert 'msg="demo stopped"' in log_text
    assert log_text.count('msg="child stopped"') == 2


async def test_demo_in_process_without_prometheus(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    samples: dict = {}
    exporter_port, bridge_port = free_port(), free_port()
    addresses = demo.Addresses(f"127.0.0.1:{exporter_port}", f"127.0.0.1:{bridge_port}", "127.0.0.1:1", "127.0.0.1:1")
    options = demo.Options(tmp_path / "data", addresses, prometheus=False)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("not the demo's")  # the demo only removes its own files
    stop, out = asyncio.Event(), io.StringIO()
    task = asyncio.create_task(demo.run_demo(options, stop=stop, out=out))
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            for _ in range(100):  # up to ~10 s for start-up and the first probes
                await asyncio.sleep(0.1)
                assert not task.done(), task.exception()
                with contextlib.suppress(httpx.HTTPError):
                    samples = exporter_samples((await client.get(f"http://127.0.0.1:{exporter_port}/metrics")).text)
                    if all(("tls_probe_success", "") in samples.get(name, {}) for name in NAMES):
                        break
            check_exporter_metrics(samples, options.data_dir)
            assert f"http://127.0.0.1:{exporter_port}/metrics" in out.getvalue()
            token = (options.data_dir / "bridge.token").read_text().strip()
            payload = synthetic_payload(alert_class="certificate_expired", certificate="example.com",
                                        environment="demo", severity="", resolve=False, now=dt.datetime.now(dt.UTC))
            url = f"http://127.0.0.1:{bridge_port}/api/v1/alerts/alertmanager"
            assert (await client.post(url, json=payload)).status_code == 401
            answer = await client.post(url, json=payload, headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200, answer.text
            for _ in range(50):
                await asyncio.sleep(0.1)
                events = [json.loads(r.kv["body"]) for r in caplog.records if r.name == "bridge.dryrun"]
                if events:
                    break
        assert [e["dedup_key"] for e in events] == [incident_key("certificate_expired", "example.com", "demo")]
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 15) == 0
    assert (tmp_path / "data" / "keep.txt").read_text() == "not the demo's"
    endpoints = [t["target"] for t in demo_alerting.read_yaml(options.data_dir / "exporter.yml")["targets"]]
    assert len(endpoints) == len(NAMES)
    for address in [*endpoints, addresses.exporter, addresses.bridge]:  # every listener is closed
        host, port = address.rsplit(":", 1)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, int(port)), timeout=2).close()


def test_alerting_configs_follow_deploy_with_demo_timings(tmp_path):
    addresses = demo_alerting.Addresses("127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:1003", "127.0.0.1:1004")
    token = tmp_path / "bridge.token"
    prom_file, am_file = demo_alerting.write_alerting_configs(tmp_path, addresses, token)
    prom = demo_alerting.read_yaml(prom_file)
    assert prom["global"]["scrape_interval"] == prom["global"]["evaluation_interval"] == "5s"
    assert {job["job_name"]: job["static_configs"] for job in prom["scrape_configs"]} == {
        "certpager": [{"targets": ["127.0.0.1:1001"]}], "certpager-bridge": [{"targets": ["127.0.0.1:1002"]}]}
    assert prom["alerting"]["alertmanagers"] == [{"static_configs": [{"targets": ["127.0.0.1:1004"]}]}]
    shipped = sorted(p.name for p in (ROOT / "rules").glob("*.rules.yml"))
    assert [Path(p).name for p in prom["rule_files"]] == shipped
    fors = {r["alert"]: r.get("for") for f in prom["rule_files"] for g in demo_alerting.read_yaml(Path(f))["groups"]
            for r in g["rules"] if "alert" in r}
    assert fors and set(fors.values()) <= {"10s", None}  # None: an alert without for: fires at once
    am = demo_alerting.read_yaml(am_file)
    assert am["route"]["group_wait"] == "2s" and am["route"]["group_interval"] == "10s"
    assert {r.get("group_wait") for r in am["route"].get("routes", [])} <= {"2s", None}
    assert not [r["name"] for r in am["receivers"] if "pagerduty_configs" in r]  # nothing leaves loopback
    hooks = [h for r in am["receivers"] for h in r.get("webhook_configs", [])]
    assert hooks and all(h["url"] == "http://127.0.0.1:1002/api/v1/alerts/alertmanager" for h in hooks)
    assert all(h["http_config"]["authorization"]["credentials_file"] == str(token) for h in hooks)


async def test_demo_refuses_a_taken_port_before_touching_the_data_dir(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        addresses = demo.Addresses(f"127.0.0.1:{free_port()}", f"127.0.0.1:{port}", "127.0.0.1:1", "127.0.0.1:1")
        options = demo.Options(tmp_path / "data", addresses, prometheus=False)
        with pytest.raises(demo.DemoError) as caught:
            await demo.run_demo(options, stop=asyncio.Event(), out=io.StringIO())
    assert str(caught.value).startswith(f"the bridge cannot listen on 127.0.0.1:{port}: Address already in use")
    assert "--bridge-address" in str(caught.value)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(("served", "expected"), [
    # Debian 12: the classic pages only, and an Alertmanager "/" that says there is no UI.
    ({"/classic/alerts", "/", "/api/v2/alerts"}, ("/classic/alerts", "/api/v2/alerts")),
    # Upstream builds: the new UI and Alertmanager's own.
    ({"/alerts", "/classic/alerts", "/", "/script.js", "/api/v2/alerts"}, ("/alerts", "/#/alerts")),
])
async def test_the_banner_points_at_the_pages_this_machine_serves(served, expected):
    from aiohttp import web

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="ok") if request.path in served else web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        addresses = demo.Addresses("127.0.0.1:1", "127.0.0.1:1", f"127.0.0.1:{port}", f"127.0.0.1:{port}")
        pages = await demo_alerting.alerting_pages(addresses)
    finally:
        await runner.cleanup()
    base = f"http://127.0.0.1:{port}"
    assert (pages.prometheus, pages.alertmanager) == (base + expected[0], base + expected[1])



def test_duration_takes_the_config_duration_syntax(capsys):
    from certpager import cli

    parse = cli.build_parser("demo").parse_args
    assert [parse(["demo", "--duration", d]).duration for d in ("90", "90s", "2m", "1m30s")] == [90, 90, 120, 90]
    for bad in ("0", "soon", "-5s", ".inf"):
        with pytest.raises(SystemExit) as exit_:
            parse(["demo", f"--duration={bad}"])
        assert exit_.value.code == 2
    assert "argument --duration: expected" in capsys.readouterr().err
