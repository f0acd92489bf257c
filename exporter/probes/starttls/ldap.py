"""LDAP StartTLS (RFC 4511 section 4.14, RFC 4513): one ExtendedRequest, one ExtendedResponse.

Sent: LDAPMessage{messageID 1, ExtendedRequest{requestName 1.3.6.1.4.1.1466.20037}} in BER.
Expected: LDAPMessage{messageID 1, ExtendedResponse{resultCode success(0), ...}}. The few BER
definite-length TLVs involved are encoded and parsed here; no LDAP library is needed for one PDU.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.config import StartTLSSettings
from exporter.probes.base import Reason
from exporter.probes.starttls.base import StartTLSError
from exporter.probes.starttls.wire import Dialogue, Wire, protocol_error, show

STARTTLS_OID = b"1.3.6.1.4.1.1466.20037"
_MESSAGE_ID = 1
_SEQUENCE, _INTEGER, _ENUMERATED = 0x30, 0x02, 0x0A
_EXTENDED_REQUEST, _EXTENDED_RESPONSE = 0x77, 0x78  # [APPLICATION 23] / [APPLICATION 24], constructed
_REQUEST_NAME = 0x80  # [0] primitive
_MAX_PDU = 16 * 1024
_PROTOCOL_ERROR = 2  # resultCode for an unrecognised extended operation (RFC 4511 section 4.12)


def _encode(tag: int, value: bytes) -> bytes:
    length = len(value)
    if length < 0x80:
        return bytes([tag, length]) + value
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + value


def starttls_request(message_id: int = _MESSAGE_ID) -> bytes:
    """The BER of the StartTLS ExtendedRequest."""
    body = _encode(_INTEGER, bytes([message_id])) + _encode(_EXTENDED_REQUEST, _encode(_REQUEST_NAME, STARTTLS_OID))
    return _encode(_SEQUENCE, body)


def _length(data: bytes, pos: int) -> tuple[int, int]:
    """Decode a definite BER length at ``pos``; return (length, position after it)."""
    if pos >= len(data):
        raise protocol_error("truncated BER length")
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    count = first & 0x7F
    if count == 0 or count > 4 or pos + 1 + count > len(data):
        raise protocol_error(f"unsupported BER length form 0x{first:02x}")  # LDAP forbids indefinite
    return int.from_bytes(data[pos + 1 : pos + 1 + count], "big"), pos + 1 + count


def read_tlv(data: bytes, pos: int, tag: int) -> tuple[bytes, int]:
    """The value of the TLV at ``pos``, which must carry ``tag``; return (value, next position)."""
    if pos >= len(data) or data[pos] != tag:
        found = f"0x{data[pos]:02x}" if pos < len(data) else "end of data"
        raise protocol_error(f"expected BER tag 0x{tag:02x}, found {found}")
    length, start = _length(data, pos + 1)
    if start + length > len(data):
        raise protocol_error("BER value runs past the end of the message")
    return data[start : start + length], start + length


async def read_message(wire: Wire) -> bytes:
    """One LDAPMessage (the whole SEQUENCE TLV) from the wire."""
    head = await wire.read_exactly(2)
    if head[0] != _SEQUENCE:
        raise protocol_error(f"not an LDAP message: {show(head)}")
    extra = head[1] & 0x7F if head[1] >= 0x80 else 0
    head += await wire.read_exactly(extra)
    length, _ = _length(head, 1)
    if length > _MAX_PDU:
        raise protocol_error(f"LDAP message of {length} bytes is larger than {_MAX_PDU}")
    return head + await wire.read_exactly(length)


def parse_extended_response(message: bytes) -> tuple[int, int, bytes]:
    """(messageID, resultCode, diagnosticMessage) of an LDAPMessage holding an ExtendedResponse."""
    body, _ = read_tlv(message, 0, _SEQUENCE)
    message_id, pos = read_tlv(body, 0, _INTEGER)
    if not 1 <= len(message_id) <= 4:
        raise protocol_error("bad LDAP messageID")
    response, _ = read_tlv(body, pos, _EXTENDED_RESPONSE)
    code, pos = read_tlv(response, 0, _ENUMERATED)
    if not 1 <= len(code) <= 4:
        raise protocol_error("bad LDAP resultCode")
    _matched_dn, pos = read_tlv(response, pos, 0x04)
    diagnostic, _ = read_tlv(response, pos, 0x04)
    return int.from_bytes(message_id, "big"), int.from_bytes(code, "big"), diagnostic


@dataclass
class LDAPNegotiator(Dialogue):
    """LDAP StartTLS extended operation."""

    max_total = _MAX_PDU + 8

    async def dialogue(self, wire: Wire, settings: StartTLSSettings, host: str) -> None:
        """Send the ExtendedRequest, check the ExtendedResponse's resultCode."""
        await wire.send(starttls_request())
        message_id, code, diagnostic = parse_extended_response(await read_message(wire))
        if message_id == 0:
            # An unsolicited Notice of Disconnection (RFC 4511 section 4.4.1): the server is leaving.
            raise StartTLSError(Reason.STARTTLS_REFUSED, f"notice of disconnection, resultCode {code}")
        if message_id != _MESSAGE_ID:
            raise protocol_error(f"response to messageID {message_id}, expected {_MESSAGE_ID}")
        if code == _PROTOCOL_ERROR:
            raise StartTLSError(Reason.STARTTLS_UNSUPPORTED, f"StartTLS not recognised: {show(diagnostic)}")
        if code != 0:
            raise StartTLSError(Reason.STARTTLS_REFUSED, f"StartTLS resultCode {code}: {show(diagnostic)}")
        wire.expect_drained("the StartTLS response")
