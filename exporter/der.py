"""A strict reader for the certificate fields the metrics need, straight from the DER.

Why not ``cryptography``'s objects: it builds a Python object per name attribute, OID, extension
and date. For a new leaf that was about 70 µs in a tight loop and 200 µs inside a busy exporter
(whose handshakes evict the interpreter's caches between parses), which kept first-sight
``/probe`` below blackbox_exporter's rate (docs/performance.md). This module walks the DER with
indices and builds only the strings and numbers the metrics hold. ``cryptography`` stays the only
verifier: of trust (exporter/certs.py) and of a self-issued certificate's own signature.

Every tag and length read is checked; anything that is not what the reader expects raises
:class:`DerError` (a ``ValueError``) with the byte offset. What it reads, as ``cryptography`` reads it
(tests/exporter/test_der.py compares the two on generated certificates):
- the serial, both dates (UTCTime years 50-99 are 19xx) and the outer signature algorithm's name;
- a name's commonName, decoded as x509.NameAttribute values are (BMPString as UTF-16,
  UniversalString as UTF-32, BIT STRING as bytes, every other string type as strict UTF-8); subject
  and issuer compared as ``x509.Name.__eq__`` does (RDN by RDN, attribute sets, string types ignored);
- the subjectAltName's dNSName and iPAddress entries (address ranges, 8 or 32 bytes, are skipped);
- basicConstraints' cA flag;
- the subject public key's type and size (RSA and DSA by their modulus, EC by its named curve, or by
  its order when the parameters are explicit, as OpenSSL sizes it).
It also hands out the signed parts (:func:`signed_parts`), so a certificate's own key can be checked
against its signature whatever the algorithm (exporter/certs.py decides self-signed that way).
It does not decode the parts it does not need, so a certificate ``cryptography`` would refuse for
one of them (an odd extension, an explicit cA FALSE) is still reported; trust verification, which
is ``cryptography``'s, still refuses it.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec

# Universal tags (X.690), and the context tags a certificate uses.
BOOLEAN, INTEGER, BIT_STRING, OCTET_STRING, OID = 0x01, 0x02, 0x03, 0x04, 0x06
SEQUENCE, SET = 0x30, 0x31
_BMP_STRING, _UNIVERSAL_STRING = 0x1E, 0x1C
_VERSION, _EXTENSIONS = 0xA0, 0xA3  # [0] EXPLICIT version, [3] EXPLICIT extensions (TBSCertificate)
_DNS_NAME, _IP_ADDRESS = 0x82, 0x87  # [2] and [7] IMPLICIT GeneralName choices

_COMMON_NAME = bytes.fromhex("550403")  # 2.5.4.3
_SUBJECT_ALT_NAME = bytes.fromhex("551d11")  # 2.5.29.17
_BASIC_CONSTRAINTS = bytes.fromhex("551d13")  # 2.5.29.19
_COMMON_NAME_TLV, _SUBJECT_ALT_NAME_TLV, _BASIC_CONSTRAINTS_TLV = (
    bytes([OID, len(oid)]) + oid for oid in (_COMMON_NAME, _SUBJECT_ALT_NAME, _BASIC_CONSTRAINTS))
_RSA = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1 rsaEncryption
_RSA_PSS = bytes.fromhex("2a864886f70d01010a")  # 1.2.840.113549.1.1.10 RSASSA-PSS
_EC = bytes.fromhex("2a8648ce3d0201")  # 1.2.840.10045.2.1 id-ecPublicKey
_DSA = bytes.fromhex("2a8648ce380401")  # 1.2.840.10040.4.1
_FIXED_SIZE_KEYS = {
    bytes.fromhex("2b6570"): ("ed25519", 256),  # 1.3.101.112
    bytes.fromhex("2b6571"): ("ed448", 456),  # 1.3.101.113
}

Element = tuple[int, int, int]  # (tag, first byte of the value, end of the value)
NameValue = str | bytes
Name = tuple[tuple[tuple[bytes, NameValue], ...], ...]  # RDNs of (attribute type OID, value)


class DerError(ValueError):
    """The bytes are not the DER this reader expects."""


class CertFields(NamedTuple):
    """What the metrics need from a certificate."""

    serial: str  # lower-case hex, "-" first when negative (as format(cert.serial_number, "x"))
    not_before: float  # Unix time
    not_after: float
    subject_cn: str  # "" when there is none
    issuer_cn: str
    self_issued: bool  # subject == issuer as x509.Name compares them (self-signed is a signature check)
    key_type: str  # rsa, ec, ed25519, ed448, dsa, unknown
    key_bits: int  # 0 when unknown
    signature_algorithm: str  # OpenSSL-style name as cryptography names the OID, else the dotted OID
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]  # canonical text: str(ipaddress.ip_address(...))
    is_ca: bool


def element(der: bytes, pos: int, end: int) -> Element:
    """The element starting at ``pos``, which must fit before ``end``."""
    if pos + 2 > end:
        raise DerError(f"truncated element at byte {pos}")
    tag, length = der[pos], der[pos + 1]
    if tag & 0x1F == 0x1F:
        raise DerError(f"multi-byte tag at byte {pos}")
    start = pos + 2
    if length < 0x80 and start + length <= end:  # the short form: most elements
        return tag, start, start + length
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4 or start + count > end:
            raise DerError(f"bad length of the element at byte {pos}")
        length = int.from_bytes(der[start:start + count], "big")
        # DER lengths are minimal: the long form only from 128 on, without leading zero bytes.
        if length < 0x80 or der[start] == 0:
            raise DerError(f"a non-minimal length of the element at byte {pos}")
        start += count
    if start + length > end:
        raise DerError(f"the element at byte {pos} runs past its container")
    return tag, start, start + length


def expect(der: bytes, pos: int, end: int, tag: int) -> Element:
    """:func:`element`, which must have ``tag``."""
    found = element(der, pos, end)
    if found[0] != tag:
        raise DerError(f"expected tag 0x{tag:02x} at byte {pos}, found 0x{found[0]:02x}")
    return found


def elements(der: bytes, start: int, end: int) -> list[Element]:
    """The elements that exactly fill ``der[start:end]``."""
    found = []
    while start < end:
        item = element(der, start, end)
        found.append(item)
        start = item[2]
    return found


class SignedParts(NamedTuple):
    """What checking a certificate's signature needs, as bytes of the certificate."""

    tbs: bytes  # the whole TBSCertificate element, as signed
    algorithm: bytes  # the outer signatureAlgorithm's OID content bytes
    parameters: bytes  # its parameters element, encoded ("" when absent)
    signature: bytes  # the signatureValue BIT STRING's bits (after the unused-bits byte)
    public_key: bytes  # the whole SubjectPublicKeyInfo element


