"""The contract between the TLS pipeline and the STARTTLS protocol dialogues.

The TLS probe connects, then, for kind ``starttls``, hands the connected socket to the protocol's
:class:`Negotiator`, which speaks the protocol up to the point where the next bytes on the wire are
the TLS ClientHello, and returns. The pipeline then runs the TLS handshake on the same socket; the
socket stays the pipeline's, which closes it on every path. A negotiator raises
:class:`StartTLSError` with a bounded reason when the server does not offer the upgrade, refuses
it, or does not speak the protocol; the pipeline turns it into a failed ``ProbeResult``. Timeouts
are the pipeline's business (phase ``starttls``).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Protocol

from exporter.config import StartTLSSettings
from exporter.probes.base import Reason


class StartTLSError(Exception):
    """The plaintext dialogue failed; ``reason`` is one of the STARTTLS_* reasons."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Negotiator(Protocol):
    """One plaintext protocol's dialogue up to the TLS upgrade."""

    # ALPN protocols the TLS handshake must offer afterwards (PostgreSQL direct TLS needs
    # "postgresql"); None for none.
    alpn_protocols: Sequence[str] | None

    async def negotiate(self, sock: socket.socket, settings: StartTLSSettings, host: str) -> None:
        """Speak the protocol until the server is ready for the ClientHello; raise StartTLSError."""
        ...
