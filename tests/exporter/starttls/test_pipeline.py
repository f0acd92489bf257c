"""STARTTLS end to end through the probe registry: get_probe("starttls") with a ProbeRequest, against
the real servers and the fakes, down to the exported chain, trust verdict and failure reasons."""

from __future__ import annotations

import pytest

from exporter.config import Module, StartTLSSettings, TLSSettings
from exporter.probes import get_probe
from exporter.probes.base import Phase, Position, ProbeRequest, ProbeResult, Reason
from tests.exporter.conftest import LEAF_NOT_AFTER, ProbePKI, ts
from tests.exporter.starttls import fakes


def starttls_request(test_pki: ProbePKI, port: int, protocol: str, *, timeout: float = 5.0,
                     **settings: object) -> ProbeRequest:
    module = Module(kind="starttls", starttls=StartTLSSettings(protocol=protocol, **settings),
                    tls=TLSSettings(ca_file=test_pki.ca_file, server_name="localhost"))
    return ProbeRequest(target=f"127.0.0.1:{port}", module=module, timeout=timeout)


def assert_verified_chain(result: ProbeResult) -> None:
    assert (result.success, result.reason, result.ip) == (True, None, "127.0.0.1")
    assert [(c.position, c.subject_cn) for c in result.chain] == [
        (Position.LEAF, "localhost"), (Position.INTERMEDIATE, "certpager Test Intermediate")]
    assert result.chain[0].not_after == ts(LEAF_NOT_AFTER)
    assert (result.chain_verified, result.hostname_verified) == (True, True)
    assert set(result.durations) == {Phase.RESOLVE, Phase.CONNECT, Phase.STARTTLS, Phase.HANDSHAKE}


REAL = [("postgres_ports", 0, "postgres"), ("mariadb_port", None, "mysql"), ("dovecot_ports", "imap", "imap"),
        ("dovecot_ports", "pop3", "pop3"), ("slapd_ports", 0, "ldap")]


@pytest.mark.parametrize(("fixture", "key", "protocol"), REAL)
async def test_real_servers_end_to_end(fixture, key, protocol, request, test_pki):
    ports = request.getfixturevalue(fixture)
    port = ports if key is None else ports[key]
    [result] = await get_probe("starttls")(starttls_request(test_pki, port, protocol))
    assert_verified_chain(result)


async def test_fake_smtp_end_to_end(server_tls, test_pki):
    async with fakes.serve(fakes.smtp("ok", name=b"probe.example"), server_tls) as fake:
        probe_request = starttls_request(test_pki, fake.port, "smtp", hello_name="probe.example")
        [result] = await get_probe("starttls")(probe_request)
    assert_verified_chain(result)
    assert fake.errors == []


async def test_postgres_ssl_off_is_a_refusal(postgres_ports, test_pki):
    [result] = await get_probe("starttls")(starttls_request(test_pki, postgres_ports[1], "postgres"))
    assert (result.success, result.reason, result.detail) == (False, Reason.STARTTLS_REFUSED,
                                                              "server answered N: SSL is off")
    assert result.chain == ()


@pytest.mark.parametrize(("script", "protocol", "reason"), [
    (fakes.xmpp("not_advertised", domain="127.0.0.1"), "xmpp", Reason.STARTTLS_UNSUPPORTED),
    (fakes.smtp("garbage"), "smtp", Reason.STARTTLS_PROTOCOL),
    (fakes.smtp("closes", name=b"[127.0.0.1]"), "smtp", Reason.CONNECTION_CLOSED),
    (fakes.ftp("stall"), "ftp", Reason.STARTTLS_TIMEOUT),
])
async def test_failures_end_to_end(script, protocol, reason, server_tls, test_pki):
    async with fakes.serve(script, server_tls) as fake:
        [result] = await get_probe("starttls")(starttls_request(test_pki, fake.port, protocol, timeout=0.5))
    assert (result.success, result.reason) == (False, reason)
    assert fake.errors == []
