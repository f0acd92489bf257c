"""Trust verdicts as an OpenSSL 3 TLS client decides them (``verify_profile: openssl``).

The chain is verified by OpenSSL's own ``X509_verify_cert`` through pyOpenSSL's public
``X509Store``/``X509StoreContext``: path building (out-of-order chains, extra certificates, cross
signatures), signatures, validity, basicConstraints and keyUsage of CAs, path length, name
constraints, critical extensions and the depth limit are OpenSSL's.

Two checks a TLS client adds to ``X509_verify_cert`` are not reachable through that API, so they are
done here, over the path OpenSSL built, with OpenSSL's own rules and tables:

- the *purpose* ``sslserver`` (``X509_PURPOSE_SSL_SERVER``, which ``SSL_connect`` sets): the leaf's
  extendedKeyUsage (serverAuth or a Server Gated Crypto OID), keyUsage (digitalSignature,
  keyEncipherment or keyAgreement) and Netscape cert type; each CA's extendedKeyUsage;
- the *security level* (``X509_VERIFY_PARAM_set_auth_level``, which the SSL layer sets from
  ``SSL_CTX_set_security_level``): the leaf's key first, then every other key of the path, then
  every signature but the trust anchor's own, against 80/112/128/192/256 bits for levels 1-5.
  Key strength is OpenSSL's (RSA and DSA by their modulus, SP 800-56B's figures and formula; EC
  by half the order; Ed25519 128, Ed448 224); signature strength is half the digest, with SHA-1 at
  63 and MD5 at 39 bits (OpenSSL 3: neither passes level 1).

tests/exporter/test_trust_corpus.py serves dozens of PKI shapes on loopback and checks every verdict
against Debian's ``openssl s_client -verify_return_error``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from OpenSSL import crypto

from exporter import der
from exporter.probes.base import VerifyReason

MIN_BITS = (0, 80, 112, 128, 192, 256)  # security level -> minimum bits (OpenSSL's minbits_table)
DEFAULT_SECURITY_LEVEL = 2  # OpenSSL 3's default on Debian and most distributions


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a chain is not trusted: a bounded reason, and words naming the certificate."""

    reason: VerifyReason
    detail: str


# OpenSSL X509_V_ERR_* codes -> reasons (x509_vfy.h; stable numbers across 1.1-4.0).
_REASONS: dict[int, VerifyReason] = {
    2: VerifyReason.UNKNOWN_ISSUER,  # unable to get issuer certificate
    9: VerifyReason.NOT_YET_VALID,
    10: VerifyReason.EXPIRED,
    18: VerifyReason.SELF_SIGNED,  # depth zero self-signed
    19: VerifyReason.UNKNOWN_ISSUER,  # self-signed certificate in chain (an untrusted root)
    20: VerifyReason.UNKNOWN_ISSUER,  # unable to get local issuer certificate
    21: VerifyReason.MISSING_INTERMEDIATE,  # unable to verify the first certificate
    22: VerifyReason.CHAIN_TOO_LONG,
    25: VerifyReason.PATH_LENGTH,
    26: VerifyReason.PURPOSE,
    27: VerifyReason.UNKNOWN_ISSUER,  # certificate not trusted
    28: VerifyReason.UNKNOWN_ISSUER,  # certificate rejected
    47: VerifyReason.NAME_CONSTRAINTS,  # permitted subtree violation
    48: VerifyReason.NAME_CONSTRAINTS,  # excluded subtree violation
    49: VerifyReason.NAME_CONSTRAINTS,  # name constraints minimum and maximum not supported
    51: VerifyReason.NAME_CONSTRAINTS,  # unsupported name constraint type
    52: VerifyReason.NAME_CONSTRAINTS,  # unsupported or invalid name constraint syntax
    53: VerifyReason.NAME_CONSTRAINTS,  # unsupported or invalid name syntax
    66: VerifyReason.WEAK_KEY,  # EE certificate key too weak
    67: VerifyReason.WEAK_KEY,  # CA certificate key too weak
    68: VerifyReason.WEAK_SIGNATURE,  # CA signature digest algorithm too weak
}


def describe(index: int | None, cert_der: bytes) -> str:
    """'certificate 1 (CN=Example CA)', or 'the trust anchor (CN=...)' for one the peer did not send."""
    try:
        cn = der.certificate_fields(cert_der).subject_cn
    except der.DerError:
        cn = ""
    name = f"CN={cn}" if cn else "no CN"
    return f"certificate {index} ({name})" if index is not None else f"the trust anchor ({name})"


def _der(cert: crypto.X509) -> bytes:
    return crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)


