"""Exact bytes of the binary requests and strict parsing of the binary answers."""

from __future__ import annotations

import asyncio
import socket

import pytest

from exporter.config import StartTLSSettings
from exporter.probes.base import Reason
from exporter.probes.starttls import NEGOTIATORS
from exporter.probes.starttls.base import StartTLSError
from exporter.probes.starttls.ldap import parse_extended_response, starttls_request
from exporter.probes.starttls.mysql import Handshake, parse_handshake, ssl_request
from exporter.probes.starttls.postgres import SSL_REQUEST
from exporter.probes.starttls.smtp import hello_name
from tests.exporter.starttls import fakes

# The first packet MariaDB 10.11 sent in the real-server test, payload only (sequence id 0).
MARIADB_HANDSHAKE = (b"\n5.5.5-10.11.19-MariaDB-0+deb12u1\x00\x03\x00\x00\x00mm[bZ{}%\x00\xfe\xff\x08\x02\x00"
                     b"\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00;8F:.x2/4X?q\x00mysql_native_password\x00")


def test_ldap_starttls_request_bytes():
    # SEQUENCE { INTEGER 1, [APPLICATION 23] { [0] "1.3.6.1.4.1.1466.20037" } }
    assert starttls_request() == bytes.fromhex("301d020101771880 16".replace(" ", "")) + b"1.3.6.1.4.1.1466.20037"


def test_ldap_response_parsing_with_long_form_lengths():
    diagnostic = b"d" * 200  # forces 0x81 long-form lengths
    result = b"\x0a\x01\x34\x04\x00\x04\x81\xc8" + diagnostic
    op = b"\x78\x81" + bytes([len(result)]) + result
    body = b"\x02\x01\x01" + op
    message = b"\x30\x81" + bytes([len(body)]) + body
    assert parse_extended_response(message) == (1, 52, diagnostic)
    assert parse_extended_response(fakes.ldap_response(0)) == (1, 0, b"")


def test_postgres_ssl_request_bytes():
    assert bytes.fromhex("0000000804d2162f") == SSL_REQUEST


def test_mysql_handshake_parsing_of_a_real_mariadb_packet():
    assert parse_handshake(MARIADB_HANDSHAKE) == Handshake("5.5.5-10.11.19-MariaDB-0+deb12u1", 0x81FFFFFE, 8)


def test_mysql_ssl_request_bytes():
    packet = ssl_request(Handshake("x", 0x81FFFFFE, 8))
    # 32-byte payload, sequence id 1; flags = SSL | PROTOCOL_41 | SECURE_CONNECTION (the server lacks bit 0)
    assert packet == (b"\x20\x00\x00\x01" + (0x8A00).to_bytes(4, "little") + (2**24 - 1).to_bytes(4, "little")
                      + b"\x08" + bytes(23))


@pytest.mark.parametrize(("host", "configured", "expected"), [
    ("mail.example", None, "mail.example"), ("127.0.0.1", None, "[127.0.0.1]"), ("::1", None, "[IPv6:::1]"),
    ("10.0.0.1", "probe.example", "probe.example"),
])
def test_smtp_hello_name(host, configured, expected):
    assert hello_name(StartTLSSettings(protocol="smtp", hello_name=configured), host) == expected


async def test_a_failed_dialogue_leaves_the_socket_to_its_owner(server_tls):
    # The pipeline owns the socket and closes it on every path (tests/exporter/test_probe_tls.py counts
    # descriptors); the negotiator only reports why the dialogue failed.
    async with fakes.serve(fakes.smtp("refused"), server_tls) as fake:
        loop = asyncio.get_running_loop()
        with socket.socket() as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", fake.port))
            with pytest.raises(StartTLSError) as info:
                async with asyncio.timeout(5):
                    await NEGOTIATORS["smtp"].negotiate(sock, StartTLSSettings(protocol="smtp"), "localhost")
            assert info.value.reason == Reason.STARTTLS_REFUSED
            assert sock.fileno() != -1