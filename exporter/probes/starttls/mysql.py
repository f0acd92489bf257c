"""MySQL / MariaDB (client/server protocol, "SSL Handshake"): initial handshake, SSL request.

Expected first: the server's Initial Handshake packet, protocol version 10, whose capability flags
include CLIENT_SSL. Sent: the 32-byte SSLRequest packet (sequence id 1) with CLIENT_SSL set; the TLS
ClientHello follows directly. An ERR packet instead of the handshake (too many connections, host
blocked) is a refusal.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from exporter.config import StartTLSSettings
from exporter.probes.base import Reason
from exporter.probes.starttls.base import StartTLSError
from exporter.probes.starttls.wire import Dialogue, Wire, protocol_error, show

CLIENT_LONG_PASSWORD = 0x00000001  # MariaDB reads it as CLIENT_MYSQL; mirror what the server sets
CLIENT_PROTOCOL_41 = 0x00000200
CLIENT_SSL = 0x00000800
CLIENT_SECURE_CONNECTION = 0x00008000
_MAX_PACKET = 16 * 1024 * 1024 - 1
_MAX_HANDSHAKE = 4096  # a real initial handshake is under 200 bytes
_DEFAULT_CHARSET = 33  # utf8_general_ci
_ERR, _V10, _V9 = 0xFF, 0x0A, 0x09


@dataclass(frozen=True, slots=True)
class Handshake:
    """What the SSL request needs from the server's Initial Handshake packet."""

    server_version: str
    capabilities: int
    charset: int


async def read_packet(wire: Wire) -> tuple[int, bytes]:
    """One packet: (sequence id, payload)."""
    header = await wire.read_exactly(4)
    length = int.from_bytes(header[:3], "little")
    if length > _MAX_HANDSHAKE:
        raise protocol_error(f"first packet of {length} bytes is too large for a handshake")
    return header[3], await wire.read_exactly(length)


def parse_handshake(payload: bytes) -> Handshake:
    """Parse a protocol-10 Initial Handshake; raise StartTLSError for ERR, v9 or garbage."""
    if not payload:
        raise protocol_error("empty first packet")
    if payload[0] == _ERR:
        code = int.from_bytes(payload[1:3], "little") if len(payload) >= 3 else 0
        raise StartTLSError(Reason.STARTTLS_REFUSED, f"server error {code}: {show(payload[3:])}")
    if payload[0] == _V9:
        raise StartTLSError(Reason.STARTTLS_UNSUPPORTED, "protocol version 9 has no SSL")
    if payload[0] != _V10:
        raise protocol_error(f"not a MySQL handshake: {show(payload[:16])}")
    end = payload.find(b"\x00", 1)
    if end < 0 or len(payload) < end + 1 + 4 + 8 + 1 + 2:
        raise protocol_error("truncated initial handshake")
    pos = end + 1 + 4 + 8 + 1  # thread id, auth-plugin-data part 1, filler
    capabilities = int.from_bytes(payload[pos : pos + 2], "little")
    charset = _DEFAULT_CHARSET
    if len(payload) >= pos + 7:  # charset, status flags, upper capability flags
        charset = payload[pos + 2]
        capabilities |= int.from_bytes(payload[pos + 5 : pos + 7], "little") << 16
    return Handshake(payload[1:end].decode("utf-8", "replace"), capabilities, charset)


def ssl_request(handshake: Handshake) -> bytes:
    """The SSLRequest packet (sequence id 1): capability flags, max packet, charset, 23 zero bytes."""
    mirrored = handshake.capabilities & (CLIENT_LONG_PASSWORD | CLIENT_SECURE_CONNECTION)
    flags = CLIENT_SSL | CLIENT_PROTOCOL_41 | mirrored
    payload = struct.pack("<IIB23x", flags, _MAX_PACKET, handshake.charset)
    return len(payload).to_bytes(3, "little") + b"\x01" + payload


@dataclass
class MySQLNegotiator(Dialogue):
    """MySQL/MariaDB SSL request."""

    max_total = _MAX_HANDSHAKE + 4

    async def dialogue(self, wire: Wire, settings: StartTLSSettings, host: str) -> None:
        """Read the Initial Handshake, check CLIENT_SSL, send the SSLRequest."""
        sequence, payload = await read_packet(wire)
        handshake = parse_handshake(payload)
        if sequence != 0:
            raise protocol_error(f"initial handshake with sequence id {sequence}, expected 0")
        if not handshake.capabilities & CLIENT_SSL:
            raise StartTLSError(Reason.STARTTLS_UNSUPPORTED, f"{handshake.server_version} does not offer CLIENT_SSL")
        if not handshake.capabilities & CLIENT_PROTOCOL_41:
            raise StartTLSError(Reason.STARTTLS_UNSUPPORTED, "pre-4.1 protocol: no 32-byte SSL request")
        wire.expect_drained("the initial handshake")
        await wire.send(ssl_request(handshake))
