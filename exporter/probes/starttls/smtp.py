"""SMTP (RFC 5321, STARTTLS per RFC 3207) and LMTP (RFC 2033): greeting, EHLO/LHLO, STARTTLS.

Sent: ``EHLO <name>`` (``LHLO`` for LMTP), then ``STARTTLS``. Expected: a 220 greeting, a 250 reply
whose extension lines include ``STARTTLS``, and ``220`` to the STARTTLS command.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from exporter.config import StartTLSSettings
from exporter.probes.base import Reason
from exporter.probes.starttls.base import StartTLSError
from exporter.probes.starttls.wire import Dialogue, Wire, protocol_error, show

# Reply-line = Reply-code ("-" / SP) [ textstring ], or the bare code (RFC 5321 section 4.2).
_REPLY_LINE = re.compile(rb"^([2-5][0-9]{2})(?:([ -])(.*))?$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Reply:
    """One (possibly multi-line) reply: its code and the text of each line."""

    code: int
    lines: tuple[bytes, ...]


async def read_reply(wire: Wire) -> Reply:
    """Read one reply; every line must carry the same code, the last one without a hyphen."""
    code: bytes | None = None
    lines: list[bytes] = []
    while True:
        raw = await wire.read_line()
        match = _REPLY_LINE.match(raw)
        if match is None:
            raise protocol_error(f"not an SMTP reply line: {show(raw)}")
        if code is not None and match[1] != code:
            raise protocol_error(f"reply code changed inside a multi-line reply: {show(raw)}")
        code = match[1]
        lines.append(match[3] or b"")
        if match[2] != b"-":
            return Reply(int(code), tuple(lines))


def hello_name(settings: StartTLSSettings, host: str) -> str:
    """The EHLO argument: the configured name, else the host (IP literals as address literals)."""
    name = settings.hello_name or host
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return name
    return f"[IPv6:{address}]" if address.version == 6 else f"[{address}]"


@dataclass
class SMTPNegotiator(Dialogue):
    """SMTP when ``verb`` is EHLO, LMTP when it is LHLO."""

    verb: str = "EHLO"
    async def dialogue(self, wire: Wire, settings: StartTLSSettings, host: str) -> None:
        """Greeting, EHLO/LHLO, STARTTLS."""
        greeting = await read_reply(wire)
        if greeting.code != 220:
            raise StartTLSError(Reason.STARTTLS_REFUSED, f"greeting {greeting.code}: {show(greeting.lines[0])}")
        await wire.send(f"{self.verb} {hello_name(settings, host)}\r\n".encode("ascii", "replace"))
        hello = await read_reply(wire)
        if hello.code != 250:
            # A server that rejects EHLO speaks no ESMTP, so it has no extensions to offer.
            raise StartTLSError(Reason.STARTTLS_UNSUPPORTED, f"{self.verb} answered {hello.code}")
        keywords = {line.split(b" ", 1)[0].upper() for line in hello.lines[1:]}
        if b"STARTTLS" not in keywords:
            raise StartTLSError(Reason.STARTTLS_UNSUPPORTED, f"STARTTLS not among the {self.verb} extensions")
        await wire.send(b"STARTTLS\r\n")
        answer = await read_reply(wire)
        if answer.code != 220:
            raise StartTLSError(Reason.STARTTLS_REFUSED, f"STARTTLS answered {answer.code}: {show(answer.lines[0])}")
        wire.expect_drained("220 to STARTTLS")
