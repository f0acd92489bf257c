"""STARTTLS against real Debian servers started by the tests: PostgreSQL, MariaDB, Dovecot, slapd.

Each happy path ends with a verified TLS handshake on the same connection and the leaf the server
was configured with; the refusal paths are the servers' own answers when TLS is switched off.
"""

from __future__ import annotations

import pytest
from cryptography import x509

from exporter.probes.base import Reason
from exporter.probes.starttls.base import StartTLSError
from tests.exporter.conftest import LEAF_NOT_AFTER


def assert_test_leaf(leaf: x509.Certificate) -> None:
    assert leaf.subject.rfc4514_string() == "CN=localhost,O=certpager test"
    assert leaf.not_valid_after_utc == LEAF_NOT_AFTER


async def test_postgres_sslrequest(postgres_ports, dialogue):
    assert_test_leaf(await dialogue(postgres_ports[0], "postgres"))


async def test_postgres_with_ssl_off_answers_n(postgres_ports, dialogue):
    with pytest.raises(StartTLSError) as info:
        await dialogue(postgres_ports[1], "postgres")
    assert (info.value.reason, info.value.detail) == (Reason.STARTTLS_REFUSED, "server answered N: SSL is off")


async def test_postgres_15_rejects_direct_tls(postgres_ports, dialogue):
    # Direct TLS is PostgreSQL 17+; an older server reads the ClientHello as a startup packet and hangs up.
    with pytest.raises(ConnectionError):
        await dialogue(postgres_ports[0], "postgres", postgres_mode="direct")


async def test_mariadb_ssl_request(mariadb_port, dialogue):
    assert_test_leaf(await dialogue(mariadb_port, "mysql"))


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
async def test_dovecot(protocol, dovecot_ports, dialogue):
    assert_test_leaf(await dialogue(dovecot_ports[protocol], protocol))


@pytest.mark.parametrize(("protocol", "detail"), [
    ("imap", "STARTTLS not among the capabilities"), ("pop3", "STLS not among the capabilities"),
])
async def test_dovecot_with_ssl_off_does_not_offer_starttls(protocol, detail, dovecot_ports, dialogue):
    with pytest.raises(StartTLSError) as info:
        await dialogue(dovecot_ports[f"{protocol}_plain"], protocol)
    assert (info.value.reason, info.value.detail) == (Reason.STARTTLS_UNSUPPORTED, detail)


async def test_slapd_starttls(slapd_ports, dialogue):
    assert_test_leaf(await dialogue(slapd_ports[0], "ldap"))


async def test_slapd_without_tls_does_not_recognise_starttls(slapd_ports, dialogue):
    with pytest.raises(StartTLSError) as info:
        await dialogue(slapd_ports[1], "ldap")
    assert (info.value.reason, info.value.detail) == (
        Reason.STARTTLS_UNSUPPORTED, "StartTLS not recognised: 'unsupported extended operation'")
