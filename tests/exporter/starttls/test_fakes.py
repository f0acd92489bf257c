"""Every STARTTLS dialogue against a protocol-faithful fake: the happy path ends in a verified TLS
handshake on the same connection; each refusal path gives its exact reason."""

from __future__ import annotations

import ssl
import time

import pytest

from exporter.probes.base import Reason
from exporter.probes.starttls import NEGOTIATORS
from exporter.probes.starttls.base import StartTLSError
from tests.exporter.conftest import LEAF_NOT_AFTER
from tests.exporter.starttls import fakes

UNSUPPORTED, REFUSED, PROTOCOL = Reason.STARTTLS_UNSUPPORTED, Reason.STARTTLS_REFUSED, Reason.STARTTLS_PROTOCOL


def test_every_configurable_protocol_has_a_negotiator():
    from typing import get_args

    from exporter.config import StartTLSProtocol

    assert sorted(NEGOTIATORS) == sorted(get_args(StartTLSProtocol))


HAPPY = [
    ("smtp", fakes.smtp("ok"), {}),
    ("lmtp", fakes.smtp("ok", verb=b"LHLO"), {}),
    ("smtp", fakes.smtp("ok", name=b"mx.probe.test"), {"hello_name": "mx.probe.test"}),
    ("ftp", fakes.ftp("ok"), {}),
    ("imap", fakes.imap("ok"), {}),
    ("pop3", fakes.pop3("ok"), {}),
    ("ldap", fakes.ldap("ok"), {}),
    ("xmpp", fakes.xmpp("ok"), {}),
    ("xmpp-server", fakes.xmpp("ok", "jabber:server"), {}),
    ("xmpp", [fakes.Expect(fakes.xmpp_header("jabber:client", "chat.probe.test")), *fakes.xmpp("ok")[1:]],
     {"hello_name": "chat.probe.test"}),
]


@pytest.mark.parametrize(("protocol", "script", "settings"), HAPPY)
async def test_happy_path_ends_in_a_tls_handshake(protocol, script, settings, server_tls, dialogue):
    async with fakes.serve(script, server_tls) as fake:
        leaf = await dialogue(fake.port, protocol, **settings)
        assert await fakes.handshakes(fake) == 1
    assert fake.errors == []
    assert leaf.subject.rfc4514_string() == "CN=localhost,O=certpager test"
    assert leaf.not_valid_after_utc == LEAF_NOT_AFTER


async def test_smtp_hello_uses_an_address_literal_for_ip_hosts(server_tls, dialogue):
    async with fakes.serve(fakes.smtp("not_advertised", name=b"[127.0.0.1]"), server_tls) as fake:
        with pytest.raises(StartTLSError):
            await dialogue(fake.port, "smtp", host="127.0.0.1")
    assert fake.errors == []


async def test_postgres_direct_mode_sends_nothing_and_offers_alpn(test_pki, dialogue):
    files = test_pki.files["valid"]
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(files.cert_file, files.key_file)
    server.set_alpn_protocols(["postgresql"])  # a PostgreSQL 17 server insists on it
    async with fakes.serve(fakes.postgres("direct"), server) as fake:
        leaf = await dialogue(fake.port, "postgres", postgres_mode="direct")
        assert await fakes.handshakes(fake) == 1
    assert fake.errors == []
    assert leaf.not_valid_after_utc == LEAF_NOT_AFTER
    assert NEGOTIATORS["postgres"].alpn_protocols == ("postgresql",)


