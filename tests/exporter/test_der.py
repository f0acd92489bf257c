"""exporter/der.py reads what cryptography reads: checked against cryptography on generated certificates.

The oracle is ``cryptography``'s object API, which certs.py used for these fields before the reader.
Hypothesis builds certificates with varied keys, names (string types included), SANs and
basicConstraints; every one must read the same both ways. Bytes that are not a certificate, or a
certificate with bytes changed, must give a DerError (or CertificateParseError), never another exception.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import shutil
import subprocess
from functools import cache

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certpager import pki
from exporter import certs, der
from tests.exporter import derkit

KEYS = ("rsa1024", "rsa1536", "ec256", "ec384", "ec521", "secp256k1", "brainpool256", "ed25519", "ed448", "dsa2048")
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


Key = (rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
       | dsa.DSAPrivateKey)


@cache
def key(spec: str) -> Key:
    if spec.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(spec[3:]))
    curves = {"ec256": ec.SECP256R1, "ec384": ec.SECP384R1, "ec521": ec.SECP521R1,
              "secp256k1": ec.SECP256K1, "brainpool256": ec.BrainpoolP256R1}
    if spec in curves:
        return ec.generate_private_key(curves[spec]())
    if spec == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if spec == "ed448":
        return ed448.Ed448PrivateKey.generate()
    return dsa.generate_private_key(key_size=2048)


def oracle(cert: x509.Certificate) -> der.CertFields:
    """The fields as cryptography's objects give them."""
    def cn(name: x509.Name) -> str:
        attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
        value = attrs[0].value if attrs else ""
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress)
                    if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    public = cert.public_key()
    kind, bits = {
        rsa.RSAPublicKey: ("rsa", lambda k: k.key_size), ec.EllipticCurvePublicKey: ("ec", lambda k: k.curve.key_size),
        ed25519.Ed25519PublicKey: ("ed25519", lambda k: 256), ed448.Ed448PublicKey: ("ed448", lambda k: 456),
        dsa.DSAPublicKey: ("dsa", lambda k: k.key_size),
    }[next(t for t in (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey,
                       ed448.Ed448PublicKey, dsa.DSAPublicKey) if isinstance(public, t))]
    algorithm = cert.signature_algorithm_oid
    return der.CertFields(
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        subject_cn=cn(cert.subject),
        issuer_cn=cn(cert.issuer),
        self_issued=cert.subject == cert.issuer,
        key_type=kind,
        key_bits=bits(public),
        signature_algorithm=der.SIGNATURE_ALGORITHMS.get(algorithm.dotted_string, algorithm.dotted_string),
        dns_names=dns,
        ip_addresses=ips,
        is_ca=is_ca,
    )


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
PRINTABLE = st.text("ABCXYZabcxyz0189 '()+,-./:=?", min_size=1, max_size=12)
ASCII = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=12)
ATTRIBUTE_TYPES = (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME,
                   NameOID.LOCALITY_NAME, NameOID.SERIAL_NUMBER)


@st.composite
def attributes(draw: st.DrawFn) -> derkit.Attribute:
    oid = draw(st.sampled_from(ATTRIBUTE_TYPES))
    kind = draw(st.sampled_from(tuple(derkit.STRING_TAGS)))
    values = PRINTABLE if kind == "printable" else ASCII if kind in ("ia5", "t61") else TEXT
    return oid, draw(values), kind


NameModel = list[list[derkit.Attribute]]
# One RDN never holds one attribute twice: cryptography's x509.Name, which ignores string types, refuses it.
NAMES: st.SearchStrategy[NameModel] = st.lists(
    st.lists(attributes(), min_size=1, max_size=2, unique_by=lambda a: (a[0], a[1])), min_size=0, max_size=4)


LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10)
GENERAL_NAMES = st.one_of(
    st.builds(lambda labels: x509.DNSName(".".join(labels)), st.lists(LABEL, min_size=1, max_size=4)),
    st.just(x509.DNSName("*.wild.example")),
    st.ip_addresses().map(x509.IPAddress),
    st.sampled_from([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")]).map(x509.IPAddress),
    st.builds(lambda user: x509.RFC822Name(f"{user}@example.test"), LABEL),
    st.builds(lambda host: x509.UniformResourceIdentifier(f"https://{host}.test/"), LABEL),
    TEXT.map(lambda cn: x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))),
)


def restring(model: NameModel) -> NameModel:
    """The same name, every attribute as a UTF8String: equal as x509.Name, different bytes."""
    return [[(oid, value, "utf8") for oid, value, _ in rdn] for rdn in model]


@st.composite
def certificates(draw: st.DrawFn) -> x509.Certificate:
    signer = key(draw(st.sampled_from(KEYS)))
    subject = draw(NAMES)
    issuer = draw(st.sampled_from(["same", "restrung", "other"]))
    issuer_name = subject if issuer == "same" else restring(subject) if issuer == "restrung" else draw(NAMES)
    placeholder = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "placeholder")])
    builder = (x509.CertificateBuilder().subject_name(placeholder).issuer_name(placeholder)
               .public_key(key(draw(st.sampled_from(KEYS))).public_key())
               .serial_number(draw(st.integers(1, 2**159 - 1)))
               # UTCTime for 1950-2049, GeneralizedTime after (a builder refuses years before 1950)
               .not_valid_before(START - dt.timedelta(seconds=draw(st.integers(0, 2_398_000_000))))
               .not_valid_after(START + dt.timedelta(seconds=draw(st.integers(1, 10**10)))))
    sans = draw(st.none() | st.lists(GENERAL_NAMES, min_size=1, max_size=5))
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=draw(st.booleans()))
    ca = draw(st.none() | st.booleans())
    if ca is not None:
        path = draw(st.none() | st.integers(0, 3)) if ca else None
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=path), critical=draw(st.booleans()))
    if draw(st.booleans()):
        builder = builder.add_extension(x509.SubjectKeyIdentifier(b"\x01" * 20), critical=False)
    hash_alg = None if isinstance(signer, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()
    return derkit.with_names(builder.sign(signer, hash_alg), derkit.encode_name(subject),
                             derkit.encode_name(issuer_name))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(certificates())
def test_reads_what_cryptography_reads(cert: x509.Certificate) -> None:
    assert der.certificate_fields(cert.public_bytes(Encoding.DER)) == oracle(cert)


def test_a_multi_valued_rdn_is_compared_as_a_set() -> None:
    # DER sorts a SET OF by encoding: as UTF8Strings the two CNs come out in the other order, and the
    # name is still the same one for x509.Name (hence self-issued). Found by the property test above.
    printable: NameModel = [[(NameOID.COMMON_NAME, "00", "printable"), (NameOID.COMMON_NAME, "0", "bmp")]]
    now = pki.utcnow()
    placeholder = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "placeholder")])
    cert = (x509.CertificateBuilder().subject_name(placeholder).issuer_name(placeholder)
            .public_key(key("ec256").public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(key("ec256"), hashes.SHA256()))
    cert = derkit.with_names(cert, derkit.encode_name(printable), derkit.encode_name(restring(printable)))
    fields = der.certificate_fields(cert.public_bytes(Encoding.DER))
    assert fields == oracle(cert)
    assert fields.self_issued


@pytest.mark.parametrize("spec", KEYS)
def test_every_key_type_and_size(spec: str) -> None:
    cert = pki.make_leaf(None, ("k.test",)).cert
    now = pki.utcnow()
    built = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
             .public_key(key(spec).public_key()).serial_number(1).not_valid_before(now)
             .not_valid_after(now + dt.timedelta(days=1)).sign(key("ec256"), hashes.SHA256()))
    fields = der.certificate_fields(built.public_bytes(Encoding.DER))
    expected = oracle(built)
    assert (fields.key_type, fields.key_bits) == (expected.key_type, expected.key_bits)


