"""POP3 (RFC 1939, CAPA per RFC 2449, STLS per RFC 2595): greeting, CAPA, STLS.

Sent: ``CAPA``, then ``STLS``. Expected: a ``+OK`` greeting, a ``+OK`` multi-line CAPA answer
(ending with ``.``) that lists ``STLS``, and ``+OK`` to STLS.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.config import StartTLSSettings
from exporter.probes.base import Reason
from exporter.probes.starttls.base import StartTLSError
from exporter.probes.starttls.wire import Dialogue, Wire, protocol_error, show


async def read_status(wire: Wire) -> tuple[bool, bytes]:
    """One status line: (True for +OK / False for -ERR, the text)."""
    line = await wire.read_line()
    for prefix, ok in ((b"+OK", True), (b"-ERR", False)):
        if line == prefix or line.startswith(prefix + b" "):
            return ok, line[len(prefix) + 1 :]
    raise protocol_error(f"not a POP3 status line: {show(line)}")


async def read_multiline(wire: Wire) -> list[bytes]:
    """The body of a multi-line answer up to the lone ``.``, dot-unstuffed."""
    lines: list[bytes] = []
    while True:
        line = await wire.read_line()
        if line == b".":
            return lines
        lines.append(line[1:] if line.startswith(b".") else line)


@dataclass
class POP3Negotiator(Dialogue):
    """POP3 STLS."""

    async def dialogue(self, wire: Wire, settings: StartTLSSettings, host: str) -> None:
        """Greeting, CAPA, STLS."""
        ok, text = await read_status(wire)
        if not ok:
            raise StartTLSError(Reason.STARTTLS_REFUSED, f"greeting -ERR: {show(text)}")
        await wire.send(b"CAPA\r\n")
        ok, text = await read_status(wire)
        if not ok:
            # No CAPA (RFC 2449) means no way to learn of STLS.
            raise StartTLSError(Reason.STARTTLS_UNSUPPORTED, f"CAPA answered -ERR: {show(text)}")
        capabilities = {line.split(b" ", 1)[0].upper() for line in await read_multiline(wire)}
        if b"STLS" not in capabilities:
            raise StartTLSError(Reason.STARTTLS_UNSUPPORTED, "STLS not among the capabilities")
        await wire.send(b"STLS\r\n")
        ok, text = await read_status(wire)
        if not ok:
            raise StartTLSError(Reason.STARTTLS_REFUSED, f"STLS answered -ERR: {show(text)}")
        wire.expect_drained("+OK to STLS")
