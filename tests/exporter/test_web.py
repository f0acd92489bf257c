"""The exporter's HTTP app with a fake probe in virtual time: /metrics, /probe, reload, file_sd."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import random
import re
import signal
import sys

import aiohttp
import pytest

from certpager.errors import ConfigError
from exporter.app import Exporter
from exporter.probes.base import Reason
from exporter.web import create_app
from tests.exporter.service_fixtures import (
    NOT_AFTER,
    FakeClock,
    FakeProbe,
    failed_result,
    ok_result,
    sample_map,
    value,
    write,
)

WALL = 1_750_000_000.0

CONFIG = """
global: {scrape_interval: 60s, jitter: 0, retry_backoff: 10s}
modules:
  quick: {timeout: 4s}
  files: {kind: file}
targets:
  - target: a.test:443
    labels: {env: prod, service: shop}
  - target: b.test:443
    module: quick
    thresholds: {certificate_expiring_7_days: 10d}
"""


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def probe(clock):
    return FakeProbe(clock=clock, answers={"b.test:443": [failed_result(Reason.REFUSED)]})


@pytest.fixture
def config_path(tmp_path):
    return write(tmp_path / "exporter.yml", CONFIG)


@pytest.fixture
def exporter(config_path, probe, clock):
    return Exporter(config_path, probe=probe, clock=clock, wall_clock=lambda: WALL, sleep=clock.sleep,
                    rng=random.Random(7))


@pytest.fixture
async def client(serve_app, exporter):
    return await serve_app(create_app(exporter))


async def scrape(client):
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return sample_map(await response.text())


async def test_metrics_serves_cached_results_and_self_metrics(client, clock, probe):
    await clock.advance(1)
    s = await scrape(client)
    calls = len(probe.calls)
    assert calls == 2
    assert value(s, "tls_probe_success", target="a.test:443", env="prod", service="shop") == 1
    assert value(s, "tls_cert_not_after_timestamp_seconds", target="a.test:443", index="0") == NOT_AFTER
    assert value(s, "tls_probe_success", target="b.test:443") == 0
    assert value(s, "tls_probe_error_info", target="b.test:443", reason="refused") == 1
    assert value(s, "tls_cert_expiry_threshold_seconds", target="b.test:443",
                 **{"class": "certificate_expiring_7_days"}) == 864000
    assert value(s, "certpager_exporter_targets") == 2
    assert value(s, "certpager_exporter_probes_in_flight") == 0
    assert value(s, "certpager_exporter_probe_admission_limit") == 18  # 16, then one per prompt finish
    assert value(s, "certpager_exporter_probes_total", module="tls", result="success") == 1
    assert value(s, "certpager_exporter_probes_total", module="quick", result="failure") == 1
    assert value(s, "certpager_exporter_probe_duration_seconds_count", module="tls") == 1
    assert value(s, "certpager_exporter_config_last_reload_successful") == 1
    assert value(s, "certpager_exporter_config_last_reload_success_timestamp_seconds") == WALL
    assert value(s, "certpager_exporter_build_info") == 1
    await scrape(client)
    assert len(probe.calls) == calls  # scraping never probes


async def test_reload_good_config_drops_removed_targets(client, clock, config_path):
    await clock.advance(1)
    config_path.write_text("targets:\n  - target: c.test:443\n    labels: {env: dev}\n")
    response = await client.post("/-/reload")
    assert response.status == 200
    s = await scrape(client)
    assert value(s, "tls_probe_success", target="a.test:443") is None
    assert value(s, "tls_probe_success", target="b.test:443") is None
    assert value(s, "certpager_exporter_targets") == 1
    await clock.advance(31)  # default interval 300 s x jitter 0.1
    s = await scrape(client)
    assert value(s, "tls_probe_success", target="c.test:443", env="dev") == 1
    assert value(s, "certpager_exporter_config_last_reload_successful") == 1


async def test_reload_bad_config_keeps_old_one_and_sets_gauge_to_zero(client, clock, config_path):
    await clock.advance(1)
    config_path.write_text("targets:\n  - target: c.test\n")
    response = await client.post("/-/reload")
    assert response.status == 500
    body = await response.text()
    assert f"{config_path}: targets[0].target: expected host:port" in body
    s = await scrape(client)
    assert value(s, "certpager_exporter_config_last_reload_successful") == 0
    assert value(s, "certpager_exporter_config_last_reload_success_timestamp_seconds") == WALL
    assert value(s, "tls_probe_success", target="a.test:443") == 1
    assert value(s, "certpager_exporter_targets") == 2
    config_path.write_text(CONFIG)
    assert (await client.post("/-/reload")).status == 200
    assert value(await scrape(client), "certpager_exporter_config_last_reload_successful") == 1


async def test_reload_reports_success_only_once_the_new_targets_are_in_place(exporter, config_path):
    # A scrape between loading the file and applying it saw "reloaded" next to the old targets.
    seen = []
    set_targets = exporter.scheduler.set_targets

    def reload_ok():
        return exporter.metrics.registry.get_sample_value("certpager_exporter_config_last_reload_successful")

    def spy(targets):
        seen.append(reload_ok())
        set_targets(targets)

    exporter.scheduler.set_targets = spy
    config_path.write_text("targets:\n  - target: c.test\n")
    with pytest.raises(ConfigError):
        await exporter.reload()
    assert reload_ok() == 0.0
    config_path.write_text("targets:\n  - target: c.test:443\n")
    await exporter.reload()
    assert seen == [0.0]  # still the failed reload's 0 while the targets change
    assert reload_ok() == 1.0
    assert len(exporter.scheduler) == 1


async def test_file_sd_changes_are_picked_up_without_restart(client, clock, config_path, tmp_path):
    config_path.write_text("global: {jitter: 0}\ntarget_files:\n  - files: [sd/*.json]\n    refresh_interval: 5s\n")
    assert (await client.post("/-/reload")).status == 200
    sd = write(tmp_path / "sd" / "a.json", json.dumps([{"targets": ["x.test:443"], "labels": {"team": "a"}}]))
    await clock.advance(6)
    s = await scrape(client)
    assert value(s, "tls_probe_success", target="x.test:443", team="a") == 1
    assert value(s, "certpager_exporter_target_file_valid", file=str(sd)) == 1
    sd.write_text("[{")
    await clock.advance(6)
    s = await scrape(client)
    assert value(s, "tls_probe_success", target="x.test:443", team="a") == 1  # last good content kept
    assert value(s, "certpager_exporter_target_file_valid", file=str(sd)) == 0
    assert value(s, "certpager_exporter_target_file_errors_total") == 1
    sd.unlink()
    await clock.advance(6)
    s = await scrape(client)
    assert value(s, "tls_probe_success", target="x.test:443") is None
    assert value(s, "certpager_exporter_target_file_valid", file=str(sd)) is None
    assert value(s, "certpager_exporter_targets") == 0


async def test_probe_on_demand_applies_configured_labels_and_module_timeout(client, probe):
    response = await client.get("/probe", params={"target": "a.test:443", "module": "quick"})
    assert response.status == 200
    s = sample_map(await response.text())
    assert value(s, "tls_probe_success", target="a.test:443", env="prod", service="shop") == 1
    assert value(s, "tls_cert_not_after_timestamp_seconds", index="2") == NOT_AFTER + 2000
    assert not any(name.startswith("certpager_") for name, _ in s)
    assert probe.requests[-1].timeout == 4.0
    assert probe.requests[-1].module.timeout == 4.0


@pytest.mark.parametrize(("header", "expected"), [("10", 4.0), ("3", 2.5), ("0.4", 0.2), (None, 10.0)])
async def test_probe_timeout_honours_scrape_timeout_header(client, probe, header, expected):
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": header} if header else {}
    module = "quick" if header == "10" else "tls"
    response = await client.get("/probe", params={"target": "new.test:443", "module": module}, headers=headers)
    assert response.status == 200
    assert probe.requests[-1].timeout == pytest.approx(expected)


@pytest.mark.parametrize(("params", "headers", "reason"), [
    ({}, {}, "missing parameter: target"),
    ({"target": "a.test:443", "module": "nope"}, {}, "unknown module 'nope'"),
    ({"target": "a.test"}, {}, "bad target: expected host:port or [ipv6]:port, got 'a.test'"),
    # A CR/LF would reach a proxy's CONNECT line; a non-ASCII digit is a digit to str.isdigit, not to int().
    ({"target": "a.test\r\n\r\nGET /admin HTTP/1.1\r\nHost: b.test:443"}, {},
     "bad target: spaces and control characters are not allowed, got "
     "'a.test\\r\\n\\r\\nGET /admin HTTP/1.1\\r\\nHost: b.test:443'"),
    ({"target": "proxy.test\n:443"}, {}, "bad target: spaces and control characters are not allowed, got "
     "'proxy.test\\n:443'"),
    ({"target": "127.0.0.1:\u00b2"}, {}, "bad target: expected host:port or [ipv6]:port, got '127.0.0.1:\u00b2'"),
    ({"target": "127.0.0.1:\uff11"}, {}, "bad target: expected host:port or [ipv6]:port, got '127.0.0.1:\uff11'"),
    ({"target": "/etc/shadow", "module": "files"}, {},
     "module 'files' reads files: only configured targets can be probed"),
    ({"target": "a.test:443"}, {"X-Prometheus-Scrape-Timeout-Seconds": "soon"},
     "X-Prometheus-Scrape-Timeout-Seconds: expected seconds, got 'soon'"),
    ({"target": "a.test:443"}, {"X-Prometheus-Scrape-Timeout-Seconds": "-1"},
     "X-Prometheus-Scrape-Timeout-Seconds: expected a positive number, got '-1'"),
])
async def test_probe_bad_requests_are_400_with_reason(client, params, headers, reason):
    response = await client.get("/probe", params=params, headers=headers)
    assert response.status == 400
    assert (await response.text()).strip() == reason


async def test_probe_failure_is_a_result_not_an_error(client):
    response = await client.get("/probe", params={"target": "b.test:443"})
    assert response.status == 200
    s = sample_map(await response.text())
    assert value(s, "tls_probe_success", target="b.test:443") == 0
    assert value(s, "tls_probe_error_info", reason="refused") == 1


async def test_lifecycle_and_landing(client):
    assert (await client.get("/-/healthy")).status == 200
    assert (await client.get("/-/ready")).status == 200
    page = await client.get("/")
    text = await page.text()
    assert page.status == 200 and 'href="/metrics"' in text and "2 targets" in text and "<li>quick</li>" in text


async def test_probe_uses_scheduler_guard_for_raising_probe(serve_app, config_path, clock):
    async def broken(request):
        raise RuntimeError("bug")

    exporter = Exporter(config_path, probe=broken, clock=clock, wall_clock=lambda: WALL, sleep=clock.sleep)
    client = await serve_app(create_app(exporter, background=False))
    response = await client.get("/probe", params={"target": "a.test:443"})
    s = sample_map(await response.text())
    assert value(s, "tls_probe_error_info", reason="internal") == 1


def test_bad_initial_config_raises_config_error(tmp_path):

    path = write(tmp_path / "bad.yml", "targets: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yml: targets: Input should be a valid list"):
        Exporter(path, probe=FakeProbe())


async def test_last_good_chain_survives_outage_in_metrics(client, clock, probe):
    await clock.advance(1)
    probe.answers["a.test:443"] = [failed_result(Reason.CONNECT_TIMEOUT)]
    await clock.advance(61)
    s = await scrape(client)
    assert value(s, "tls_probe_success", target="a.test:443") == 0
    assert value(s, "tls_probe_error_info", target="a.test:443", reason="connect_timeout") == 1
    assert value(s, "tls_cert_not_after_timestamp_seconds", target="a.test:443", index="0") == NOT_AFTER
    probe.answers["a.test:443"] = [ok_result(chain=())]
    await clock.advance(11)
    s = await scrape(client)
    assert value(s, "tls_probe_success", target="a.test:443") == 1
    assert value(s, "tls_cert_not_after_timestamp_seconds", target="a.test:443") is None


# --- a real `certpager exporter` process: SIGHUP reload -------------------------------------------

SUBPROCESS_CONFIG = """
global: {scrape_interval: 1h, jitter: 0}
targets:
  - target: 127.0.0.1:1
    labels: {env: prod}