REFUSALS = [
    ("smtp", fakes.smtp("not_advertised"), UNSUPPORTED, "STARTTLS not among the EHLO extensions"),
    ("smtp", fakes.smtp("refused"), REFUSED, "STARTTLS answered 454"),
    ("smtp", fakes.smtp("no_service"), REFUSED, "greeting 554"),
    ("smtp", fakes.smtp("no_esmtp"), UNSUPPORTED, "EHLO answered 502"),
    ("smtp", fakes.smtp("garbage"), PROTOCOL, "not an SMTP reply line: 'HTTP/1.1 400 Bad Request'"),
    ("smtp", fakes.smtp("mixed_codes"), PROTOCOL, "reply code changed inside a multi-line reply"),
    ("smtp", fakes.smtp("injection"), PROTOCOL, "server sent data after 220 to STARTTLS: '250 injected\\r\\n'"),
    ("smtp", fakes.smtp("endless_line"), PROTOCOL, "line longer than 4096 bytes"),
    ("smtp", fakes.smtp("endless_reply"), PROTOCOL, "server sent more than 65536 bytes without finishing"),
    ("lmtp", fakes.smtp("not_advertised", verb=b"LHLO"), UNSUPPORTED, "STARTTLS not among the LHLO extensions"),
    ("ftp", fakes.ftp("unsupported"), UNSUPPORTED, "AUTH TLS answered 502"),
    ("ftp", fakes.ftp("refused"), REFUSED, "AUTH TLS answered 534"),
    ("ftp", fakes.ftp("closing"), REFUSED, "greeting 421"),
    ("ftp", fakes.ftp("garbage"), PROTOCOL, "not an FTP reply line"),
    ("imap", fakes.imap("no"), REFUSED, "STARTTLS answered NO"),
    ("imap", fakes.imap("bad"), REFUSED, "STARTTLS answered BAD"),
    ("imap", fakes.imap("not_advertised"), UNSUPPORTED, "STARTTLS not among the capabilities"),
    ("imap", fakes.imap("preauth"), UNSUPPORTED, "server greets with PREAUTH"),
    ("imap", fakes.imap("bye"), REFUSED, "server greets with BYE"),
    ("imap", fakes.imap("wrong_tag"), PROTOCOL, "expected the completion of a1"),
    ("imap", fakes.imap("literal"), PROTOCOL, "unexpected literal"),
    ("imap", fakes.imap("garbage"), PROTOCOL, "not an IMAP greeting: '+OK POP3 server ready'"),
    ("pop3", fakes.pop3("refused"), REFUSED, "STLS answered -ERR: 'TLS not available'"),
    ("pop3", fakes.pop3("not_advertised"), UNSUPPORTED, "STLS not among the capabilities"),
    ("pop3", fakes.pop3("no_capa"), UNSUPPORTED, "CAPA answered -ERR"),
    ("pop3", fakes.pop3("err_greeting"), REFUSED, "greeting -ERR: 'go away'"),
    ("pop3", fakes.pop3("garbage"), PROTOCOL, "not a POP3 status line"),
    ("ldap", fakes.ldap("unavailable"), REFUSED, "StartTLS resultCode 52: 'TLS not configured'"),
    ("ldap", fakes.ldap("protocol_error"), UNSUPPORTED, "StartTLS not recognised"),
    ("ldap", fakes.ldap("disconnect_notice"), REFUSED, "notice of disconnection, resultCode 52"),
    ("ldap", fakes.ldap("garbage"), PROTOCOL, "not an LDAP message"),
    ("ldap", fakes.ldap("huge"), PROTOCOL, "larger than 16384"),
    ("postgres", fakes.postgres("error"), UNSUPPORTED, "answered the SSLRequest with an error"),
    ("postgres", fakes.postgres("garbage"), PROTOCOL, "unexpected answer to SSLRequest: 'X'"),
    ("postgres", fakes.postgres("injection"), PROTOCOL, "server sent data after S"),
    ("mysql", fakes.mysql("no_ssl"), UNSUPPORTED, "5.7.44-fake does not offer CLIENT_SSL"),
    ("mysql", fakes.mysql("err"), REFUSED, "server error 1040: 'Too many connections'"),
    ("mysql", fakes.mysql("v9"), UNSUPPORTED, "protocol version 9 has no SSL"),
    ("mysql", fakes.mysql("garbage"), PROTOCOL, "first packet of"),
    ("mysql", fakes.mysql("huge"), PROTOCOL, "too large for a handshake"),
    ("xmpp", fakes.xmpp("failure"), REFUSED, "server answered <failure/>"),
    ("xmpp", fakes.xmpp("not_advertised"), UNSUPPORTED, "<starttls/> not among the stream features"),
    ("xmpp", fakes.xmpp("stream_error"), REFUSED, "stream error: host-unknown"),
    ("xmpp", fakes.xmpp("old_stream"), UNSUPPORTED, "stream version 'missing'"),
    ("xmpp", fakes.xmpp("wrong_namespace"), PROTOCOL, "stream namespace 'jabber:component:accept'"),
    ("xmpp", fakes.xmpp("dtd"), PROTOCOL, "DTD, comment or CDATA"),
    ("xmpp", fakes.xmpp("malformed"), PROTOCOL, "malformed XML"),
    ("xmpp-server", fakes.xmpp("failure", "jabber:server"), REFUSED, "server answered <failure/>"),
]


@pytest.mark.parametrize(("protocol", "script", "reason", "detail"), REFUSALS)
async def test_refusal_paths(protocol, script, reason, detail, server_tls, dialogue):
    async with fakes.serve(script, server_tls) as fake:
        with pytest.raises(StartTLSError) as info:
            await dialogue(fake.port, protocol)
    assert (info.value.reason, fake.errors) == (reason, [])
    assert detail in info.value.detail
    assert fake.handshakes == 0


@pytest.mark.parametrize(("protocol", "script"), [
    ("smtp", fakes.smtp("stall")), ("ftp", fakes.ftp("stall")), ("xmpp", fakes.xmpp("stall")),
    ("imap", fakes.imap("stall")), ("pop3", fakes.pop3("stall")), ("ldap", fakes.ldap("stall")),
    ("postgres", fakes.postgres("stall")), ("mysql", fakes.mysql("stall")),
])
async def test_a_stalled_peer_is_left_to_the_timeout(protocol, script, server_tls, dialogue):
    async with fakes.serve(script, server_tls) as fake:
        begin = time.perf_counter()
        with pytest.raises(TimeoutError):
            await dialogue(fake.port, protocol, timeout=0.3)
        # uvloop's timers and clock move in whole milliseconds: 0.3 s can end 1 ms short on perf_counter.
        assert 0.298 <= time.perf_counter() - begin < 2.0


async def test_a_peer_closing_mid_dialogue_is_end_of_stream(server_tls, dialogue):
    async with fakes.serve(fakes.smtp("closes"), server_tls) as fake:
        with pytest.raises(EOFError, match="server closed the connection after 34 bytes of dialogue"):
            await dialogue(fake.port, "smtp")