class OpenSSLChain:
    """One presented chain, loaded into OpenSSL once, verified against a store."""

    def __init__(self, ders: Sequence[bytes], decoded: Sequence[crypto.X509] = (),
                 leaf_key: tuple[str, int] | None = None) -> None:
        self.ders = list(ders)
        self.leaf_key = leaf_key  # (type, bits) when the caller has read it already
        self.certs = list(decoded) if len(decoded) == len(ders) else \
            [crypto.load_certificate(crypto.FILETYPE_ASN1, d) for d in ders]

    def index_of(self, cert_der: bytes) -> int | None:
        """The presented index of a certificate (None: it came from the trust store)."""
        return self.ders.index(cert_der) if cert_der in self.ders else None

    def describe(self, cert_der: bytes) -> str:
        return describe(self.index_of(cert_der), cert_der)

    def verify(self, store: crypto.X509Store, level: int) -> Failure | None:
        """None when trusted, else why not (OpenSSL's first error, in OpenSSL's order)."""
        weak = _key_failure(self.ders[0], level, self)
        if weak is not None:  # OpenSSL checks the leaf's key before building a path
            return weak
        context = crypto.X509StoreContext(store, self.certs[0], self.certs[1:])
        try:
            verified = context.get_verified_chain()
            path = [self.ders[0], *(_der(c) for c in verified[1:])]  # the path starts at the leaf
        except crypto.X509StoreContextError as exc:
            return self._failure(exc)
        return _purpose_failure(path, self) or _level_failure(path, level, self)

    def _failure(self, exc: crypto.X509StoreContextError) -> Failure:
        code, depth, text = exc.errors[0], exc.errors[1], str(exc.errors[2])
        cert_der = _der(exc.certificate)
        index = self.index_of(cert_der)
        reason = _REASONS.get(code, VerifyReason.INVALID)
        if code == 20 and index == 0:
            # The leaf's issuer is neither sent nor trusted: the usual cause is a server configured
            # with the leaf alone (no intermediate); a leaf issued straight by an unknown root looks
            # the same from here.
            reason = VerifyReason.MISSING_INTERMEDIATE
        where = describe(index, cert_der)
        return Failure(reason, f"{where}: {text} (OpenSSL error {code} at depth {depth})")


# --- purpose sslserver ---------------------------------------------------------------------------

_SERVER_AUTH = "1.3.6.1.5.5.7.3.1"
_SGC = ("2.16.840.1.113730.4.1", "1.3.6.1.4.1.311.10.3.3")  # Netscape and Microsoft Server Gated Crypto
_EKU_NAMES = {_SERVER_AUTH: "serverAuth", "1.3.6.1.5.5.7.3.2": "clientAuth", "1.3.6.1.5.5.7.3.3": "codeSigning",
              "1.3.6.1.5.5.7.3.4": "emailProtection", "1.3.6.1.5.5.7.3.8": "timeStamping",
              "1.3.6.1.5.5.7.3.9": "OCSPSigning", "2.5.29.37.0": "anyExtendedKeyUsage"}
_KU_TLS = 0x8000 | 0x2000 | 0x0800  # digitalSignature, keyEncipherment, keyAgreement
_NS_SSL_SERVER = 0x40


def _purpose_failure(path: Sequence[bytes], chain: OpenSSLChain) -> Failure | None:
    for depth, cert_der in enumerate(path):
        # A CA recurs in every chain it issued: its answer is cached, a leaf's is not.
        problem = _purpose_problem(cert_der, leaf=True) if depth == 0 else _ca_purpose_problem(cert_der)
        if problem:
            return Failure(VerifyReason.PURPOSE, f"{chain.describe(cert_der)}: not for TLS servers ({problem})")
    return None


def _purpose_problem(cert_der: bytes, *, leaf: bool) -> str:
    """OpenSSL's check_purpose_ssl_server: the leaf's usages, a CA's extendedKeyUsage."""
    try:
        found = der.usages(cert_der)
    except der.DerError:
        return ""  # the DER reader refuses it (its error is reported); OpenSSL verified the rest
    if found.extended is not None and not any(u in (_SERVER_AUTH, *_SGC) for u in found.extended):
        names = ", ".join(_EKU_NAMES.get(u, u) for u in found.extended) or "none"
        return f"extendedKeyUsage without serverAuth: {names}"
    if not leaf:
        return ""
    if found.key_usage is not None and not found.key_usage & _KU_TLS:
        return "keyUsage has none of digitalSignature, keyEncipherment, keyAgreement"
    if found.ns_cert_type is not None and not found.ns_cert_type & _NS_SSL_SERVER:
        return "Netscape cert type without SSL server"
    return ""


@functools.lru_cache(maxsize=1024)
def _ca_purpose_problem(cert_der: bytes) -> str:
    return _purpose_problem(cert_der, leaf=False)


# --- security level ------------------------------------------------------------------------------


def _level_failure(path: Sequence[bytes], level: int, chain: OpenSSLChain) -> Failure | None:
    for cert_der in path[1:]:  # the leaf's key was checked first
        weak = _key_failure(cert_der, level, chain)
        if weak is not None:
            return weak
    if level <= 0:
        return None
    for depth, cert_der in enumerate(path[:-1]):  # not the anchor's own signature
        bits = signature_bits(cert_der) if depth == 0 else _ca_signature_bits(cert_der)
        if bits < MIN_BITS[level]:
            algorithm = _openssl_signature_algorithm(cert_der)
            return Failure(VerifyReason.WEAK_SIGNATURE,
                           f"{chain.describe(cert_der)}: its signature ({algorithm}) is about {bits} bits "
                           f"strong, below security level {level} ({MIN_BITS[level]} bits)")
    return None


