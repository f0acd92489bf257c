"""Bounded reading and writing of the plaintext dialogue, shared by every STARTTLS negotiator.

A lying or broken peer must not make the exporter buffer without end: every line is capped and the
whole dialogue has a byte budget. The dialogue runs on the connected socket itself (the event loop's
``sock_recv``/``sock_sendall``), so the TLS handshake continues on the same socket afterwards. Reads
take only what the peer has sent, and
:meth:`Wire.expect_drained` refuses bytes the server sent after its go-ahead: such bytes would be
plaintext injected in front of the TLS session (the STARTTLS command-injection class of bugs).
A peer that closes or resets mid-dialogue raises ``EOFError`` / ``ConnectionError``, which the TLS
pipeline reports as ``connection_closed`` (the peer hung up; it did not speak another protocol).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

from exporter.config import StartTLSSettings
from exporter.probes.base import Reason
from exporter.probes.starttls.base import StartTLSError

MAX_LINE = 4096  # bytes per text line; RFC 5321 allows 512 per reply line, IMAP servers send more
MAX_TOTAL = 64 * 1024  # bytes per dialogue; a real greeting + capabilities is a few hundred
_CHUNK = 4096


def protocol_error(detail: str) -> StartTLSError:
    """A STARTTLS_PROTOCOL error: the peer does not speak the protocol."""
    return StartTLSError(Reason.STARTTLS_PROTOCOL, detail)


def show(data: bytes | str, limit: int = 120) -> str:
    """A short, printable rendering of peer bytes for ``detail`` (never a label)."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


class Wire:
    """The plaintext side of one connection, with a line cap and a total byte budget."""

    def __init__(self, sock: socket.socket, *, max_line: int = MAX_LINE, max_total: int = MAX_TOTAL) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._max_line = max_line
        self._max_total = max_total
        self._total = 0

    async def send(self, data: bytes) -> None:
        """Write ``data`` and wait until it is handed to the kernel."""
        try:
            await self._loop.sock_sendall(self._sock, data)
        except (ConnectionError, TimeoutError):
            raise
        except OSError as exc:  # e.g. EHOSTUNREACH on a live socket: the connection is gone all the same
            raise ConnectionError(f"connection lost: {exc}") from exc

    async def _fill(self) -> None:
        """Read what the peer has sent (at least one byte) into the buffer, within the budget."""
        if self._total >= self._max_total:
            raise protocol_error(f"server sent more than {self._max_total} bytes without finishing")
        try:
            chunk = await self._loop.sock_recv(self._sock, min(_CHUNK, self._max_total - self._total))
        except (ConnectionError, TimeoutError):
            raise
        except OSError as exc:  # e.g. EHOSTUNREACH on a live socket: the connection is gone all the same
            raise ConnectionError(f"connection lost: {exc}") from exc
        if not chunk:
            raise EOFError(f"server closed the connection after {self._total} bytes of dialogue")
        self._total += len(chunk)
        self._buffer += chunk

    async def read_line(self) -> bytes:
        """One line without its CRLF (a bare LF is accepted too)."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line.removesuffix(b"\r")
            if len(self._buffer) > self._max_line:
                raise protocol_error(f"line longer than {self._max_line} bytes: {show(bytes(self._buffer))}")
            await self._fill()

    async def read_exactly(self, count: int) -> bytes:
        """Exactly ``count`` bytes (binary protocols)."""
        if count > self._max_total:
            raise protocol_error(f"server announced {count} bytes, more than the {self._max_total} allowed")
        while len(self._buffer) < count:
            await self._fill()
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    async def read_some(self) -> bytes:
        """Whatever is buffered, or the next chunk from the peer (stream protocols such as XMPP)."""
        if not self._buffer:
            await self._fill()
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def expect_drained(self, after: str) -> None:
        """Fail when the server sent bytes after ``after`` (its go-ahead): they would precede TLS."""
        if self._buffer:
            raise protocol_error(f"server sent data after {after}: {show(bytes(self._buffer))}")


class Dialogue:
    """Base of every negotiator: :meth:`negotiate` (the pipeline's contract, starttls.base.Negotiator)
    wraps the socket in a :class:`Wire` and runs the protocol's :meth:`dialogue` on it. The socket
    stays the caller's: it closes it on every path, whatever the dialogue did."""

    alpn_protocols: Sequence[str] | None = None  # ALPN the TLS handshake offers afterwards
    max_total: int = MAX_TOTAL  # the dialogue's byte budget

    async def negotiate(self, sock: socket.socket, settings: StartTLSSettings, host: str) -> None:
        """Speak the protocol until the server is ready for the ClientHello; raise StartTLSError."""
        await self.dialogue(Wire(sock, max_total=self.max_total), settings, host)

    async def dialogue(self, wire: Wire, settings: StartTLSSettings, host: str) -> None:
        """The protocol's part: read and write on ``wire`` up to the upgrade."""
        raise NotImplementedError
