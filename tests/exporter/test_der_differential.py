"""exporter/der.py against cryptography.x509 over real certificates and mutated ones.

Corpora: Debian's ca-certificates (/usr/share/ca-certificates, /etc/ssl/certs), certifi's bundle and
every certificate in the ``cryptography-vectors`` package. For each certificate: when both read it,
no field differs; when only cryptography reads it, der.py raised a DerError naming a byte offset;
nothing else ever escapes. Self-signed decided by the signature agrees with cryptography's own
check wherever cryptography can check it. A hypothesis fuzz mutates certificates (bytes changed,
cut, inserted) and holds the same properties.
"""

from __future__ import annotations

import base64
import contextlib
import re
import warnings
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import certs, der
from tests.exporter import derkit
from tests.exporter.test_der import oracle

_PEM = re.compile(rb"-----BEGIN (?:X509 |TRUSTED )?CERTIFICATE-----\r?\n(.*?)-----END", re.DOTALL)


def _ders_in(path: Path) -> Iterator[bytes]:
    try:
        data = path.read_bytes()
    except OSError:
        return
    if b"-----BEGIN" in data:
        for body in _PEM.findall(data):
            with contextlib.suppress(ValueError):
                yield base64.b64decode(b"".join(body.split()))
    elif data[:1] == b"\x30":
        yield data


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.rglob(pattern) if p.is_file()) if root.is_dir() else []


@cache
def corpus() -> dict[str, bytes]:
    """Every distinct certificate DER of the corpora, keyed by where it was first found."""
    import certifi
    import cryptography_vectors

    sources = [*_files(Path("/usr/share/ca-certificates"), "*.crt"), *_files(Path("/etc/ssl/certs"), "*.pem"),
               Path(certifi.where()), *_files(Path(cryptography_vectors.__file__).parent / "x509", "*")]
    found: dict[bytes, str] = {}
    for path in sources:
        for index, data in enumerate(_ders_in(path)):
            found.setdefault(data, f"{path}#{index}")
    return {where: data for data, where in found.items()}