def test_the_test_pki_reads_the_same(test_pki) -> None:
    for chain in test_pki.chains.values():
        for issued in chain.presented(root=True):
            assert der.certificate_fields(issued.der) == oracle(issued.cert), chain


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_a_der_error(data: bytes) -> None:
    with contextlib.suppress(der.DerError):
        der.certificate_fields(data)


@cache
def _leaf_der() -> bytes:
    return pki.make_leaf(None, ("a.test", "10.1.2.3"), key="ec256").der


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_changed_certificate_is_a_parse_error_or_reads(data: st.DataObject) -> None:
    original = _leaf_der()
    changed = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        changed[data.draw(st.integers(0, len(changed) - 1))] = data.draw(st.integers(0, 255))
    changed = changed[:data.draw(st.integers(1, len(changed)))]
    with contextlib.suppress(certs.CertificateParseError):
        certs._parse(bytes(changed), hashlib.sha256(changed).digest())


# --- certificates a builder will not make: re-encoded by hand ------------------------------------


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    size = (n.bit_length() + 7) // 8
    length = bytes([n]) if n < 0x80 else bytes([0x80 | size]) + n.to_bytes(size, "big")
    return bytes([tag]) + length + content


def _with_extensions(original: bytes, extensions: list[bytes]) -> bytes:
    """``original`` with its extensions replaced by ``extensions`` (each one encoded Extension)."""
    _, start, end = der.expect(original, 0, len(original), der.SEQUENCE)
    tbs = der.expect(original, start, end, der.SEQUENCE)
    fields = _with_positions(original, tbs)
    assert any(tag == 0xA3 for _, (tag, _, _) in fields)
    kept = b"".join(original[pos:item[2]] for pos, item in fields if item[0] != 0xA3)
    new_tbs = _tlv(der.SEQUENCE, kept + _tlv(0xA3, _tlv(der.SEQUENCE, b"".join(extensions))))
    return _tlv(der.SEQUENCE, new_tbs + original[tbs[2]:end])


def _with_positions(data: bytes, parent: der.Element) -> list[tuple[int, der.Element]]:
    found, pos = [], parent[1]
    while pos < parent[2]:
        item = der.element(data, pos, parent[2])
        found.append((pos, item))
        pos = item[2]
    return found


def _extension(oid: bytes, value: bytes, critical: bool = False) -> bytes:
    flag = b"\x01\x01\xff" if critical else b""
    return _tlv(der.SEQUENCE, _tlv(der.OID, oid) + flag + _tlv(der.OCTET_STRING, value))


SAN_OID, BC_OID = bytes.fromhex("551d11"), bytes.fromhex("551d13")


def test_a_repeated_subject_alt_name_is_a_parse_error() -> None:
    san = _tlv(der.SEQUENCE, _tlv(0x82, b"a.test"))
    doubled = _with_extensions(_leaf_der(), [_extension(SAN_OID, san), _extension(SAN_OID, san)])
    x509.load_der_x509_certificate(doubled)  # cryptography loads it (and fails only on .extensions)
    with pytest.raises(certs.CertificateParseError, match=r"2\.5\.29\.17 appears twice"):
        certs._parse(doubled, b"d" * 32)


def test_a_name_that_is_not_a_set_of_attributes_says_so() -> None:
    original = _leaf_der()
    _, start, end = der.expect(original, 0, len(original), der.SEQUENCE)
    tbs = der.expect(original, start, end, der.SEQUENCE)
    subject = der.elements(original, tbs[1], tbs[2])[1:][4]  # after the version: serial, sig, issuer, validity
    changed = bytearray(original)
    changed[subject[1]] = der.SEQUENCE  # the first RDN's SET tag
    with pytest.raises(der.DerError, match=f"expected a SET \\(RDN\\) at byte {subject[1] + 2}"):
        der.certificate_fields(bytes(changed))


