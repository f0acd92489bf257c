"""A small test/demo PKI on ``cryptography``: root CA -> intermediate -> leaf, and the broken variants.

Used by the tests, the demo and the benchmarks. Everything is deterministic except keys and serials.
Key generation is the slow part (RSA), so keys are cached per (key spec, slot) for the process: two
certificates built with the same spec and slot share a key. CAs take slots by role (root 0,
intermediate 1, leaf 2) so a chain never reuses a key between levels; pass ``slot`` to force a fresh
or a shared key (cross-signing shares one on purpose).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeySpec = Literal["rsa1024", "rsa2047", "rsa2048", "rsa3072", "ec256", "ec384", "ed25519"]
HashName = Literal["md5", "sha1", "sha256", "sha384", "sha512"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

_HASHES: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512,
}
_ROLE_SLOT = {"root": 0, "intermediate": 1, "leaf": 2}
_serials = itertools.count(0x1000)


def utcnow() -> dt.datetime:
    """Now, in UTC, truncated to the second (certificates hold whole seconds)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


@cache
def private_key(spec: KeySpec, slot: int = 0) -> PrivateKey:
    """A key of the given spec; the same (spec, slot) returns the same key within a process."""
    if spec.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(spec[3:]))
    if spec == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    if spec == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    if spec == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key spec {spec!r}")


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def not_after(self) -> float:
        return self.cert.not_valid_after_utc.timestamp()

    @property
    def not_before(self) -> float:
        return self.cert.not_valid_before_utc.timestamp()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certpager test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


# DER of the AlgorithmIdentifier OIDs for RSA PKCS#1 v1.5 signatures (all the same length).
_RSA_SHA256_OID = bytes.fromhex("06092a864886f70d01010b")
_RSA_LEGACY_OID = {"sha1": bytes.fromhex("06092a864886f70d010105"), "md5": bytes.fromhex("06092a864886f70d010104")}
_LEGACY_HASH: dict[str, hashes.HashAlgorithm] = {"sha1": hashes.SHA1(), "md5": hashes.MD5()}


def _sign(builder: x509.CertificateBuilder, key: PrivateKey, hash_name: HashName) -> x509.Certificate:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return builder.sign(key, None)  # Ed25519 signs without a separate hash
    if hash_name in _RSA_LEGACY_OID:
        return _sign_legacy(builder, key, hash_name)
    return builder.sign(key, _HASHES[hash_name]())


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _sign_legacy(builder: x509.CertificateBuilder, key: PrivateKey, hash_name: str) -> x509.Certificate:
    """Sign with SHA-1/MD5, which ``cryptography`` refuses to do: sign with SHA-256, swap the OID, re-sign.

    Policy tests need such certificates; only RSA issuers are supported (the OIDs have equal length).
    """
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{hash_name} signatures are only supported with an RSA issuer key")
    tbs = builder.sign(key, hashes.SHA256()).tbs_certificate_bytes
    oid = _RSA_LEGACY_OID[hash_name]
    tbs = tbs.replace(_RSA_SHA256_OID, oid, 1)
    signature = key.sign(tbs, padding.PKCS1v15(), _LEGACY_HASH[hash_name])
    alg = oid + b"\x05\x00"
    alg = b"\x30" + _der_len(len(alg)) + alg
    bits = b"\x00" + signature
    bits = b"\x03" + _der_len(len(bits)) + bits
    body = tbs + alg + bits
    return x509.load_der_x509_certificate(b"\x30" + _der_len(len(body)) + body)


@dataclass(frozen=True)
class CertSpec:
    """What to put in one certificate."""

    cn: str
    names: Sequence[str] = ()  # SANs (DNS names and IP literals); leaves only
    key: KeySpec = "ec256"
    hash: HashName = "sha256"
    not_before: dt.datetime | None = None  # default: now - 1 day
    not_after: dt.datetime | None = None  # default: now + 90 days (CAs: now + 10 years)
    slot: int | None = None  # key slot; default by role
    path_length: int | None = None


def issue(spec: CertSpec, issuer: Issued | None, *, ca: bool, role: str = "leaf") -> Issued:
    """Issue one certificate; ``issuer=None`` makes it self-signed."""
    now = utcnow()
    key = private_key(spec.key, _ROLE_SLOT.get(role, 2) if spec.slot is None else spec.slot)
    not_before = spec.not_before or now - dt.timedelta(days=1)
    not_after = spec.not_after or now + dt.timedelta(days=3650 if ca else 90)
    subject = _name(spec.cn)
    pub = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(pub)
        .serial_number(next(_serials))
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=spec.path_length if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
    )
    issuer_pub = issuer.key.public_key() if issuer else pub
    builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_pub), critical=False)
    builder = _add_usage(builder, ca=ca, rsa_key=isinstance(key, rsa.RSAPrivateKey))
    if spec.names:
        builder = builder.add_extension(_san(spec.names), critical=False)
    return Issued(_sign(builder, issuer.key if issuer else key, spec.hash), key)