def _cryptography(data: bytes) -> tuple[x509.Certificate | None, der.CertFields | None]:
    """cryptography's certificate and its fields (None where it refuses the certificate or a field)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cert = x509.load_der_x509_certificate(data)
        except (ValueError, x509.InvalidVersion):
            return None, None
        try:
            return cert, oracle(cert)
        except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType, UnsupportedAlgorithm,
                StopIteration, TypeError):
            return cert, None


def _problem(data: bytes) -> str | None:
    """What der.py gets wrong about one certificate, or None."""
    try:
        fields = der.certificate_fields(data)
    except der.DerError as exc:
        if not re.search(r"byte \d+|[0-9a-f]{2,}", str(exc)):
            return f"an error without a byte offset: {exc}"
        fields = None
    certs.read_chain([data])  # never raises for a certificate's content
    cert, expected = _cryptography(data)
    if fields is None or expected is None:
        return None  # one of the two refuses it: nothing to compare
    if fields != expected:
        differ = [name for name in fields._fields if getattr(fields, name) != getattr(expected, name)]
        mine, theirs = [getattr(fields, n) for n in differ], [getattr(expected, n) for n in differ]
        return f"{differ}: der {mine} cryptography {theirs}"
    if cert is not None and (problem := _usages_problem(data, cert)):
        return problem
    return _self_signed_problem(data, cert) if fields.self_issued and cert is not None else None


def _usages_problem(data: bytes, cert: x509.Certificate) -> str | None:
    """der.usages (the purpose check's input) against cryptography's extensions."""
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        expected_eku: tuple[str, ...] | None = tuple(u.dotted_string for u in eku)
    except x509.ExtensionNotFound:
        expected_eku = None
    except (ValueError, x509.DuplicateExtension):
        return None
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        expected_ku: int | None = (ku.digital_signature << 15 | ku.key_encipherment << 13 | ku.key_agreement << 11
                                   | ku.key_cert_sign << 10)
    except x509.ExtensionNotFound:
        expected_ku = None
    except ValueError:
        return None
    found = der.usages(data)
    mask = 0x8000 | 0x2000 | 0x0800 | 0x0400
    got_ku = None if found.key_usage is None else found.key_usage & mask
    if (found.extended, got_ku) != (expected_eku, expected_ku):
        return f"usages: der {found.extended, got_ku} cryptography {expected_eku, expected_ku}"
    return None


def _self_signed_problem(data: bytes, cert: x509.Certificate) -> str | None:
    try:
        cert.verify_directly_issued_by(cert)
        reference = True
    except InvalidSignature:
        reference = False
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None  # cryptography cannot check this one (SHA-1, MD5, explicit curves): nothing to compare
    mine = certs.signs_itself(data)
    return None if mine == reference else f"self-signed: der {mine}, cryptography {reference}"


def test_the_corpora_are_there() -> None:
    assert len(corpus()) > 500


def test_der_reads_what_cryptography_reads_over_the_corpora() -> None:
    problems = [f"{where}: {problem}" for where, data in corpus().items() if (problem := _problem(data))]
    assert not problems, "\n".join(problems[:30])


@cache
def _seeds() -> list[bytes]:
    """A few varied certificates to mutate: RSA, EC, a long chain's CA, and one with many SANs."""
    chosen = [data for where, data in corpus().items() if where.startswith("/usr/share")][:3]
    from tests.exporter import pki_shapes

    root = pki_shapes.make("fuzz root", None, ca=True)
    leaf = pki_shapes.make("fuzz.test", root, ca=False, names=["a.test", "b.test", "*.c.test"])
    return [*chosen, root.der, leaf.der, derkit.edit(x509.load_der_x509_certificate(leaf.der), root.key,
                                                      derkit.as_v2)]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_seeds())))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data) - 1))
        how = draw(st.sampled_from(["set", "insert", "delete"]))
        if how == "set":
            data[at] = draw(st.integers(0, 255))
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=3))
        else:
            del data[at:at + draw(st.integers(1, 3))]
    return bytes(data[:draw(st.integers(1, len(data)))] if draw(st.booleans()) else data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_a_mutated_certificate_reads_right_or_is_an_error(data: bytes) -> None:
    assert _problem(data) is None


@cache
def _fuzz_store(directory: str) -> tuple[Path, bytes]:
    from tests.exporter import pki_shapes

    root = pki_shapes.make("verifier fuzz root", None, ca=True)
    path = Path(directory) / "fuzz-ca.pem"
    path.write_bytes(root.pem)
    return path, pki_shapes.make("verifier-fuzz.test", root, ca=False).der


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_mutated_chain_gets_a_verdict_never_an_exception(tmp_path_factory, data: st.DataObject) -> None:
    ca_file, leaf = _fuzz_store(str(tmp_path_factory.getbasetemp()))
    changed = data.draw(mutated())
    chain = [changed, leaf] if data.draw(st.booleans()) else [leaf, changed]
    for profile in ("openssl", "webpki"):
        verdict = certs.ChainVerifier().verify(certs.read_chain(chain), ca_file, profile=profile)
        assert verdict.verified in (True, False)


@pytest.mark.parametrize("length", [b"\x81\x05", b"\x82\x00\x05"])
def test_non_minimal_lengths_found_by_the_fuzz_are_errors(length: bytes) -> None:
    seed = _seeds()[-2]
    fields = derkit.tbs_fields(x509.load_der_x509_certificate(seed))
    serial = fields[1]
    changed = b"".join([fields[0], b"\x02" + length[:-1] + bytes([serial[1]]) + serial[2:], *fields[2:]])
    with pytest.raises(der.DerError, match=r"a non-minimal length of the element at byte \d+"):
        der.certificate_fields(derkit.tlv(0x30, derkit.tlv(0x30, changed) + b"\x30\x00\x03\x01\x00"))


def test_a_key_openssl_cannot_decode_is_a_verdict_not_an_exception(tmp_path) -> None:
    """Found by the fuzz above: a leaf der.py refuses (a byte after it) whose EC point OpenSSL cannot decode
    either. OpenSSL rates a key it cannot read as too weak; the verifier must answer, not raise."""
    from tests.exporter import pki_shapes

    root = pki_shapes.make("undecodable key root", None, ca=True)
    leaf = pki_shapes.make("undecodable-key.test", root, ca=False).der
    point = leaf.index(b"\x03\x42\x00\x04")  # the P-256 key's BIT STRING, uncompressed point
    broken = leaf[:point + 3] + b"\x07" + leaf[point + 4:] + b"\x00"
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(root.pem)
    for profile in ("openssl", "webpki"):
        verdict = certs.ChainVerifier().verify(certs.read_chain([broken, root.der]), ca_file, profile=profile)
        assert verdict.verified is False, profile