def _outer(der: bytes) -> tuple[Element, Element, Element]:
    """The three elements of a Certificate: tbsCertificate, signatureAlgorithm, signatureValue."""
    _, start, end = expect(der, 0, len(der), SEQUENCE)  # Certificate
    if end != len(der):
        raise DerError(f"{len(der) - end} bytes after the certificate, at byte {end}")
    parts = elements(der, start, end)
    if [p[0] for p in parts] != [SEQUENCE, SEQUENCE, BIT_STRING]:
        raise DerError(f"not a Certificate (tbsCertificate, signatureAlgorithm, signatureValue) at byte {start}")
    return parts[0], parts[1], parts[2]


def signed_parts(der: bytes) -> SignedParts:
    """The signed bytes, the signature and its algorithm, and the public key; raises DerError."""
    tbs, algorithm, value = _outer(der)
    _, oid_start, oid_end = expect(der, algorithm[1], algorithm[2], OID)
    fields = _tbs_fields(der, tbs)
    if value[1] == value[2] or der[value[1]] != 0:
        raise DerError(f"a signature that is not whole bytes at byte {value[1]}")
    spki = fields[5]
    return SignedParts(
        tbs=der[element(der, 0, len(der))[1]:tbs[2]],  # the first element of the Certificate, header included

        algorithm=der[oid_start:oid_end],
        parameters=der[oid_end:algorithm[2]],
        signature=der[value[1] + 1:value[2]],
        public_key=der[fields[4][2]:spki[2]],  # header included: it starts where the subject ends
    )


