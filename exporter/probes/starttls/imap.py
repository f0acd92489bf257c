"""IMAP (RFC 9051 / RFC 3501, STARTTLS per section 6.2.1): greeting, CAPABILITY, STARTTLS.

Sent: ``a1 CAPABILITY``, then ``a2 STARTTLS``. Expected: an ``* OK`` greeting, an untagged
``* CAPABILITY`` listing ``STARTTLS`` then ``a1 OK``, and ``a2 OK`` to STARTTLS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from exporter.config import StartTLSSettings
from exporter.probes.base import Reason
from exporter.probes.starttls.base import StartTLSError
from exporter.probes.starttls.wire import Dialogue, Wire, protocol_error, show

_LITERAL = re.compile(rb"\{[0-9]+\+?\}$")


async def _read_response_line(wire: Wire) -> bytes:
    line = await wire.read_line()
    if _LITERAL.search(line):
        # No response we need carries a literal; refusing them keeps the parser small and strict.
        raise protocol_error(f"unexpected literal in response: {show(line)}")
    return line


async def read_tagged(wire: Wire, tag: bytes) -> tuple[bytes, bytes, list[bytes]]:
    """Read untagged lines until the tagged completion; return (status, text, untagged lines)."""
    untagged: list[bytes] = []
    while True:
        line = await _read_response_line(wire)
        if line.startswith(b"* "):
            untagged.append(line[2:])
            continue
        parts = line.split(b" ", 2)
        if len(parts) < 2 or parts[0] != tag or parts[1].upper() not in (b"OK", b"NO", b"BAD"):
            raise protocol_error(f"expected the completion of {tag.decode()}: {show(line)}")
        return parts[1].upper(), parts[2] if len(parts) > 2 else b"", untagged


def _capabilities(untagged: list[bytes]) -> set[bytes]:
    caps: set[bytes] = set()
    for line in untagged:
        words = line.split()
        if words and words[0].upper() == b"CAPABILITY":
            caps.update(word.upper() for word in words[1:])
    return caps


async def _greeting(wire: Wire) -> None:
    line = await _read_response_line(wire)
    parts = line.split(b" ", 2)
    status = parts[1].upper() if len(parts) >= 2 and parts[0] == b"*" else b""
    if status == b"OK":
        return
    if status == b"PREAUTH":
        # STARTTLS is only valid in the not-authenticated state (RFC 9051 section 6.2.1).
        raise StartTLSError(Reason.STARTTLS_UNSUPPORTED, "server greets with PREAUTH: no STARTTLS possible")
    if status == b"BYE":
        raise StartTLSError(Reason.STARTTLS_REFUSED, f"server greets with BYE: {show(line)}")
    raise protocol_error(f"not an IMAP greeting: {show(line)}")


@dataclass
class IMAPNegotiator(Dialogue):
    """IMAP STARTTLS."""

    async def dialogue(self, wire: Wire, settings: StartTLSSettings, host: str) -> None:
        """Greeting, CAPABILITY, STARTTLS."""
        await _greeting(wire)
        await wire.send(b"a1 CAPABILITY\r\n")
        status, text, untagged = await read_tagged(wire, b"a1")
        if status != b"OK":
            raise protocol_error(f"CAPABILITY answered {status.decode()}: {show(text)}")
        if b"STARTTLS" not in _capabilities(untagged):
            raise StartTLSError(Reason.STARTTLS_UNSUPPORTED, "STARTTLS not among the capabilities")
        await wire.send(b"a2 STARTTLS\r\n")
        status, text, _ = await read_tagged(wire, b"a2")
        if status != b"OK":
            raise StartTLSError(Reason.STARTTLS_REFUSED, f"STARTTLS answered {status.decode()}: {show(text)}")
        wire.expect_drained("a2 OK")