def _key_failure(cert_der: bytes, level: int, chain: OpenSSLChain) -> Failure | None:
    if level <= 0:
        return None
    if cert_der is not chain.ders[0]:
        key_type, key_bits = _ca_key(cert_der)
    else:
        key_type, key_bits = chain.leaf_key or public_key(cert_der)
    bits = key_security_bits(key_type, key_bits)
    if bits >= MIN_BITS[level]:
        return None
    return Failure(VerifyReason.WEAK_KEY,
                   f"{chain.describe(cert_der)}: its {key_type.upper()} key of {key_bits} bits is "
                   f"about {bits} bits strong, below security level {level} ({MIN_BITS[level]} bits)")


def key_security_bits(key_type: str, size: int) -> int:
    """A public key's strength in bits as OpenSSL 3 rates it (EVP_PKEY_get_security_bits)."""
    if key_type == "rsa":
        return ifc_ffc_security_bits(size)
    if key_type == "dsa":
        return _table_bits(size)
    return {"ed25519": 128, "ed448": 224, "ec": size // 2}.get(key_type, 0)  # EC: order bits / 2


_IFC_STANDARD = {2048: 112, 3072: 128, 4096: 152, 6144: 176, 7680: 192, 8192: 200, 15360: 256}


def ifc_ffc_security_bits(n: int) -> int:
    """RSA/DH strength: SP 800-56B rev 2's figures, else its formula (OpenSSL's ossl_ifc_ffc_compute_security_bits)."""
    if n in _IFC_STANDARD:
        return _IFC_STANDARD[n]
    if n < 8:
        return 0
    cap = 192 if n <= 7680 else 256 if n <= 15360 else 1200
    x = n * math.log(2)
    y = (1.923 * (x * math.log(x) ** 2) ** (1 / 3) - 4.69) / math.log(2)
    return min(cap, (int(y) + 4) & ~7)


def _table_bits(size: int) -> int:
    for minimum, bits in ((15360, 256), (7680, 192), (3072, 128), (2048, 112), (1024, 80)):
        if size >= minimum:
            return bits
    return 0


# Signature algorithm OIDs (content bytes) -> security bits of their digest (X509_get_signature_info).
_DIGEST_BITS = {"md5": 39, "sha1": 63, "sha224": 112, "sha256": 128, "sha384": 192, "sha512": 256,
                "sha3_224": 112, "sha3_256": 128, "sha3_384": 192, "sha3_512": 256}


@functools.lru_cache(maxsize=1024)
def _ca_key(cert_der: bytes) -> tuple[str, int]:
    return public_key(cert_der)


_OPENSSL_KEY_TYPES = {crypto.TYPE_RSA: "rsa", 912: "rsa", crypto.TYPE_DSA: "dsa", crypto.TYPE_EC: "ec",
                      1087: "ed25519", 1088: "ed448"}  # EVP_PKEY ids (912: RSA-PSS)


def public_key(cert_der: bytes) -> tuple[str, int]:
    """A certificate's key type and size: read by der.py, or by OpenSSL where der.py refuses the DER
    (the certificate is OpenSSL's to judge here: it built the path with it)."""
    try:
        return der.public_key_of(cert_der)
    except der.DerError:
        pass
    try:
        key = crypto.load_certificate(crypto.FILETYPE_ASN1, cert_der).get_pubkey()
    except crypto.Error:  # no usable key: OpenSSL's level check rates a missing key 0 bits (too weak)
        return "unknown", 0
    return _OPENSSL_KEY_TYPES.get(key.type(), "unknown"), key.bits()


@functools.lru_cache(maxsize=1024)
def _ca_signature_bits(cert_der: bytes) -> int:
    return signature_bits(cert_der)


def signature_bits(cert_der: bytes) -> int:
    """A certificate signature's strength in bits (0 when the algorithm is unknown)."""
    try:
        name = der.signature_digest(der.signed_parts(cert_der))
    except der.DerError:  # OpenSSL's name of it: "sha256WithRSAEncryption", "ecdsa-with-SHA1", "ED25519"
        text = _openssl_signature_algorithm(cert_der).lower()
        name = next((n for n in ("ed25519", "ed448", *_DIGEST_BITS) if n in text.replace("-", "")), "")
    if name in ("ed25519", "ed448"):
        return 128 if name == "ed25519" else 224
    return _DIGEST_BITS.get(name or "", 0)


def _openssl_signature_algorithm(cert_der: bytes) -> str:
    """OpenSSL's name for the certificate's signature algorithm; "unknown" where it has none (0 bits)."""
    try:
        return crypto.load_certificate(crypto.FILETYPE_ASN1, cert_der).get_signature_algorithm().decode()
    except (crypto.Error, ValueError):  # pyOpenSSL: ValueError for an algorithm OpenSSL cannot name
        return "unknown"
