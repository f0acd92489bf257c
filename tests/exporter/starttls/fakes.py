"""Protocol-faithful fake servers for the STARTTLS dialogues, written from each protocol's RFC.

A fake runs a *script* per connection: what the server sends, the exact bytes the client must send
(anything else is recorded in ``errors`` and the connection is dropped, so a test also checks the
client's side of the dialogue), then the TLS upgrade on the same connection, a stall, or a close.
Scripts per protocol and scenario are below; each scenario is one refusal path a real server has.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from exporter.probes.starttls.ldap import STARTTLS_OID, starttls_request
from exporter.probes.starttls.postgres import SSL_REQUEST
from exporter.probes.starttls.xmpp import STREAMS_NS, TLS_NS

STEP_TIMEOUT = 5.0  # seconds a fake waits for the client's next bytes


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Expect:
    data: bytes  # exactly these bytes must come next from the client


@dataclass(frozen=True)
class Upgrade:
    """TLS handshake as the server on the same connection, then wait for the client to close."""


@dataclass(frozen=True)
class Stall:
    """Say nothing more (the client must give up on its own timeout)."""


Step = Send | Expect | Upgrade | Stall


@dataclass
class FakeServer:
    """An asyncio server on 127.0.0.1 running ``script`` for each connection."""

    script: Sequence[Step]
    tls: ssl.SSLContext
    port: int = 0
    errors: list[str] = field(default_factory=list)
    handshakes: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._run(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            writer.transport.abort()
            self._tasks.discard(task)

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for step in self.script:
            if isinstance(step, Send):
                writer.write(step.data)
                await writer.drain()
            elif isinstance(step, Expect):
                got = await asyncio.wait_for(reader.readexactly(len(step.data)), STEP_TIMEOUT)
                if got != step.data:
                    self.errors.append(f"expected {step.data!r}, got {got!r}")
                    return
            elif isinstance(step, Upgrade):
                if writer.get_extra_info("ssl_object") is None:  # not already TLS from the accept
                    await asyncio.wait_for(writer.start_tls(self.tls), STEP_TIMEOUT)
                self.handshakes += 1
                with contextlib.suppress(ConnectionError, ssl.SSLError):
                    await asyncio.wait_for(reader.read(), STEP_TIMEOUT)  # until the client closes
            else:
                await asyncio.sleep(3600)  # cancelled when the server stops


async def handshakes(fake: FakeServer, count: int = 1) -> int:
    """Wait (at most 2 s) until the fake has completed ``count`` TLS handshakes; return the number."""
    for _ in range(200):
        if fake.handshakes >= count:
            break
        await asyncio.sleep(0.01)
    return fake.handshakes


@contextlib.asynccontextmanager
async def serve(script: Sequence[Step], tls: ssl.SSLContext) -> AsyncIterator[FakeServer]:
    """Run a fake for the duration of the block; every connection task is cancelled on exit."""
    fake = FakeServer(script, tls)
    # A script that starts with the upgrade is direct TLS: the handshake runs at accept, because a
    # ClientHello that arrives before a server-side start_tls would be read as plaintext.
    direct = bool(script) and isinstance(script[0], Upgrade)
    server = await asyncio.start_server(fake._handle, "127.0.0.1", 0, ssl=tls if direct else None)
    fake.port = server.sockets[0].getsockname()[1]
    try:
        yield fake
    finally:
        server.close()
        for task in list(fake._tasks):
            task.cancel()
        await asyncio.gather(*fake._tasks, return_exceptions=True)
        await server.wait_closed()


# --- SMTP (RFC 5321, RFC 3207) and LMTP (RFC 2033) -------------------------------------------------

def smtp(scenario: str, *, verb: bytes = b"EHLO", name: bytes = b"localhost") -> list[Step]:
    greeting = Send(b"220 mail.example.test ESMTP fake\r\n")
    hello = Expect(verb + b" " + name + b"\r\n")
    extensions = b"250-mail.example.test greets you\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
    scripts: dict[str, list[Step]] = {
        "ok": [greeting, hello, Send(extensions + b"250-starttls\r\n250 8BITMIME\r\n"), Expect(b"STARTTLS\r\n"),
               Send(b"220 2.0.0 Ready to start TLS\r\n"), Upgrade()],
        "not_advertised": [greeting, hello, Send(extensions + b"250 8BITMIME\r\n")],
        "refused": [greeting, hello, Send(extensions + b"250 STARTTLS\r\n"), Expect(b"STARTTLS\r\n"),
                    Send(b"454 4.7.0 TLS not available due to temporary reason\r\n")],
        "no_service": [Send(b"554 5.3.2 mail.example.test no service for you\r\n")],
        "no_esmtp": [greeting, hello, Send(b"502 5.5.2 command not recognized\r\n")],
        "garbage": [Send(b"HTTP/1.1 400 Bad Request\r\n\r\n")],
        "mixed_codes": [Send(b"220-mail.example.test\r\n250 oops\r\n")],
        "stall": [greeting, Stall()],
        "injection": [greeting, hello, Send(extensions + b"250 STARTTLS\r\n"), Expect(b"STARTTLS\r\n"),
                      Send(b"220 2.0.0 Ready\r\n250 injected\r\n"), Stall()],
        "endless_line": [Send(b"220-" + b"x" * 9000)],
        "endless_reply": [Send(b"220-mail.example.test\r\n" * 4000)],
        "closes": [greeting, hello],
    }
    return scripts[scenario]


# --- FTP (RFC 959, RFC 4217) -----------------------------------------------------------------------

def ftp(scenario: str) -> list[Step]:
    greeting = Send(b"220-fake FTP server\r\n this is free text\r\n230 not the end either\r\n220 ready\r\n")
    auth = Expect(b"AUTH TLS\r\n")
    scripts: dict[str, list[Step]] = {
        "ok": [Send(b"120 ready in 1 minute\r\n"), greeting, auth, Send(b"234 AUTH TLS successful\r\n"), Upgrade()],
        "unsupported": [greeting, auth, Send(b"502 Command not implemented\r\n")],
        "refused": [greeting, auth, Send(b"534 Request denied for policy reasons\r\n")],
        "closing": [Send(b"421 Too many connections, closing\r\n")],
        "garbage": [Send(b"SSH-2.0-OpenSSH_9.2\r\n")],
        "stall": [greeting, auth, Stall()],
    }
    return scripts[scenario]


# --- IMAP (RFC 9051) and POP3 (RFC 1939, 2449, 2595): refusal paths Dovecot cannot be made to take --

def imap(scenario: str) -> list[Step]:
    greeting = Send(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] fake ready\r\n")
    capability: list[Step] = [Expect(b"a1 CAPABILITY\r\n"),
                  Send(b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\n* OK noise\r\na1 OK done\r\n")]
    starttls = Expect(b"a2 STARTTLS\r\n")
    scripts: dict[str, list[Step]] = {
        "ok": [greeting, *capability, starttls, Send(b"a2 OK Begin TLS negotiation now\r\n"), Upgrade()],
        "no": [greeting, *capability, starttls, Send(b"a2 NO [UNAVAILABLE] TLS subsystem down\r\n")],
        "bad": [greeting, *capability, starttls, Send(b"a2 BAD unknown command\r\n")],
        "not_advertised": [greeting, Expect(b"a1 CAPABILITY\r\n"), Send(b"* CAPABILITY IMAP4rev1\r\na1 OK\r\n")],
        "preauth": [Send(b"* PREAUTH logged in already\r\n")],
        "bye": [Send(b"* BYE too many connections\r\n")],
        "wrong_tag": [greeting, Expect(b"a1 CAPABILITY\r\n"), Send(b"a9 OK\r\n")],
        "literal": [greeting, Expect(b"a1 CAPABILITY\r\n"), Send(b"* CAPABILITY {5}\r\n")],
        "garbage": [Send(b"+OK POP3 server ready\r\n")],
        "stall": [greeting, Expect(b"a1 CAPABILITY\r\n"), Send(b"* CAPABILITY IMAP4rev1 STARTTLS\r\n"), Stall()],
    }
    return scripts[scenario]


def pop3(scenario: str) -> list[Step]:
    greeting = Send(b"+OK fake POP3 ready\r\n")
    capa: list[Step] = [Expect(b"CAPA\r\n"),
                        Send(b"+OK Capability list follows\r\nTOP\r\nUSER\r\nSTLS\r\n..stuffed\r\n.\r\n")]
    scripts: dict[str, list[Step]] = {
        "ok": [greeting, *capa, Expect(b"STLS\r\n"), Send(b"+OK Begin TLS\r\n"), Upgrade()],
        "refused": [greeting, *capa, Expect(b"STLS\r\n"), Send(b"-ERR TLS not available\r\n")],
        "not_advertised": [greeting, Expect(b"CAPA\r\n"), Send(b"+OK\r\nTOP\r\nUSER\r\n.\r\n")],
        "no_capa": [greeting, Expect(b"CAPA\r\n"), Send(b"-ERR unknown command\r\n")],
        "stall": [greeting, Expect(b"CAPA\r\n"), Send(b"+OK\r\nSTLS\r\n"), Stall()],  # list never ends
        "err_greeting": [Send(b"-ERR go away\r\n")],
        "garbage": [Send(b"220 smtp.example.test ESMTP\r\n")],
    }
    return scripts[scenario]


# --- LDAP (RFC 4511 section 4.14) -------------------------------------------------------------------

def ldap_response(code: int, message_id: int = 1, diagnostic: bytes = b"") -> bytes:
    """An LDAPMessage carrying an ExtendedResponse with ``code`` (short-form lengths only)."""
    result = b"\x0a\x01" + bytes([code]) + b"\x04\x00" + b"\x04" + bytes([len(diagnostic)]) + diagnostic
    if code == 0:
        result += b"\x8a" + bytes([len(STARTTLS_OID)]) + STARTTLS_OID
    op = b"\x78" + bytes([len(result)]) + result
    body = b"\x02\x01" + bytes([message_id]) + op
    return b"\x30" + bytes([len(body)]) + body


def ldap(scenario: str) -> list[Step]:
    request = Expect(starttls_request())
    scripts: dict[str, list[Step]] = {
        "ok": [request, Send(ldap_response(0)), Upgrade()],
        "unavailable": [request, Send(ldap_response(52, diagnostic=b"TLS not configured"))],
        "protocol_error": [request, Send(ldap_response(2, diagnostic=b"unsupported extended operation"))],
        "disconnect_notice": [request, Send(ldap_response(52, message_id=0))],
        "garbage": [request, Send(b"HTTP/1.0 400 Bad Request\r\n\r\n")],
        "huge": [request, Send(b"\x30\x84\x7f\xff\xff\xff")],
        "stall": [request, Send(b"\x30\x0c\x02\x01"), Stall()],  # half a message
    }
    return scripts[scenario]


# --- PostgreSQL direct TLS (PostgreSQL 17; Debian 12 ships 15) and a lying postgres -----------------

def postgres(scenario: str) -> list[Step]:
    scripts: dict[str, list[Step]] = {
        "direct": [Upgrade()],
        "error": [Expect(SSL_REQUEST), Send(b"EFATAL unsupported frontend protocol\x00")],
        "garbage": [Expect(SSL_REQUEST), Send(b"X")],
        "injection": [Expect(SSL_REQUEST), Send(b"SR\x00\x00\x00\x08\x00\x00\x00\x00"), Stall()],
        "stall": [Expect(SSL_REQUEST), Stall()],
    }
    return scripts[scenario]


# --- MySQL / MariaDB -------------------------------------------------------------------------------

def mysql_handshake(capabilities: int, version: bytes = b"5.7.44-fake") -> bytes:
    """A protocol-10 Initial Handshake packet (sequence id 0)."""
    payload = (b"\x0a" + version + b"\x00" + struct.pack("<I", 7) + b"12345678" + b"\x00"
               + struct.pack("<H", capabilities & 0xFFFF) + b"\x21" + struct.pack("<H", 2)
               + struct.pack("<H", capabilities >> 16) + b"\x15" + b"\x00" * 10 + b"123456789012\x00"
               + b"mysql_native_password\x00")
    return len(payload).to_bytes(3, "little") + b"\x00" + payload


def mysql(scenario: str) -> list[Step]:
    err = b"\xff\x10\x04Too many connections"
    scripts: dict[str, list[Step]] = {
        "no_ssl": [Send(mysql_handshake(0x000FF7FF & ~0x800))],
        "err": [Send(len(err).to_bytes(3, "little") + b"\x00" + err)],
        "v9": [Send(b"\x08\x00\x00\x00\x093.22\x00\x01\x02")],
        "garbage": [Send(b"220 smtp.example.test ESMTP\r\n")],
        "huge": [Send(b"\xff\xff\xff\x00")],
        "stall": [Stall()],
    }
    return scripts[scenario]


# --- XMPP (RFC 6120 section 5) ----------------------------------------------------------------------

def xmpp_header(namespace: str, domain: str = "localhost") -> bytes:
    """The client's stream header, exactly as RFC 6120 section 4.7 spells it (our wording)."""
    return (f"<?xml version='1.0'?><stream:stream xmlns='{namespace}' xmlns:stream='{STREAMS_NS}' "
            f'to="{domain}" version=\'1.0\'>').encode()