def _tbs_fields(der: bytes, tbs: Element) -> list[Element]:
    """The TBSCertificate's fields from serialNumber on (the version checked and dropped)."""
    fields = elements(der, tbs[1], tbs[2])
    if fields and fields[0][0] == _VERSION:
        version = _only(der, fields[0], INTEGER)
        if _integer(der, version) not in (0, 1, 2):  # v1, v2, v3
            raise DerError(f"an unknown certificate version at byte {version[1]}")
        del fields[0]
    # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, then optional fields
    if len(fields) < 6 or [f[0] for f in fields[:6]] != _TBS_TAGS:
        raise DerError(f"not a TBSCertificate at byte {tbs[1]}")
    for tag, start, _ in fields[6:]:
        if tag not in _TBS_OPTIONAL:
            raise DerError(f"an unexpected field (tag 0x{tag:02x}) in the TBSCertificate at byte {start}")
    return fields


def public_key_of(der: bytes) -> tuple[str, int]:
    """Only the subject public key's type and size (what a security level looks at)."""
    return read_key(der, _tbs_fields(der, _outer(der)[0])[5])


def certificate_fields(der: bytes) -> CertFields:
    """Read the fields the metrics need from one DER certificate; raises :class:`DerError`."""
    tbs, signature, _ = _outer(der)
    fields = _tbs_fields(der, tbs)
    serial, _, issuer, validity, subject, spki = fields[:6]
    not_before, not_after = read_validity(der, validity)
    subject_rdns, issuer_rdns = elements(der, subject[1], subject[2]), elements(der, issuer[1], issuer[2])
    key_type, key_bits = read_key(der, spki)
    alt_names: Element | None = None
    constraints: Element | None = None
    for tag, ext_start, ext_end in fields[6:]:
        if tag == _EXTENSIONS:
            alt_names, constraints = find_extensions(der, expect(der, ext_start, ext_end, SEQUENCE))
    dns_names, ips = read_alt_names(der, alt_names) if alt_names else ((), ())
    return CertFields(
        serial=format(_integer(der, serial), "x"),
        not_before=not_before,
        not_after=not_after,
        subject_cn=common_name(der, subject_rdns),
        issuer_cn=common_name(der, issuer_rdns),
        # Equal names have as many RDNs; other bytes may still be one name in other string types.
        self_issued=len(subject_rdns) == len(issuer_rdns) and (
            der[subject[1]:subject[2]] == der[issuer[1]:issuer[2]]
            or same_name(read_name(der, subject_rdns), read_name(der, issuer_rdns))),
        key_type=key_type,
        key_bits=key_bits,
        signature_algorithm=_algorithm_name(_algorithm_oid(der, signature)),
        dns_names=dns_names,
        ip_addresses=ips,
        is_ca=read_ca_flag(der, constraints) if constraints else False,
    )


_TBS_TAGS = [INTEGER, SEQUENCE, SEQUENCE, SEQUENCE, SEQUENCE, SEQUENCE]
_TBS_OPTIONAL = (0x81, 0xA1, 0x82, 0xA2, _EXTENSIONS)  # [1] issuerUniqueID, [2] subjectUniqueID, [3]


def _algorithm_oid(der: bytes, algorithm: Element) -> bytes:
    """The OID of an AlgorithmIdentifier (SEQUENCE { OID, parameters })."""
    _, start, end = expect(der, algorithm[1], algorithm[2], OID)
    return der[start:end]


def _integer(der: bytes, integer: Element) -> int:
    if integer[1] == integer[2]:
        raise DerError(f"an empty INTEGER at byte {integer[1]}")
    if integer[2] - integer[1] > 1 and (der[integer[1]], der[integer[1] + 1] & 0x80) in ((0, 0), (0xFF, 0x80)):
        raise DerError(f"a non-minimal INTEGER at byte {integer[1]}")
    return int.from_bytes(der[integer[1]:integer[2]], "big", signed=True)