"""


@contextlib.asynccontextmanager
async def exporter_process(config_file):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter", "--config.file", str(config_file), "--web.listen-address", "127.0.0.1:0",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    lines: list[str] = []
    drain = None
    try:
        port = await asyncio.wait_for(_listening_port(proc, lines), 20)
        drain = asyncio.create_task(_drain(proc, lines))
        yield proc, port, lines
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if drain is not None:
            drain.cancel()


async def _listening_port(proc, lines):
    for _ in range(200):
        line = (await proc.stderr.readline()).decode()
        if not line:
            raise AssertionError("exporter exited: " + "".join(lines))
        lines.append(line)
        match = re.search(r"address=127\.0\.0\.1:(\d+)", line)
        if match:
            return int(match.group(1))
    raise AssertionError("no listening line: " + "".join(lines))


async def _drain(proc, lines):
    while line := await proc.stderr.readline():
        lines.append(line.decode())


async def _gauge(session, port, name):
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        return value(sample_map(await response.text()), name)


async def _wait_gauge(session, port, name, expected):
    for _ in range(100):  # bounded: 10 s
        if await _gauge(session, port, name) == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} never became {expected}")


async def test_sighup_reload_on_a_real_process(tmp_path):
    config = write(tmp_path / "exporter.yml", SUBPROCESS_CONFIG)
    async with exporter_process(config) as (proc, port, lines), aiohttp.ClientSession() as session:
        assert await _gauge(session, port, "certpager_exporter_config_last_reload_successful") == 1
        assert await _gauge(session, port, "certpager_exporter_targets") == 1
        config.write_text("targets: [{target: nope}]\n")
        proc.send_signal(signal.SIGHUP)
        await _wait_gauge(session, port, "certpager_exporter_config_last_reload_successful", 0)
        assert await _gauge(session, port, "certpager_exporter_targets") == 1
        config.write_text(SUBPROCESS_CONFIG + "  - target: 127.0.0.1:2\n")
        proc.send_signal(signal.SIGHUP)
        await _wait_gauge(session, port, "certpager_exporter_config_last_reload_successful", 1)
        assert await _gauge(session, port, "certpager_exporter_targets") == 2
        async with session.post(f"http://127.0.0.1:{port}/-/reload") as response:
            assert response.status == 200
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert any("reload on SIGHUP failed" in line and "targets[0].target" in line for line in lines)


async def test_probe_file_module_reads_only_configured_targets(serve_app, tmp_path, clock):
    path = write(tmp_path / "c.yml", "modules: {files: {kind: file}}\n"
                                     "targets: [{target: /etc/certpager/*.pem, module: files}]\n")
    probe = FakeProbe(clock=clock)
    exporter = Exporter(path, probe=probe, clock=clock, wall_clock=lambda: WALL, sleep=clock.sleep)
    client = await serve_app(create_app(exporter, background=False))
    response = await client.get("/probe", params={"target": "/etc/certpager/*.pem", "module": "files"})
    assert response.status == 200
    assert [r.target for r in probe.requests] == ["/etc/certpager/*.pem"]


async def test_landing_page_counts_in_words(serve_app, tmp_path):
    config = write(tmp_path / "one.yml", "targets: [{target: a.test:443}]\n")
    client = await serve_app(create_app(Exporter(config, probe=FakeProbe()), background=False))
    assert "<p>1 target; modules:" in await (await client.get("/")).text()


GUARDED = CONFIG + """
probe:
  allowed_targets: [127.0.0.0/8, "::1/128", "*.allowed.test"]
  max_concurrent: 2