def xmpp(scenario: str, namespace: str = "jabber:client", domain: str = "localhost") -> list[Step]:
    header = Expect(xmpp_header(namespace, domain))
    server = (f"<?xml version='1.0'?><stream:stream xmlns='{namespace}' xmlns:stream='{STREAMS_NS}' "
              f"id='abc' from='localhost' version='1.0' xml:lang='en'>").encode()
    tls_feature = f"<starttls xmlns='{TLS_NS}'><required/></starttls>".encode()
    features = b"<stream:features>" + tls_feature + b"<mechanisms xmlns='x'/></stream:features>"
    request = Expect(f"<starttls xmlns='{TLS_NS}'/>".encode())
    scripts: dict[str, list[Step]] = {
        "ok": [header, Send(server), Send(features[:20]), Send(features[20:]), request,
               Send(f"<proceed xmlns='{TLS_NS}'/>".encode()), Upgrade()],
        "failure": [header, Send(server + features), request,
                    Send(f"<failure xmlns='{TLS_NS}'/></stream:stream>".encode())],
        "not_advertised": [header, Send(server + b"<stream:features><bind xmlns='b'/></stream:features>")],
        "stream_error": [header, Send(server + b"<stream:error><host-unknown xmlns="
                                      b"'urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>")],
        "old_stream": [header, Send(server.replace(b"from='localhost' version='1.0'", b"from='localhost'"))],
        "wrong_namespace": [header, Send(server.replace(namespace.encode(), b"jabber:component:accept"))],
        "dtd": [header, Send(b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'aaaa'>]>" + server)],
        "malformed": [header, Send(b"<stream:stream xmlns:stream='" + STREAMS_NS.encode() + b"'><<>")],
        "stall": [header, Send(server), Stall()],
    }
    return scripts[scenario]