_SIG = x509.oid.SignatureAlgorithmOID
# The signature_algorithm label: OpenSSL's names (as `openssl x509 -text` prints them, which
# tests/exporter/test_der.py checks), keyed by the public OID constants; an unlisted OID is its dotted form.
SIGNATURE_ALGORITHMS: dict[str, str] = {oid.dotted_string: name for oid, name in (
    (_SIG.RSA_WITH_MD5, "md5WithRSAEncryption"),
    (_SIG.RSA_WITH_SHA1, "sha1WithRSAEncryption"),
    (_SIG.RSA_WITH_SHA224, "sha224WithRSAEncryption"),
    (_SIG.RSA_WITH_SHA256, "sha256WithRSAEncryption"),
    (_SIG.RSA_WITH_SHA384, "sha384WithRSAEncryption"),
    (_SIG.RSA_WITH_SHA512, "sha512WithRSAEncryption"),
    (_SIG.RSASSA_PSS, "rsassaPss"),
    (_SIG.ECDSA_WITH_SHA1, "ecdsa-with-SHA1"),
    (_SIG.ECDSA_WITH_SHA224, "ecdsa-with-SHA224"),
    (_SIG.ECDSA_WITH_SHA256, "ecdsa-with-SHA256"),
    (_SIG.ECDSA_WITH_SHA384, "ecdsa-with-SHA384"),
    (_SIG.ECDSA_WITH_SHA512, "ecdsa-with-SHA512"),
    (_SIG.DSA_WITH_SHA1, "dsa-with-sha1"),
    (_SIG.DSA_WITH_SHA224, "dsa-with-sha224"),
    (_SIG.DSA_WITH_SHA256, "dsa-with-sha256"),
    (_SIG.ED25519, "ed25519"),
    (_SIG.ED448, "ed448"),
)}


@functools.lru_cache(maxsize=256)
def _algorithm_name(oid: bytes) -> str:
    text = dotted(oid)
    return SIGNATURE_ALGORITHMS.get(text, text)


# --- validity ------------------------------------------------------------------------------------

_UTC_TIME, _GENERALIZED_TIME = 0x17, 0x18
_EPOCH = dt.datetime(1970, 1, 1)


def read_validity(der: bytes, validity: Element) -> tuple[float, float]:
    """notBefore and notAfter as Unix time."""
    times = elements(der, validity[1], validity[2])
    if len(times) != 2:
        raise DerError(f"a Validity of {len(times)} elements at byte {validity[1]}")
    return read_time(der, times[0]), read_time(der, times[1])


