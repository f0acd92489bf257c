"""Build certificates ``cryptography``'s builder refuses to make: v1 and v2, duplicate extensions,
SHA-1 and MD5 signatures, mismatched key identifiers. A TBSCertificate made by the builder is edited
field by field (as DER) and signed again with the issuer's key.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from exporter import der

SIGNATURE_OIDS = {  # (key kind, hash) -> signatureAlgorithm OID, encoded
    ("rsa", "sha1"): "06092a864886f70d010105", ("rsa", "md5"): "06092a864886f70d010104",
    ("rsa", "sha256"): "06092a864886f70d01010b", ("rsa", "sha384"): "06092a864886f70d01010c",
    ("ec", "sha1"): "06072a8648ce3d0401", ("ec", "sha256"): "06082a8648ce3d040302",
    ("ec", "sha384"): "06082a8648ce3d040303", ("ec", "sha512"): "06082a8648ce3d040304",
    ("ed25519", ""): "06032b6570",
}
_HASHES = {"sha1": hashes.SHA1, "md5": hashes.MD5, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
           "sha512": hashes.SHA512}


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + content


def raw(data: bytes, item: der.Element) -> bytes:
    """An element's whole encoding (header included), from its (tag, value start, end)."""
    for header in range(2, 7):
        start = item[1] - header
        try:
            if start >= 0 and der.element(data, start, item[2])[1:] == item[1:]:
                return data[start:item[2]]
        except der.DerError:
            continue
    raise ValueError("no header")


def tbs_fields(cert: x509.Certificate) -> list[bytes]:
    """The TBSCertificate's fields, each encoded: [version], serial, signature, issuer, ..."""
    tbs = cert.tbs_certificate_bytes
    _, start, end = der.element(tbs, 0, len(tbs))
    return [raw(tbs, item) for item in der.elements(tbs, start, end)]


def kind_of(key: object) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "rsa"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ec"
    return "ed25519"


def sign_tbs(fields: list[bytes], key: object, hash_name: str = "sha256") -> bytes:
    """A certificate DER: the fields as a TBSCertificate, its signature field set, signed by ``key``."""
    kind = kind_of(key)
    hash_name = "" if kind == "ed25519" else hash_name
    oid = bytes.fromhex(SIGNATURE_OIDS[(kind, hash_name)])
    algorithm = tlv(0x30, oid + (b"\x05\x00" if kind == "rsa" else b""))
    index = 2 if fields[0][0] == 0xA0 else 1  # the TBS signature field, after [version] and serial
    fields = [*fields[:index], algorithm, *fields[index + 1:]]
    tbs = tlv(0x30, b"".join(fields))
    signature = _sign(key, tbs, hash_name)
    return tlv(0x30, tbs + algorithm + tlv(0x03, b"\x00" + signature))


def _sign(key: object, data: bytes, hash_name: str) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), _HASHES[hash_name]())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(_HASHES[hash_name]()))
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key.sign(data)


def edit(cert: x509.Certificate, key: object, change: Callable[[list[bytes]], list[bytes]],
         hash_name: str = "sha256") -> bytes:
    """Re-sign ``cert``'s TBSCertificate after ``change`` edited its fields."""
    return sign_tbs(change(tbs_fields(cert)), key, hash_name)


def as_v1(fields: list[bytes]) -> list[bytes]:
    """No version field (v1) and no extensions."""
    return [f for f in fields if f[0] not in (0xA0, 0xA3)]


def as_v2(fields: list[bytes]) -> list[bytes]:
    """Version 2 (value 1), no extensions (v2 has none)."""
    return [tlv(0xA0, tlv(0x02, b"\x01"))] + [f for f in fields if f[0] not in (0xA0, 0xA3)]


def with_duplicate_extension(fields: list[bytes]) -> list[bytes]:
    """The first extension appears twice."""
    extensions = fields[-1]
    assert extensions[0] == 0xA3
    inner = der.element(extensions, 0, len(extensions))
    sequence = der.element(extensions, inner[1], inner[2])
    items = der.elements(extensions, sequence[1], sequence[2])
    first = raw(extensions, items[0])
    body = b"".join(raw(extensions, i) for i in items) + first
    return [*fields[:-1], tlv(0xA3, tlv(0x30, body))]


# --- names with chosen string types -------------------------------------------------------------------

# A name attribute as the tests model it: (attribute type, value, string type). cryptography's public API
# picks the string type itself (UTF8String, or PrintableString for a few types), so names with other
# types are encoded here and put into a certificate's TBSCertificate.
Attribute = tuple[x509.ObjectIdentifier, str, str]
STRING_TAGS = {"utf8": 0x0C, "printable": 0x13, "t61": 0x14, "ia5": 0x16, "universal": 0x1C, "bmp": 0x1E}
_CODECS = {"utf8": "utf-8", "printable": "ascii", "t61": "latin-1", "ia5": "ascii", "universal": "utf-32-be",
           "bmp": "utf-16-be"}


def encode_oid(oid: x509.ObjectIdentifier) -> bytes:
    first, second, *rest = (int(arc) for arc in oid.dotted_string.split("."))
    body = b""
    for arc in (40 * first + second, *rest):
        chunk = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            chunk.append(0x80 | (arc & 0x7F))
        body += bytes(reversed(chunk))
    return tlv(0x06, body)


def encode_name(rdns: list[list[Attribute]]) -> bytes:
    """A Name: each RDN a SET OF AttributeTypeAndValue, sorted by encoding as DER wants."""
    def attribute(oid: x509.ObjectIdentifier, value: str, kind: str) -> bytes:
        return tlv(0x30, encode_oid(oid) + tlv(STRING_TAGS[kind], value.encode(_CODECS[kind])))

    return tlv(0x30, b"".join(tlv(0x31, b"".join(sorted(attribute(*a) for a in rdn))) for rdn in rdns))


def with_names(cert: x509.Certificate, subject: bytes, issuer: bytes) -> x509.Certificate:
    """``cert`` with these encoded names. The signature is kept, so it no longer matches: only for
    readers that do not verify (exporter/der.py, cryptography's parser)."""
    fields = tbs_fields(cert)
    index = 3 if fields[0][0] == 0xA0 else 2  # issuer, after [version], serial and signature
    fields[index], fields[index + 2] = issuer, subject
    whole = cert.public_bytes(serialization.Encoding.DER)
    _, start, end = der.element(whole, 0, len(whole))
    _, algorithm, signature = der.elements(whole, start, end)
    tbs = tlv(0x30, b"".join(fields))
    return x509.load_der_x509_certificate(tlv(0x30, tbs + raw(whole, algorithm) + raw(whole, signature)))
