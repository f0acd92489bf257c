"""A failed POST /-/reload is logged, as a failed SIGHUP is, by both services (the reload both paths share)."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from bridge.app import Bridge
from bridge.store.sqlite import SqliteStore
from exporter.app import Exporter
from exporter.web import create_app
from tests.bridge.conftest import RecordingSink
from tests.bridge.test_app import bearer, write_config
from tests.exporter.service_fixtures import FakeProbe, write


def failures(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.message == "config reload failed, keeping the old config"]


@pytest.mark.parametrize(("text", "problem"), [
    ("targets: [{target: a.test}]\n", "targets[0].target: expected host:port"),
    # A file a module reads is checked at reload too: a typo would fail every target's trust verdict.
    ("modules: {m: {tls: {ca_file: /nonexistent/ca.pem}}}\n", "modules.m.tls.ca_file: cannot read /nonexistent"),
])
async def test_exporter_logs_a_failed_post_reload(serve_app, tmp_path, caplog, text, problem):
    config = write(tmp_path / "exporter.yml", "targets: [{target: a.test:443}]\n")
    client = await serve_app(create_app(Exporter(config, probe=FakeProbe()), background=False))
    config.write_text(text)
    assert (await client.post("/-/reload")).status == 500
    [record] = failures(caplog)
    assert record.levelno == logging.ERROR
    assert record.kv["file"] == str(config)  # type: ignore[attr-defined]
    assert f"{config}: {problem}" in record.kv["err"]  # type: ignore[attr-defined]


async def test_bridge_logs_a_failed_post_reload(serve_app, tmp_path, caplog):
    holder = write_config(tmp_path)
    bridge = Bridge(holder, store=SqliteStore(tmp_path / "b.db"), sinks={"pagerduty": RecordingSink()},
                    registry=CollectorRegistry())
    client = await serve_app(bridge.app)
    (tmp_path / "bridge.yml").write_text("server: {nonsense: 1}\n")
    assert (await client.post("/-/reload", headers=bearer())).status == 500
    [record] = failures(caplog)
    assert "server.nonsense: unknown key" in record.kv["err"]  # type: ignore[attr-defined]