def _add_usage(builder: x509.CertificateBuilder, *, ca: bool, rsa_key: bool) -> x509.CertificateBuilder:
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=rsa_key and not ca,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )
    builder = builder.add_extension(usage, critical=True)
    if not ca:
        eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
        builder = builder.add_extension(eku, critical=False)
    return builder


def cross_sign(cert: Issued, by: Issued, *, hash_name: HashName = "sha256") -> Issued:
    """Re-issue ``cert`` (same subject, key and extensions) under another issuer, e.g. a second root."""
    old = cert.cert
    builder = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(by.cert.subject)
        .public_key(cert.key.public_key())
        .serial_number(next(_serials))
        .not_valid_before(old.not_valid_before_utc)
        .not_valid_after(old.not_valid_after_utc)
    )
    for ext in old.extensions:
        if isinstance(ext.value, x509.AuthorityKeyIdentifier):
            continue
        builder = builder.add_extension(ext.value, critical=ext.critical)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(by.key.public_key()), critical=False
    )
    return Issued(_sign(builder, by.key, hash_name), cert.key)


@dataclass(frozen=True)
class ChainFiles:
    """Paths written by :meth:`Chain.write`."""

    cert_file: Path  # leaf followed by the intermediates (what a server presents)
    key_file: Path
    ca_file: Path  # the root (what a client trusts)
    leaf_only_file: Path  # the leaf alone (a server that forgot its intermediate)


@dataclass(frozen=True)
class Chain:
    """A leaf, the intermediates that issued it (nearest first), and the root."""

    leaf: Issued
    intermediates: tuple[Issued, ...] = ()
    root: Issued | None = None
    extra: tuple[Issued, ...] = field(default=())  # more certs to present after the intermediates

    def presented(self, *, intermediates: bool = True, root: bool = False) -> list[Issued]:
        """The certificates a server sends, in order."""
        certs = [self.leaf]
        if intermediates:
            certs += [*self.intermediates, *self.extra]
        if root and self.root is not None:
            certs.append(self.root)
        return certs

    def chain_pem(self, *, intermediates: bool = True, root: bool = False) -> bytes:
        return b"".join(c.cert_pem for c in self.presented(intermediates=intermediates, root=root))

    def write(self, directory: Path, name: str = "server") -> ChainFiles:
        """Write PEM files into ``directory`` and return their paths."""
        directory.mkdir(parents=True, exist_ok=True)
        files = ChainFiles(
            cert_file=directory / f"{name}.crt", key_file=directory / f"{name}.key",
            ca_file=directory / f"{name}-ca.crt", leaf_only_file=directory / f"{name}-leaf.crt",
        )
        files.cert_file.write_bytes(self.chain_pem())
        files.leaf_only_file.write_bytes(self.leaf.cert_pem)
        files.key_file.write_bytes(self.leaf.key_pem)
        files.key_file.chmod(0o600)
        files.ca_file.write_bytes(self.root.cert_pem if self.root else self.leaf.cert_pem)
        return files


def make_root(cn: str = "certpager Test Root", **kw: object) -> Issued:
    """A self-signed root CA (keyword arguments are CertSpec fields)."""
    return issue(CertSpec(cn=cn, **kw), None, ca=True, role="root")  # type: ignore[arg-type]


def make_intermediate(issuer: Issued, cn: str = "certpager Test Intermediate", **kw: object) -> Issued:
    """An intermediate CA signed by ``issuer``."""
    return issue(CertSpec(cn=cn, **kw), issuer, ca=True, role="intermediate")  # type: ignore[arg-type]


def make_leaf(issuer: Issued | None, names: Sequence[str] = ("localhost",), **kw: object) -> Issued:
    """A server certificate for ``names`` (CN = first name); ``issuer=None`` makes it self-signed."""
    cn = str(kw.pop("cn", names[0] if names else "leaf"))
    return issue(CertSpec(cn=cn, names=tuple(names), **kw), issuer, ca=False)  # type: ignore[arg-type]


def build_chain(
    names: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    *,
    root: Issued | None = None,
    intermediate: Issued | None = None,
    **leaf_kw: object,
) -> Chain:
    """root -> intermediate -> leaf; pass ``root``/``intermediate`` to reuse CAs (cheap chains)."""
    root = root or make_root()
    intermediate = intermediate or make_intermediate(root)
    return Chain(leaf=make_leaf(intermediate, names, **leaf_kw), intermediates=(intermediate,), root=root)


def self_signed_chain(names: Sequence[str] = ("localhost", "127.0.0.1", "::1"), **leaf_kw: object) -> Chain:
    """A lone self-signed leaf (no CA)."""
    return Chain(leaf=make_leaf(None, names, **leaf_kw))