web:
  auth:
    bearer_token_file: token
    basic_auth: {username: prometheus, password_file: password}
"""
BEARER = {"Authorization": "Bearer s3cret-token"}


@pytest.fixture
async def guarded(serve_app, tmp_path, clock):
    write(tmp_path / "token", "s3cret-token\n")
    write(tmp_path / "password", "pa55\n")
    probe = FakeProbe(clock=clock)
    exporter = Exporter(write(tmp_path / "guarded.yml", GUARDED), probe=probe, clock=clock,
                        wall_clock=lambda: WALL, sleep=clock.sleep, rng=random.Random(7))
    return exporter, probe, await serve_app(create_app(exporter, background=False))


async def refusals(client):
    s = await scrape(client)
    return {reason: value(s, "certpager_exporter_probe_requests_refused_total", reason=reason)
            for reason in ("unauthorized", "not_allowed", "concurrency")}


async def test_web_auth_guards_probe_and_reload_only(guarded):
    _, _, client = guarded
    params = {"target": "127.0.0.1:443"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic cHJvbWV0aGV1czp3cm9uZw=="}):
        denied = await client.get("/probe", params=params, headers=headers)
        assert denied.status == 401
        assert denied.headers.getall("WWW-Authenticate") == ['Bearer realm="certpager"', 'Basic realm="certpager"']
        assert (await client.post("/-/reload", headers=headers)).status == 401
    assert (await client.get("/probe", params=params, headers=BEARER)).status == 200
    basic = {"Authorization": "Basic " + base64.b64encode(b"prometheus:pa55").decode()}
    assert (await client.get("/probe", params=params, headers=basic)).status == 200
    assert (await client.post("/-/reload", headers=basic)).status == 200
    for open_path in ("/metrics", "/-/healthy", "/-/ready", "/"):
        assert (await client.get(open_path)).status == 200
    assert (await refusals(client))["unauthorized"] == 3


@pytest.mark.parametrize(("target", "status"), [
    ("127.0.0.2:443", 200), ("[::1]:443", 200), ("www.allowed.test:443", 200), ("A.B.ALLOWED.TEST.:8443", 200),
    ("a.test:443", 200),  # configured: always allowed
    ("10.0.0.1:443", 403), ("[::ffff:10.0.0.1]:443", 403), ("allowed.test:443", 403), ("evil.test:443", 403),
    ("allowed.test.evil.test:443", 403),
])
async def test_probe_allowed_targets(guarded, target, status):
    _, probe, client = guarded
    response = await client.get("/probe", params={"target": target}, headers=BEARER)
    assert response.status == status
    if status == 403:
        assert await response.text() == f"target {target!r} is not allowed by probe.allowed_targets\n"
        assert not [r for r in probe.requests if r.target == target]  # never connected
        assert (await refusals(client))["not_allowed"] == 1


async def test_probe_concurrency_cap_answers_503_and_counts(guarded):
    _, probe, client = guarded
    probe.gate = asyncio.Event()
    running = [asyncio.create_task(client.get("/probe", params={"target": f"127.0.0.{i}:443"}, headers=BEARER))
               for i in (1, 2)]
    while probe.running < 2:
        await asyncio.sleep(0.01)
    refused = await client.get("/probe", params={"target": "127.0.0.3:443"}, headers=BEARER)
    assert refused.status == 503 and refused.headers["Retry-After"] == "1"
    assert await refused.text() == "2 probes are running already (probe.max_concurrent); retry later\n"
    probe.gate.set()
    assert [(await r).status for r in running] == [200, 200]
    assert (await client.get("/probe", params={"target": "127.0.0.3:443"}, headers=BEARER)).status == 200
    assert (await refusals(client)) == {"unauthorized": 0, "not_allowed": 0, "concurrency": 1}


@pytest.mark.parametrize(("extra", "files", "message"), [
    ("probe: {allowed_targets: [10.0.0.1/8]}", {},
     r"probe.allowed_targets\[0\]: '10.0.0.1/8' is not a CIDR.*host bits set"),
    ("probe: {allowed_targets: ['*.ok.test', 'bad host']}", {},
     r"probe.allowed_targets\[1\]: 'bad host' is neither a CIDR"),
    ("web: {auth: {bearer_token_file: missing}}", {}, r"web.auth.bearer_token_file: cannot read secret file"),
    ("web: {auth: {basic_auth: {username: 'a:b', password_file: p}}}", {"p": "x"},
     r"web.auth.basic_auth.username: .*no ':'"),
])
def test_bad_probe_and_web_settings_are_config_errors(tmp_path, extra, files, message):
    for name, content in files.items():
        write(tmp_path / name, content)
    with pytest.raises(ConfigError, match=message):
        Exporter(write(tmp_path / "x.yml", CONFIG + extra + "\n"), probe=FakeProbe())


async def test_a_reload_reads_the_token_file_again(guarded, tmp_path):
    exporter, _, client = guarded
    write(tmp_path / "token", "rotated\n")
    assert (await client.post("/-/reload", headers=BEARER)).status == 200
    assert (await client.get("/probe", params={"target": "127.0.0.1:443"}, headers=BEARER)).status == 401
    rotated = {"Authorization": "Bearer rotated"}
    assert (await client.get("/probe", params={"target": "127.0.0.1:443"}, headers=rotated)).status == 200
    (tmp_path / "token").unlink()
    failed = await client.post("/-/reload", headers=rotated)
    assert failed.status == 500 and "web.auth.bearer_token_file" in await failed.text()
    assert exporter.access.credentials.accepts("Bearer rotated")  # the old config and its token stay


def test_config_check_reads_the_web_auth_files(tmp_path):
    from exporter.cli import check_config

    path = write(tmp_path / "x.yml", CONFIG + "web: {auth: {bearer_token_file: token}}\n")
    out, err = io.StringIO(), io.StringIO()
    assert check_config(path, out, err) == 1
    assert "web.auth.bearer_token_file: cannot read secret file" in err.getvalue()
    write(tmp_path / "token", "t\n")
    assert check_config(path, out, io.StringIO()) == 0