def read_time(der: bytes, time: Element) -> float:
    """A UTCTime (YYMMDDHHMMSSZ, 1950-2049) or GeneralizedTime (YYYYMMDDHHMMSS[.f]Z) as Unix time."""
    tag, start, end = time
    text = der[start:end]
    digits = 2 if tag == _UTC_TIME else 4 if tag == _GENERALIZED_TIME else 0
    whole = text[:digits + 10]
    fraction = text[digits + 10:-1]
    fraction_ok = not fraction or (digits == 4 and fraction[:1] == b"." and fraction[1:].isdigit())
    if not digits or not text.endswith(b"Z") or len(whole) != digits + 10 or not whole.isdigit() or not fraction_ok:
        raise DerError(f"not a DER time at byte {start}: {text[:20]!r}")
    value = int(whole)  # YYMMDDHHMMSS or YYYYMMDDHHMMSS
    year = value // 10**10
    if digits == 2:
        year += 1900 if year >= 50 else 2000
    try:  # datetime checks the ranges (no 13th month, no February 30th)
        moment = (dt.datetime(year, value // 10**8 % 100, value // 10**6 % 100, value // 10**4 % 100,
                              value // 100 % 100, value % 100) - _EPOCH).total_seconds()
    except ValueError as exc:
        raise DerError(f"not a valid time at byte {start}: {exc}") from None
    return moment + float(b"0" + fraction) if fraction else moment


# --- names ---------------------------------------------------------------------------------------


def common_name(der: bytes, rdns: list[Element]) -> str:
    """The first commonName of a name's RDNs, as text ("" when there is none)."""
    for rdn in rdns:
        for _, attr_start, attr_end in _attributes(der, rdn):
            if der[attr_start] != OID:
                raise DerError(f"expected an attribute type (OID) at byte {attr_start}")
            if der.startswith(_COMMON_NAME_TLV, attr_start, attr_end):  # the attribute's type, encoded
                tag, value_start, value_end = element(der, attr_start + len(_COMMON_NAME_TLV), attr_end)
                value = _decode_string(tag, der[value_start:value_end], value_start)
                return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return ""


def read_name(der: bytes, rdns: list[Element]) -> Name:
    """A name's RDNs, each a tuple of (attribute type OID bytes, decoded value)."""
    name = []
    for rdn in rdns:
        attributes = []
        for _, attr_start, attr_end in _attributes(der, rdn):
            _, oid_start, oid_end = expect(der, attr_start, attr_end, OID)
            value_tag, value_start, value_end = element(der, oid_end, attr_end)
            if value_end != attr_end:
                raise DerError(f"trailing bytes in the attribute at byte {attr_start}")
            value = _decode_string(value_tag, der[value_start:value_end], value_start)
            attributes.append((der[oid_start:oid_end], value))
        name.append(tuple(attributes))
    return tuple(name)


def _attributes(der: bytes, rdn: Element) -> list[Element]:
    """The AttributeTypeAndValue SEQUENCEs of one RDN (a SET)."""
    if rdn[0] != SET:
        raise DerError(f"expected a SET (RDN) at byte {rdn[1]}")
    found = elements(der, rdn[1], rdn[2])
    for tag, start, _ in found:
        if tag != SEQUENCE:
            raise DerError(f"expected an AttributeTypeAndValue at byte {start}")
    return found


def _decode_string(tag: int, value: bytes, pos: int) -> NameValue:
    try:
        if tag == _BMP_STRING:
            return value.decode("utf-16-be")
        if tag == _UNIVERSAL_STRING:
            return value.decode("utf-32-be")
        if tag == BIT_STRING:
            return value
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DerError(f"undecodable name attribute at byte {pos}: {exc.reason}") from None


def same_name(a: Name, b: Name) -> bool:
    """Equal as x509.Name compares: RDN by RDN, each as a set of (type, value), string types ignored."""
    return len(a) == len(b) and all(frozenset(x) == frozenset(y) for x, y in zip(a, b, strict=True))


# --- extensions ----------------------------------------------------------------------------------


def find_extensions(der: bytes, extensions: Element) -> tuple[Element | None, Element | None]:
    """The extnValue (an OCTET STRING) of subjectAltName and of basicConstraints, where present.

    Only these two are decoded; any extension appearing twice is an error (RFC 5280 4.2), as for
    ``cryptography`` and OpenSSL.
    """
    found: list[Element | None] = [None, None]
    seen: set[bytes] = set()
    for tag, start, end in elements(der, extensions[1], extensions[2]):
        if tag != SEQUENCE:
            raise DerError(f"expected an Extension at byte {start}")
        _, oid_start, oid_end = expect(der, start, end, OID)
        if der[oid_start:oid_end] in seen:
            raise DerError(f"extension {dotted(der[oid_start:oid_end])} appears twice (at byte {start})")
        seen.add(der[oid_start:oid_end])
        # Compared encoded (tag, length, OID): the other extensions are skipped without decoding.
        which = 0 if der.startswith(_SUBJECT_ALT_NAME_TLV, start, end) else \
            1 if der.startswith(_BASIC_CONSTRAINTS_TLV, start, end) else None
        if which is None:
            continue
        value = element(der, start + len(_SUBJECT_ALT_NAME_TLV), end)
        if value[0] == BOOLEAN:  # critical
            value = element(der, value[2], end)
        if value[0] != OCTET_STRING or value[2] != end:
            raise DerError(f"malformed Extension at byte {start}")
        found[which] = value
    return found[0], found[1]


def read_alt_names(der: bytes, value: Element) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """subjectAltName's DNS names and IP addresses, in order."""
    _, start, end = _only(der, value, SEQUENCE)
    dns_names: list[str] = []
    ips: list[str] = []
    for tag, name_start, name_end in elements(der, start, end):
        if tag == _DNS_NAME:
            dns_names.append(_decode_text(der[name_start:name_end], name_start))
        elif tag == _IP_ADDRESS:
            size = name_end - name_start
            if size == 4:  # as str(IPv4Address), without building one
                ips.append(".".join(map(str, der[name_start:name_end])))
            elif size == 16:
                ips.append(str(ipaddress.IPv6Address(der[name_start:name_end])))
            elif size not in (8, 32):  # address and mask: a range, as in name constraints
                raise DerError(f"an iPAddress of {size} bytes at byte {name_start}")
    return tuple(dns_names), tuple(ips)


def read_ca_flag(der: bytes, value: Element) -> bool:
    """basicConstraints' cA (DEFAULT FALSE)."""
    _, start, end = _only(der, value, SEQUENCE)
    if start == end:
        return False
    tag, flag_start, flag_end = element(der, start, end)
    if tag != BOOLEAN:
        return False  # only pathLenConstraint
    if flag_end - flag_start != 1 or der[flag_start] not in (0x00, 0xFF):
        raise DerError(f"a BOOLEAN that is not DER at byte {flag_start}")
    return der[flag_start] == 0xFF


def _only(der: bytes, value: Element, tag: int) -> Element:
    """The one element of tag ``tag`` that fills an OCTET STRING."""
    inner = expect(der, value[1], value[2], tag)
    if inner[2] != value[2]:
        raise DerError(f"trailing bytes after the element at byte {value[1]}")
    return inner


def _decode_text(value: bytes, pos: int) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DerError(f"undecodable name at byte {pos}: {exc.reason}") from None


# --- subject public key --------------------------------------------------------------------------


def read_key(der: bytes, spki: Element) -> tuple[str, int]:
    """The subject public key's type and size in bits, as ``cryptography``'s key objects give them."""
    _, alg_start, alg_end = expect(der, spki[1], spki[2], SEQUENCE)
    _, oid_start, oid_end = expect(der, alg_start, alg_end, OID)
    _, bits_start, bits_end = expect(der, alg_end, spki[2], BIT_STRING)
    oid = der[oid_start:oid_end]
    params = element(der, oid_end, alg_end) if oid_end < alg_end else None
    if oid in (_RSA, _RSA_PSS):
        # RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }, after the unused-bits byte
        _, start, end = expect(der, bits_start + 1, bits_end, SEQUENCE)
        return "rsa", _integer_bits(der, expect(der, start, end, INTEGER))
    if oid == _EC:
        if params and params[0] == SEQUENCE:  # explicit ECParameters: the size is the order's (as OpenSSL)
            return "ec", _explicit_curve_bits(der, params)
        return "ec", _curve_bits(der[params[1]:params[2]]) if params and params[0] == OID else 0
    if oid == _DSA:
        if params is None or params[0] != SEQUENCE:
            return "dsa", 0
        return "dsa", _integer_bits(der, expect(der, params[1], params[2], INTEGER))  # p of (p, q, g)
    return _FIXED_SIZE_KEYS.get(oid, ("unknown", 0))


def _explicit_curve_bits(der: bytes, params: Element) -> int:
    """The bit size of an explicit curve's order (SEC 1 ECParameters: version, fieldID, curve, base, order)."""
    items = elements(der, params[1], params[2])
    if len(items) < 5 or [i[0] for i in items[:5]] != [INTEGER, SEQUENCE, SEQUENCE, OCTET_STRING, INTEGER]:
        raise DerError(f"malformed explicit EC parameters at byte {params[1]}")
    return _integer_bits(der, items[4])


def _integer_bits(der: bytes, integer: Element) -> int:
    return int.from_bytes(der[integer[1]:integer[2]], "big", signed=True).bit_length()


@functools.lru_cache(maxsize=64)
def _curve_bits(oid: bytes) -> int:
    try:
        return ec.get_curve_for_oid(x509.ObjectIdentifier(dotted(oid)))().key_size
    except (LookupError, UnsupportedAlgorithm, ValueError):
        return 0  # a curve cryptography does not know


def dotted(oid: bytes) -> str:
    """An OID's content bytes as dotted text ("2.5.29.17")."""
    if not oid or oid[-1] & 0x80:
        raise DerError(f"malformed OID {oid.hex()}")
    arcs: list[int] = []
    value = 0
    for byte in oid:
        value = value << 7 | byte & 0x7F
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    top = min(arcs[0] // 40, 2)  # the first subidentifier packs the first two arcs
    return ".".join(map(str, [top, arcs[0] - 40 * top, *arcs[1:]]))


# --- signature algorithms ------------------------------------------------------------------------


def _oid(text: str) -> bytes:
    arcs = [int(a) for a in text.split(".")]
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            chunk.append(arc & 0x7F | 0x80)
        body += bytes(reversed(chunk))
    return bytes(body)


_DIGESTS = {_oid(k): v for k, v in {
    "1.2.840.113549.2.5": "md5", "1.3.14.3.2.26": "sha1", "2.16.840.1.101.3.4.2.4": "sha224",
    "2.16.840.1.101.3.4.2.1": "sha256", "2.16.840.1.101.3.4.2.2": "sha384", "2.16.840.1.101.3.4.2.3": "sha512",
    "2.16.840.1.101.3.4.2.7": "sha3_224", "2.16.840.1.101.3.4.2.8": "sha3_256",
    "2.16.840.1.101.3.4.2.9": "sha3_384", "2.16.840.1.101.3.4.2.10": "sha3_512",
}.items()}
# signatureAlgorithm OID -> (scheme, digest); RSASSA-PSS takes its digest from the parameters.
SIGNATURE_SCHEMES = {_oid(k): v for k, v in {
    "1.2.840.113549.1.1.4": ("rsa", "md5"), "1.2.840.113549.1.1.5": ("rsa", "sha1"),
    "1.2.840.113549.1.1.14": ("rsa", "sha224"), "1.2.840.113549.1.1.11": ("rsa", "sha256"),
    "1.2.840.113549.1.1.12": ("rsa", "sha384"), "1.2.840.113549.1.1.13": ("rsa", "sha512"),
    "2.16.840.1.101.3.4.3.13": ("rsa", "sha3_224"), "2.16.840.1.101.3.4.3.14": ("rsa", "sha3_256"),
    "2.16.840.1.101.3.4.3.15": ("rsa", "sha3_384"), "2.16.840.1.101.3.4.3.16": ("rsa", "sha3_512"),
    "1.2.840.113549.1.1.10": ("rsa-pss", ""),
    "1.2.840.10045.4.1": ("ecdsa", "sha1"), "1.2.840.10045.4.3.1": ("ecdsa", "sha224"),
    "1.2.840.10045.4.3.2": ("ecdsa", "sha256"), "1.2.840.10045.4.3.3": ("ecdsa", "sha384"),
    "1.2.840.10045.4.3.4": ("ecdsa", "sha512"), "2.16.840.1.101.3.4.3.9": ("ecdsa", "sha3_224"),
    "2.16.840.1.101.3.4.3.10": ("ecdsa", "sha3_256"), "2.16.840.1.101.3.4.3.11": ("ecdsa", "sha3_384"),
    "2.16.840.1.101.3.4.3.12": ("ecdsa", "sha3_512"),
    "1.2.840.10040.4.3": ("dsa", "sha1"), "2.16.840.1.101.3.4.3.1": ("dsa", "sha224"),
    "2.16.840.1.101.3.4.3.2": ("dsa", "sha256"),
    "1.3.101.112": ("ed25519", ""), "1.3.101.113": ("ed448", ""),
}.items()}
_MGF1 = _oid("1.2.840.113549.1.1.8")


class SignatureScheme(NamedTuple):
    """How a certificate's signature is checked: the scheme, its digest, and RSASSA-PSS's MGF1 digest and salt."""

    scheme: str  # rsa, rsa-pss, ecdsa, dsa, ed25519, ed448; "" when unknown
    digest: str  # md5, sha1, sha256, ...; "" for EdDSA and when unknown
    mgf_digest: str = ""
    salt_length: int = 0


def signature_scheme(parts: SignedParts) -> SignatureScheme:
    """The signature scheme of a certificate's outer signatureAlgorithm; raises DerError on bad parameters."""
    scheme, digest = SIGNATURE_SCHEMES.get(parts.algorithm, ("", ""))
    if scheme != "rsa-pss":
        return SignatureScheme(scheme, digest)
    return _pss(parts.parameters)


def signature_digest(parts: SignedParts) -> str:
    """The digest of a certificate's signature ("ed25519"/"ed448" for EdDSA, "" when unknown)."""
    found = signature_scheme(parts)
    return found.scheme if found.scheme in ("ed25519", "ed448") else found.digest


def _pss(params: bytes) -> SignatureScheme:
    # RSASSA-PSS-params: [0] hashAlgorithm DEFAULT sha1, [1] maskGenAlgorithm DEFAULT mgf1SHA1,
    # [2] saltLength DEFAULT 20, [3] trailerField DEFAULT 1 (RFC 4055 section 3.1).
    digest, mgf, salt = "sha1", "sha1", 20
    if not params:
        return SignatureScheme("rsa-pss", digest, mgf, salt)
    _, start, end = expect(params, 0, len(params), SEQUENCE)
    for tag, field_start, field_end in elements(params, start, end):
        if tag == 0xA0:
            digest = _digest_of(params, expect(params, field_start, field_end, SEQUENCE))
        elif tag == 0xA1:
            _, alg_start, alg_end = expect(params, field_start, field_end, SEQUENCE)
            _, oid_start, oid_end = expect(params, alg_start, alg_end, OID)
            if params[oid_start:oid_end] != _MGF1:
                return SignatureScheme("", "")
            mgf = _digest_of(params, expect(params, oid_end, alg_end, SEQUENCE))
        elif tag == 0xA2:
            salt = _integer(params, expect(params, field_start, field_end, INTEGER))
    return SignatureScheme("rsa-pss", digest, mgf, salt)


def _digest_of(data: bytes, algorithm: Element) -> str:
    _, start, end = expect(data, algorithm[1], algorithm[2], OID)
    return _DIGESTS.get(data[start:end], "")


# --- usages (what a TLS client's purpose check reads) --------------------------------------------

_EXTENDED_KEY_USAGE = _oid("2.5.29.37")
_KEY_USAGE = _oid("2.5.29.15")
_NS_CERT_TYPE = _oid("2.16.840.1.113730.1.1")


class Usages(NamedTuple):
    """extendedKeyUsage, keyUsage and Netscape cert type, each None when absent."""

    extended: tuple[str, ...] | None  # dotted OIDs
    key_usage: int | None  # the first two bytes of the BIT STRING, big-endian (digitalSignature = 0x8000)
    ns_cert_type: int | None  # the first byte (SSL server = 0x40)


def usages(der: bytes) -> Usages:
    """The usage extensions of a certificate; raises DerError."""
    fields = _tbs_fields(der, _outer(der)[0])
    found: dict[bytes, Element] = {}
    for tag, start, end in fields[6:]:
        if tag != _EXTENSIONS:
            continue
        _, seq_start, seq_end = expect(der, start, end, SEQUENCE)
        for _, ext_start, ext_end in elements(der, seq_start, seq_end):
            _, oid_start, oid_end = expect(der, ext_start, ext_end, OID)
            value = element(der, oid_end, ext_end)
            if value[0] == BOOLEAN:
                value = element(der, value[2], ext_end)
            found.setdefault(der[oid_start:oid_end], value)
    extended = None
    if _EXTENDED_KEY_USAGE in found:
        _, start, end = _only(der, found[_EXTENDED_KEY_USAGE], SEQUENCE)
        purposes = elements(der, start, end)
        if any(tag != OID for tag, _, _ in purposes):
            raise DerError(f"an extendedKeyUsage that is not a list of OIDs at byte {start}")
        extended = tuple(dotted(der[s:e]) for _, s, e in purposes)
    return Usages(extended, _bits(der, found.get(_KEY_USAGE), 2), _bits(der, found.get(_NS_CERT_TYPE), 1))


def _bits(der: bytes, value: Element | None, size: int) -> int | None:
    if value is None:
        return None
    _, start, end = _only(der, value, BIT_STRING)
    if start == end:
        raise DerError(f"an empty BIT STRING at byte {start}")
    return int.from_bytes(der[start + 1:start + 1 + size].ljust(size, b"\0"), "big")
