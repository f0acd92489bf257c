"""PostgreSQL (protocol 3, "SSL Session Encryption"): SSLRequest, or direct TLS (PostgreSQL 17).

Sent (mode ``sslrequest``): the 8-byte SSLRequest, Int32 length 8 and Int32 code 80877103.
Expected: the single byte ``S``. ``N`` is a refusal (ssl=off); ``E`` is an error message, which only
a server without SSL support sends. Mode ``direct`` says nothing: the TLS handshake starts at once
and must offer ALPN ``postgresql``. ALPN ``postgresql`` is offered in both modes, as libpq 17 does;
servers before 17 ignore it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from exporter.config import StartTLSSettings
from exporter.probes.base import Reason
from exporter.probes.starttls.base import StartTLSError
from exporter.probes.starttls.wire import Dialogue, Wire, protocol_error, show

SSL_REQUEST = struct.pack("!ii", 8, 80877103)


@dataclass
class PostgresNegotiator(Dialogue):
    """PostgreSQL SSLRequest (or nothing, in direct mode)."""

    alpn_protocols: Sequence[str] | None = ("postgresql",)

    async def dialogue(self, wire: Wire, settings: StartTLSSettings, host: str) -> None:
        """Send SSLRequest and expect ``S``; in direct mode do nothing."""
        if settings.postgres_mode == "direct":
            return
        await wire.send(SSL_REQUEST)
        answer = await wire.read_exactly(1)
        if answer == b"N":
            raise StartTLSError(Reason.STARTTLS_REFUSED, "server answered N: SSL is off")
        if answer == b"E":
            raise StartTLSError(Reason.STARTTLS_UNSUPPORTED, "server answered the SSLRequest with an error")
        if answer != b"S":
            raise protocol_error(f"unexpected answer to SSLRequest: {show(answer)}")
        # Bytes after 'S' would be read as if they came over TLS (CVE-2021-23222).
        wire.expect_drained("S")
