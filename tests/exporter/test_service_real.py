"""The exporter service with the real probe engine against loopback TLS servers (/probe and /metrics)."""

from __future__ import annotations

import asyncio

from certpager.tlsserver import TLSServer
from exporter.app import Exporter
from exporter.web import create_app
from tests.exporter.service_fixtures import sample_map, value, write


def config_text(test_pki, targets: str) -> str:
    return (
        "global: {scrape_interval: 1h, jitter: 0}\n"
        f"modules:\n  trusting: {{timeout: 5s, tls: {{ca_file: {test_pki.ca_file}, server_name: localhost}}}}\n"
        f"targets:\n{targets}"
    )


async def test_probe_endpoint_against_real_tls_server(serve_app, tmp_path, test_pki):
    chain = test_pki.chains["valid"]
    files = test_pki.files["valid"]
    async with TLSServer(files.cert_file, files.key_file) as server:
        path = write(tmp_path / "c.yml", config_text(test_pki, f"  - target: {server.address}\n"
                                                               "    labels: {env: prod}\n"))
        client = await serve_app(create_app(Exporter(path), background=False))
        response = await client.get("/probe", params={"target": server.address, "module": "trusting"},
                                    headers={"X-Prometheus-Scrape-Timeout-Seconds": "5"})
        assert response.status == 200
        s = sample_map(await response.text())
    base = {"target": server.address, "env": "prod"}
    leaf, inter = chain.leaf.cert, chain.intermediates[0].cert
    assert value(s, "tls_probe_success", **base) == 1
    assert value(s, "tls_probe_error_info") is None
    assert value(s, "tls_cert_not_after_timestamp_seconds", **base, position="leaf", index="0",
                 subject_cn="localhost", serial=format(leaf.serial_number, "x")) == chain.leaf.not_after
    assert value(s, "tls_cert_not_before_timestamp_seconds", position="leaf") == chain.leaf.not_before
    assert value(s, "tls_cert_not_after_timestamp_seconds", position="intermediate", index="1",
                 subject_cn="certpager Test Intermediate", issuer_cn="certpager Test Root",
                 serial=format(inter.serial_number, "x")) == chain.intermediates[0].not_after
    assert value(s, "tls_chain_earliest_expiry_timestamp_seconds", **base) == min(
        chain.leaf.not_after, chain.intermediates[0].not_after)
    assert value(s, "tls_chain_verified", **base) == 1
    assert value(s, "tls_hostname_verified", **base) == 1
    assert value(s, "tls_connection_info", version="TLS 1.3") == 1
    assert value(s, "tls_cert_info", position="leaf", sans="localhost,127.0.0.1,::1") == 1
    assert value(s, "tls_probe_duration_seconds", phase="handshake") > 0


async def test_background_metrics_from_real_servers_and_refused_port(serve_app, tmp_path, test_pki):
    good, expired = test_pki.files["valid"], test_pki.files["expired"]
    async with TLSServer(good.cert_file, good.key_file) as ok_server, \
            TLSServer(expired.cert_file, expired.key_file) as expired_server:
        targets = (f"  - {{target: '{ok_server.address}', module: trusting}}\n"
                   f"  - {{target: '{expired_server.address}', module: trusting, labels: {{env: old}}}}\n"
                   "  - {target: '127.0.0.1:1', module: trusting}\n")
        client = await serve_app(create_app(Exporter(write(tmp_path / "c.yml", config_text(test_pki, targets)))))
        for _ in range(100):  # bounded: 10 s for three loopback probes
            s = sample_map(await (await client.get("/metrics")).text())
            if value(s, "certpager_exporter_probes_total", module="trusting", result="failure") == 1 and value(
                    s, "certpager_exporter_probes_total", module="trusting", result="success") == 2:
                break
            await asyncio.sleep(0.1)
    assert value(s, "tls_probe_success", target=ok_server.address) == 1
    assert value(s, "tls_chain_verified", target=ok_server.address) == 1
    assert value(s, "tls_probe_success", target=expired_server.address, env="old") == 1
    assert value(s, "tls_chain_verified", target=expired_server.address) == 0
    assert value(s, "tls_verify_error_info", target=expired_server.address, reason="expired") == 1
    assert value(s, "tls_cert_not_after_timestamp_seconds", target=expired_server.address,
                 position="leaf") == test_pki.chains["expired"].leaf.not_after
    assert value(s, "tls_probe_success", target="127.0.0.1:1") == 0
    assert value(s, "tls_probe_error_info", target="127.0.0.1:1", reason="refused") == 1
    assert value(s, "certpager_exporter_targets") == 3