def test_an_explicit_ca_false_is_read_as_not_a_ca() -> None:
    # DER omits a DEFAULT value, but some CAs wrote cA FALSE: report the chain rather than fail it.
    tweaked = _with_extensions(_leaf_der(), [_extension(BC_OID, _tlv(der.SEQUENCE, b"\x01\x01\x00"), critical=True),
                                             _extension(SAN_OID, _tlv(der.SEQUENCE, _tlv(0x82, b"a.test")))])
    fields = der.certificate_fields(tweaked)
    assert (fields.is_ca, fields.dns_names) == (False, ("a.test",))


@pytest.mark.parametrize(("value", "message"), [
    (_tlv(der.SEQUENCE, _tlv(0x87, b"\x01\x02\x03")), "an iPAddress of 3 bytes"),
    (_tlv(der.SEQUENCE, _tlv(0x82, b"\xff.test")), "undecodable name"),
    (_tlv(der.SEQUENCE, b"") + b"\x00", "trailing bytes"),
    (_tlv(der.OCTET_STRING, b""), "expected tag 0x30"),
])
def test_a_malformed_subject_alt_name_says_what_is_wrong(value: bytes, message: str) -> None:
    tweaked = _with_extensions(_leaf_der(), [_extension(SAN_OID, value)])
    with pytest.raises(certs.CertificateParseError, match=message):
        certs._parse(tweaked, b"m" * 32)


@pytest.mark.parametrize(("tag", "text", "expected"), [
    (0x17, b"491231235959Z", "2049-12-31T23:59:59"),
    (0x17, b"500101000000Z", "1950-01-01T00:00:00"),
    (0x18, b"19000101000000Z", "1900-01-01T00:00:00"),
    (0x18, b"99991231235959Z", "9999-12-31T23:59:59"),
    (0x18, b"20260101120000.25Z", "2026-01-01T12:00:00.250000"),
])
def test_times(tag: int, text: bytes, expected: str) -> None:
    seconds = der.read_time(text, (tag, 0, len(text)))
    assert dt.datetime.fromtimestamp(seconds, dt.UTC).replace(tzinfo=None).isoformat() == expected


@pytest.mark.parametrize(("tag", "text"), [
    (0x17, b"4912312359Z"), (0x17, b"491231235959"), (0x17, b"491331235959Z"), (0x17, b"49123123595aZ"),
    (0x17, b"491231235959.5Z"), (0x18, b"2026010112000Z"), (0x18, b"20260101120000.Z"), (0x04, b"491231235959Z"),
])
def test_a_bad_time_is_a_der_error(tag: int, text: bytes) -> None:
    with pytest.raises(der.DerError, match="time at byte 0"):
        der.read_time(text, (tag, 0, len(text)))


def test_dotted_oids() -> None:
    assert der.dotted(bytes.fromhex("551d11")) == "2.5.29.17"
    assert der.dotted(bytes.fromhex("2a864886f70d010101")) == "1.2.840.113549.1.1.1"
    assert der.dotted(bytes.fromhex("8837")) == "2.999"
    with pytest.raises(der.DerError):
        der.dotted(b"\x86")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
@pytest.mark.parametrize(("key_spec", "hash_name"), [
    ("rsa2048", "sha256"), ("rsa2048", "sha1"), ("rsa2048", "md5"), ("ec256", "sha384"), ("ec384", "sha512"),
    ("ed25519", "sha256"),
])
def test_signature_algorithm_names_are_openssls(key_spec: str, hash_name: str) -> None:
    """The signature_algorithm label is the name `openssl x509 -text` prints (its case aside: ED25519)."""
    issued = pki.make_leaf(None, ("sig.test",), key=key_spec, hash=hash_name)
    text = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-text"], input=issued.der,
                          capture_output=True, check=True, timeout=10).stdout.decode()
    printed = text.split("Signature Algorithm:", 1)[1].split()[0]
    assert der.certificate_fields(issued.der).signature_algorithm.lower() == printed.lower()
