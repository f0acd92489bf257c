"""FTP (RFC 959, AUTH TLS per RFC 4217): greeting, AUTH TLS.

Sent: ``AUTH TLS``. Expected: a 220 greeting (after any 120 "ready in n minutes" reply), then 234.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from exporter.config import StartTLSSettings
from exporter.probes.base import Reason
from exporter.probes.starttls.base import StartTLSError
from exporter.probes.starttls.wire import Dialogue, Wire, protocol_error, show

_FIRST_LINE = re.compile(rb"^([1-5][0-9]{2})(?:([ -])(.*))?$", re.DOTALL)
_MAX_PRELIMINARY = 3  # 120 replies tolerated before the 220 greeting
# "Command not recognized / not implemented / not implemented for that parameter" (RFC 959 4.2):
# the server has no AUTH TLS at all. Any other error is a refusal (e.g. 431, 534).
_UNSUPPORTED_CODES = frozenset({500, 502, 504})


async def read_reply(wire: Wire) -> tuple[int, bytes]:
    """One reply: its code and the first line's text.

    A multi-line reply starts with ``ddd-`` and ends at the first line that starts with the same
    ``ddd `` (RFC 959 section 4.2); the lines between are free text.
    """
    first = await wire.read_line()
    match = _FIRST_LINE.match(first)
    if match is None:
        raise protocol_error(f"not an FTP reply line: {show(first)}")
    if match[2] == b"-":
        end = match[1] + b" "
        while not (line := await wire.read_line()).startswith(end) and line != match[1]:
            pass
    return int(match[1]), match[3] or b""


@dataclass
class FTPNegotiator(Dialogue):
    """FTP AUTH TLS (explicit FTPS)."""

    async def dialogue(self, wire: Wire, settings: StartTLSSettings, host: str) -> None:
        """Greeting, AUTH TLS."""
        code, text = await read_reply(wire)
        for _ in range(_MAX_PRELIMINARY):
            if code != 120:
                break
            code, text = await read_reply(wire)
        if code != 220:
            raise StartTLSError(Reason.STARTTLS_REFUSED, f"greeting {code}: {show(text)}")
        await wire.send(b"AUTH TLS\r\n")
        code, text = await read_reply(wire)
        if code in _UNSUPPORTED_CODES:
            raise StartTLSError(Reason.STARTTLS_UNSUPPORTED, f"AUTH TLS answered {code}: {show(text)}")
        if code != 234:
            raise StartTLSError(Reason.STARTTLS_REFUSED, f"AUTH TLS answered {code}: {show(text)}")
        wire.expect_drained("234 to AUTH TLS")
