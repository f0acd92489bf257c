"""Pure certificate helpers: DER -> CertificateInfo, trust verification, hostname matching.

The same chain is seen on every probe of a target, so three things are cached:
- parsed certificates, by the SHA-256 digest of their DER (32 bytes per entry, not the ~1 KB DER);
- trust stores, per ``ca_file`` (or the system store), reloaded when the file's mtime/size changes;
- trust verdicts, by (chain fingerprints, store version), until the next notBefore/notAfter boundary
  of the chain or ``VERDICT_TTL`` seconds, whichever comes first (a verdict only changes with time
  at those).
The first and last are :class:`AgingCache`: they hold the working set (every certificate probed in
the last hour) however many targets there are, and forget rotated-away certificates.

Trust and hostname are separate verdicts: trust is checked with ``cryptography.x509.verification``
(Web PKI rules, serverAuth EKU) against the leaf's *own* first SAN, so a wrong name never shows up as
a trust failure; the name is then matched by :func:`match_hostname` (RFC 6125). An expired,
untrusted, self-signed or wrong-name chain still yields every CertificateInfo with exact dates.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import logging
import math
import os
import re
import ssl
import sys
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Generic, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509 import verification
from OpenSSL import crypto

from exporter import der, trust
from exporter.probes.base import CertificateInfo, Position, VerifyReason

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

VERDICT_TTL = 300.0  # seconds a cached trust verdict is reused (bounded staleness for revoked anchors)


class LRU(Generic[K, V]):
    """A small bounded least-recently-used mapping (thread-safe enough for get/put)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class AgingCache(Generic[K, V]):
    """Forgets entries unused for ``max_idle`` to 2 x ``max_idle`` seconds; holds at most 2 x ``maxsize``.

    Two generations instead of an LRU: probes visit targets round-robin, which makes an LRU smaller
    than the working set miss every time, and a long-running exporter must drop certificates that
    were rotated away. A get costs one or two dict lookups.
    """

    def __init__(self, maxsize: int, max_idle: float = 3600.0, *, monotonic: Callable[[], float] = time.monotonic):
        self.maxsize = maxsize
        self.max_idle = max_idle
        self._monotonic = monotonic
        self._young: dict[K, V] = {}
        self._old: dict[K, V] = {}
        self._rotated = monotonic()

    def get(self, key: K) -> V | None:
        value = self._young.get(key)
        if value is None:
            value = self._old.get(key)
            if value is not None:
                self._young[key] = value  # still in use: survives the next rotation
        return value

    def put(self, key: K, value: V) -> None:
        if len(self._young) >= self.maxsize or self._monotonic() - self._rotated >= self.max_idle:
            self._old, self._young = self._young, {}
            self._rotated = self._monotonic()
        self._young[key] = value

    def __len__(self) -> int:
        return len(self._young.keys() | self._old.keys())


class CertificateParseError(ValueError):
    """The DER bytes are not a certificate ``cryptography`` can read."""


@dataclass(frozen=True, slots=True)
class ParsedCert:
    """One certificate as parsed once: the info (position/index of first sight) and names to match."""

    info: CertificateInfo
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]  # canonical text (str(ipaddress.ip_address(...))), as in info.sans


PARSE_CACHE_SIZE = 50_000  # certificates per generation; far above 10,000 targets' working set
VERDICT_CACHE_SIZE = 50_000
# Keyed by SHA-256(DER): a digest costs ~1.3 us per certificate, and the cache then holds 32 bytes per
# certificate instead of its whole DER (about 10 MiB at 10,000 distinct leaves).
_parsed: AgingCache[bytes, ParsedCert] = AgingCache(PARSE_CACHE_SIZE)


def signs_itself(der_bytes: bytes) -> bool:
    """Does the certificate's own public key verify its signature? Whatever the algorithm (SHA-1 and
    MD5 included): a CA whose subject equals its issuer but that another key signed is not self-signed.

    False also when the key or the algorithm is one ``cryptography`` cannot check (a GOST or MD2
    signature): such a certificate is reported as an intermediate, never guessed to be a root.
    """
    parts = der.signed_parts(der_bytes)
    scheme = der.signature_scheme(parts)
    try:
        key = serialization.load_der_public_key(parts.public_key)
        _verify_signature(key, scheme, parts.signature, parts.tbs)
    except InvalidSignature:
        return False
    except (ValueError, TypeError, UnsupportedAlgorithm, KeyError) as exc:
        log.debug("a self-issued certificate's signature cannot be checked",
                  extra={"kv": {"algorithm": der.dotted(parts.algorithm), "error": str(exc)}})
        return False
    return True


_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "md5": hashes.MD5, "sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256,
    "sha384": hashes.SHA384, "sha512": hashes.SHA512, "sha3_224": hashes.SHA3_224,
    "sha3_256": hashes.SHA3_256, "sha3_384": hashes.SHA3_384, "sha3_512": hashes.SHA3_512,
}


def _verify_signature(key: object, scheme: der.SignatureScheme, signature: bytes, data: bytes) -> None:
    """Raises InvalidSignature when ``key`` did not sign ``data`` (also when the key does not fit the scheme)."""
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey) and scheme.scheme in ("ed25519", "ed448"):
        key.verify(signature, data)
        return
    digest = _HASHES[scheme.digest]()
    if isinstance(key, rsa.RSAPublicKey) and scheme.scheme == "rsa":
        key.verify(signature, data, padding.PKCS1v15(), digest)
    elif isinstance(key, rsa.RSAPublicKey) and scheme.scheme == "rsa-pss":
        pss = padding.PSS(mgf=padding.MGF1(_HASHES[scheme.mgf_digest]()), salt_length=scheme.salt_length)
        key.verify(signature, data, pss, digest)
    elif isinstance(key, ec.EllipticCurvePublicKey) and scheme.scheme == "ecdsa":
        key.verify(signature, data, ec.ECDSA(digest))
    elif isinstance(key, dsa.DSAPublicKey) and scheme.scheme == "dsa":
        key.verify(signature, data, digest)
    else:
        raise InvalidSignature  # this key cannot have made a signature of that kind


def _load(der_bytes: bytes) -> x509.Certificate:
    with warnings.catch_warnings():  # peers send odd certificates (a serial of 0); report them, do not warn
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return x509.load_der_x509_certificate(der_bytes)


def _parse(der_bytes: bytes, digest: bytes, index: int = 1) -> ParsedCert:
    try:
        fields = der.certificate_fields(der_bytes)
        self_signed = fields.self_issued and signs_itself(der_bytes)
    except der.DerError as exc:
        raise CertificateParseError(str(exc)) from exc
    info = CertificateInfo(
        # The position and index of first sight: a leaf first seen at index 0 needs no positioned copy.
        position=Position.LEAF if index == 0 else Position.ROOT if self_signed and fields.is_ca
        else Position.INTERMEDIATE,
        index=index,
        # The issuer's name is interned: every leaf of one CA repeats it (10,000 copies otherwise). A
        # leaf's own name is not: interning 10,000 unique names grew the interned table by 0.9 MiB.
        subject_cn=fields.subject_cn,
        issuer_cn=sys.intern(fields.issuer_cn),
        serial=fields.serial,
        not_before=fields.not_before,
        not_after=fields.not_after,
        sans=fields.dns_names + fields.ip_addresses,  # dns_names itself when there is no IP SAN
        key_type=fields.key_type,
        key_bits=fields.key_bits,
        signature_algorithm=fields.signature_algorithm,
        sha256=digest,
        self_signed=self_signed,
        is_ca=fields.is_ca,
    )
    return ParsedCert(info, fields.dns_names, fields.ip_addresses)


def parse(der: bytes) -> ParsedCert:
    """Parse one DER certificate (cached by its SHA-256); raises CertificateParseError."""
    return _parse_digest(der, hashlib.sha256(der).digest())


def _parse_digest(der: bytes, digest: bytes, index: int = 1) -> ParsedCert:
    parsed = _parsed.get(digest)
    if parsed is None:
        parsed = _parse(der, digest, index)
        _parsed.put(digest, parsed)
    return parsed


def position_of(index: int, info: CertificateInfo) -> Position:
    """leaf = index 0; root = a self-signed CA; anything else is an intermediate."""
    if index == 0:
        return Position.LEAF
    return Position.ROOT if info.self_signed and info.is_ca else Position.INTERMEDIATE


_positioned: AgingCache[tuple[bytes, int], CertificateInfo] = AgingCache(PARSE_CACHE_SIZE)


def _at_index(info: CertificateInfo, index: int) -> CertificateInfo:
    if info.index == index:
        return info
    # dataclasses.replace costs tens of microseconds; the same (cert, index) recurs on every probe.
    key = (info.sha256, index)
    positioned = _positioned.get(key)
    if positioned is None:
        positioned = replace(info, index=index, position=position_of(index, info))
        _positioned.put(key, positioned)
    return positioned


@dataclass(frozen=True, slots=True)
class PresentedChain:
    """The certificates a peer presented, each hashed and parsed once for the whole probe.

    A certificate that cannot be read is an error for that certificate alone: it has no info (and
    so no series), its error names its index and the byte offset, and the others keep theirs.
    """

    ders: tuple[bytes, ...]
    digests: tuple[bytes, ...]  # SHA-256 of each DER, readable or not (the verdict cache's key)
    parsed: tuple[ParsedCert | None, ...]  # as first seen (for names and dates); None: unreadable
    infos: tuple[CertificateInfo, ...]  # the readable ones, with this chain's index and position
    errors: tuple[str, ...] = ()  # one message per unreadable certificate ("certificate 2: ...")
    # The same certificates as OpenSSL decoded them in the handshake (saves decoding them again
    # for its verifier, about 60 us per RSA certificate); empty for a chain from elsewhere.
    decoded: tuple[crypto.X509, ...] = ()

    @property
    def leaf(self) -> ParsedCert | None:
        return self.parsed[0]


def read_chain(ders: Sequence[bytes], decoded: Sequence[crypto.X509] = ()) -> PresentedChain:
    """Parse a presented chain (leaf first); never raises for a certificate's content."""
    digests = tuple(hashlib.sha256(d).digest() for d in ders)
    parsed: list[ParsedCert | None] = []
    errors: list[str] = []
    for index, (der_bytes, digest) in enumerate(zip(ders, digests, strict=True)):
        try:
            parsed.append(_parse_digest(der_bytes, digest, index))
        except CertificateParseError as exc:
            parsed.append(None)
            errors.append(f"certificate {index} cannot be read: {exc}")
    infos = tuple(_at_index(p.info, index) for index, p in enumerate(parsed) if p is not None)
    return PresentedChain(tuple(ders), digests, tuple(parsed), infos, tuple(errors), tuple(decoded))


# --- hostname (RFC 6125) -------------------------------------------------------------------------


def _wildcard_match(pattern: str, name: str) -> bool:
    # Only a whole left-most "*" label, matching exactly one label, with at least two labels after it
    # (no "*.com", no "f*o.example", no "*.*.example"): what OpenSSL and browsers accept.
    if not pattern.startswith("*.") or "*" in pattern[2:]:
        return False
    suffix = pattern[1:]
    if suffix.count(".") < 2:
        return False
    head, dot, rest = name.partition(".")
    return bool(head) and bool(dot) and "." + rest == suffix


def match_hostname(parsed: ParsedCert, name: str, *, cn_fallback: bool = False) -> bool:
    """Does the leaf's SAN cover ``name`` (DNS name, or IP literal against IP SANs only)?

    With ``cn_fallback`` (profile openssl: OpenSSL's X509_check_host, as curl uses it), a leaf with
    no DNS or IP SAN at all is matched by its subject commonName instead.
    """
    bare = name.strip("[]")
    if any(c == ":" for c in bare) or bare.replace(".", "").isdigit():  # cheap pre-check before ipaddress
        try:
            return str(ipaddress.ip_address(bare)) in parsed.ip_addresses
        except ValueError:
            pass
    if cn_fallback and not parsed.dns_names and not parsed.ip_addresses and parsed.info.subject_cn:
        return _name_matches(parsed.info.subject_cn, name)
    return any(_name_matches(san, name) for san in parsed.dns_names)


def _name_matches(pattern_name: str, name: str) -> bool:
    wanted = name.rstrip(".").lower()
    if not wanted.isascii():
        try:
            wanted = wanted.encode("idna").decode("ascii")  # SANs hold A-labels (xn--...)
        except UnicodeError:
            return False
    pattern = pattern_name.rstrip(".").lower()
    return pattern == wanted or _wildcard_match(pattern, wanted)


# --- trust ---------------------------------------------------------------------------------------


class TrustStoreError(Exception):
    """The CA file cannot be read or holds no certificate."""


@dataclass(frozen=True, slots=True)
class _LoadedStore:
    token: tuple[object, ...]  # identifies the file version the store was built from
    store: verification.Store | None  # for profile webpki (cryptography); None: it reads no anchor
    anchors: frozenset[bytes]  # DER of every anchor, to tell "self-signed and trusted" apart
    openssl: crypto.X509Store  # for profile openssl (every certificate OpenSSL reads from the file)
    openssl_certs: tuple[crypto.X509, ...]

    def openssl_at(self, moment: dt.datetime | None) -> crypto.X509Store:
        """The OpenSSL store, checking validity at the system's time (None) or at ``moment``.

        OpenSSL keeps the first time set on a store, so a moment gets a store of its own (built in
        about 3 us per anchor): only an injected clock (tests) asks for one.
        """
        if moment is None:
            return self.openssl
        store = crypto.X509Store()
        store.set_time(moment)
        for cert in self.openssl_certs:
            store.add_cert(cert)
        return store


def _system_bundle() -> Path:
    paths = ssl.get_default_verify_paths()
    for candidate in (os.environ.get(paths.openssl_cafile_env), paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise TrustStoreError("no system CA bundle found (set SSL_CERT_FILE or the module's tls.ca_file)")


class TrustStores:
    """Trust stores per CA file, rebuilt when the file changes (checked at most every ``recheck`` s)."""

    def __init__(self, *, recheck: float = 1.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._stores: dict[Path | None, _LoadedStore] = {}
        self._checked: dict[Path | None, float] = {}
        self._loaded: dict[Path, _LoadedStore] = {}
        self._lock = threading.Lock()
        self._recheck = recheck
        self._monotonic = monotonic

    def get(self, ca_file: Path | None) -> _LoadedStore:
        """The store for ``ca_file`` (None: the system bundle); raises TrustStoreError."""
        now = self._monotonic()
        loaded = self._stores.get(ca_file)
        if loaded is not None and now - self._checked.get(ca_file, -math.inf) < self._recheck:
            return loaded  # a stat per probe costs more than the rest of verification
        loaded = self._get(_system_bundle() if ca_file is None else ca_file)
        self._stores[ca_file] = loaded
        self._checked[ca_file] = now
        return loaded

    def _get(self, path: Path) -> _LoadedStore:
        try:
            st = path.stat()
        except OSError as exc:
            raise TrustStoreError(f"{path}: {exc.strerror}") from exc
        token = (str(path), st.st_mtime_ns, st.st_size, st.st_ino)
        loaded = self._loaded.get(path)
        if loaded is not None and loaded.token == token:
            return loaded
        with self._lock:
            loaded = self._load(path, token)
            self._loaded[path] = loaded
        return loaded

    @staticmethod
    def _load(path: Path, token: tuple[object, ...]) -> _LoadedStore:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise TrustStoreError(f"{path}: {exc.strerror}") from exc
        certs, skipped, openssl = _load_pem_bundle(data)
        if not certs and not openssl:
            raise TrustStoreError(f"{path}: no PEM certificate could be read")
        anchors = frozenset(c.public_bytes(Encoding.DER) for c in certs)
        store = crypto.X509Store()
        for cert in openssl:
            store.add_cert(cert)
        log.debug("trust store loaded",
                  extra={"kv": {"path": str(path), "certificates": len(certs), "skipped": skipped}})
        # cryptography's Store refuses an empty list: then profile webpki trusts nothing.
        return _LoadedStore(token, verification.Store(certs) if certs else None, anchors, store, tuple(openssl))


_PEM_END = b"-----END CERTIFICATE-----"


def _load_pem_bundle(data: bytes) -> tuple[list[x509.Certificate], int, list[crypto.X509]]:
    # One by one, so a single odd certificate (system bundles hold a few, e.g. with a non-positive
    # serial that cryptography warns about) neither fails the whole store nor spams warnings. Each
    # verifier gets every certificate it can read itself.
    certs: list[x509.Certificate] = []
    openssl: list[crypto.X509] = []
    skipped = 0
    for block in data.split(_PEM_END)[:-1]:
        pem = block[block.find(b"-----BEGIN"):] + _PEM_END
        with contextlib.suppress(crypto.Error):
            openssl.append(crypto.load_certificate(crypto.FILETYPE_PEM, pem))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                certs.append(x509.load_pem_x509_certificate(pem))
        except (ValueError, x509.InvalidVersion):
            skipped += 1
    return certs, skipped, openssl


@dataclass(frozen=True, slots=True)
class Verdict:
    """The trust verdict of one presented chain."""

    verified: bool
    reason: VerifyReason | None = None
    detail: str = ""


class ChainVerifier:
    """Verifies presented chains against trust stores, caching verdicts (see module docstring)."""

    def __init__(
        self,
        stores: TrustStores | None = None,
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = VERDICT_CACHE_SIZE,
    ) -> None:
        self.stores = stores or TrustStores()
        self._clock = clock
        self._cache: AgingCache[tuple[object, ...], tuple[Verdict, float]] = AgingCache(cache_size)

    def verify(
        self, chain: PresentedChain, ca_file: Path | None, *, profile: str = "openssl",
        security_level: int = trust.DEFAULT_SECURITY_LEVEL,
    ) -> Verdict:
        """Would a client of ``profile`` trust this chain (a path from the leaf to a trust anchor)?"""
        now = self._clock()
        try:
            store = self.stores.get(ca_file)
        except TrustStoreError as exc:
            return Verdict(False, VerifyReason.INVALID, f"trust store: {exc}")
        # Digests, not DER: they are already held by the parse cache (no second copy of each DER).
        key = (chain.digests, store.token, profile, security_level)
        cached = self._cache.get(key)
        if cached is not None and now < cached[1]:
            return cached[0]
        if profile == "webpki":
            verdict = self._verify_webpki(chain, store, now)
        else:
            # OpenSSL checks validity against the system's clock unless told a time (see openssl_at).
            moment = None if self._clock is time.time else dt.datetime.fromtimestamp(now, dt.UTC)
            verdict = _verify_openssl(chain, store.openssl_at(moment), security_level)
        self._cache.put(key, (verdict, self._valid_until(chain.parsed, now)))
        if not verdict.verified or chain.errors:  # logged when decided: once per chain and VERDICT_TTL
            leaf = chain.leaf
            log.info("chain verdict", extra={"kv": {
                "leaf": leaf.info.subject_cn if leaf else "", "profile": profile, "verified": verdict.verified,
                "reason": verdict.reason or "", "detail": "; ".join([*chain.errors, verdict.detail])}})
        return verdict

    @staticmethod
    def _valid_until(parsed: Sequence[ParsedCert | None], now: float) -> float:
        boundaries = [t for p in parsed if p is not None for t in (p.info.not_before, p.info.not_after) if t > now]
        return min([now + VERDICT_TTL, *boundaries])

    def _verify_webpki(self, chain: PresentedChain, store: _LoadedStore, now: float) -> Verdict:
        leaf = chain.leaf
        if leaf is None:
            return Verdict(False, VerifyReason.INVALID, chain.errors[0])
        if leaf.info.self_signed and chain.ders[0] not in store.anchors:
            return Verdict(False, VerifyReason.SELF_SIGNED, "certificate 0 "
                           f"({_cn(leaf.info)}) is self-signed and not a trust anchor")
        if store.store is None:
            return Verdict(False, VerifyReason.UNKNOWN_ISSUER,
                           "the trust store holds no certificate cryptography reads")
        moment = dt.datetime.fromtimestamp(now, dt.UTC)
        verifier = _server_verifier(verification.PolicyBuilder().store(store.store).time(moment), leaf)
        if verifier is None:
            return Verdict(False, VerifyReason.INVALID, f"certificate 0 ({_cn(leaf.info)}) has no usable "
                           "subjectAltName: Web PKI clients match names only there")
        try:
            certs = [_load(der) for der in chain.ders]
        except (ValueError, x509.InvalidVersion) as exc:  # not a certificate cryptography accepts
            return Verdict(False, VerifyReason.INVALID, f"a certificate cannot be verified: {_clean(str(exc))}")
        try:
            verifier.verify(certs[0], certs[1:])
        except verification.VerificationError as exc:
            return _classify(str(exc), chain.parsed, now)
        return Verdict(True)


def _verify_openssl(chain: PresentedChain, store: crypto.X509Store, level: int) -> Verdict:
    try:
        leaf = chain.leaf
        loaded = trust.OpenSSLChain(chain.ders, chain.decoded,
                                    (leaf.info.key_type, leaf.info.key_bits) if leaf is not None else None)
    except crypto.Error:  # a TLS peer's chain was read by OpenSSL already; a file's may not be
        return Verdict(False, VerifyReason.INVALID, "a certificate cannot be read by OpenSSL")
    failure = loaded.verify(store, level)
    return Verdict(True) if failure is None else Verdict(False, failure.reason, failure.detail)


def _cn(info: CertificateInfo) -> str:
    return f"CN={info.subject_cn}" if info.subject_cn else "no CN"


def _own_subjects(leaf: ParsedCert) -> list[verification.Subject]:
    # Verify trust against a name the leaf does carry, so a name mismatch stays out of the trust verdict.
    # A wildcard SAN stands for any one label: "*.example.com" -> "wildcard.example.com".
    dns: list[verification.Subject] = [
        x509.DNSName("wildcard" + name[1:] if name.startswith("*.") else name) for name in leaf.dns_names
    ]
    return dns + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in leaf.ip_addresses]


def _server_verifier(builder: verification.PolicyBuilder, leaf: ParsedCert) -> verification.ServerVerifier | None:
    for subject in _own_subjects(leaf):
        try:
            return builder.build_server_verifier(subject)
        except ValueError:  # a SAN that is not a valid reference name (e.g. "*" alone, bad IDNA)
            continue
    return None


_DUMP = re.compile(r"[A-Z]\w*(?:<[^>]*>)? ?[{(].*", re.DOTALL)  # a Rust debug dump: Name { ... }, Other(...)


def _clean(message: str) -> str:
    """cryptography's message without its Rust debug dumps and the context it appends."""
    text = message.split(" (encountered processing", 1)[0]
    quoted: list[str] = re.findall(r'"([^"]{3,})"', text)
    if quoted:  # validation failed: Other("EE keyUsage must not assert keyCertSign")
        return quoted[-1]
    return _DUMP.sub("", text).rstrip(" :") or "the chain was refused"


_WEBPKI_REASONS = (  # phrases of cryptography's messages (43..50) -> reasons
    ("RSA key is too weak", VerifyReason.WEAK_KEY), ("Forbidden public key algorithm", VerifyReason.WEAK_KEY),
    ("Forbidden signature algorithm", VerifyReason.WEAK_SIGNATURE), ("path length", VerifyReason.PATH_LENGTH),
    ("name constraint", VerifyReason.NAME_CONSTRAINTS), ("maximum depth", VerifyReason.CHAIN_TOO_LONG),
    ("extended key usage", VerifyReason.PURPOSE),
)


def _classify(message: str, parsed: Sequence[ParsedCert | None], now: float) -> Verdict:
    # cryptography's VerificationError carries only a message; these phrases are stable across
    # 43..50 ("cert is not valid at validation time", "candidates exhausted ... no interior errors").
    detail = _clean(message)
    if "not valid at validation time" in message:
        infos = [p.info for p in parsed if p is not None]
        if any(i.not_after < now for i in infos):
            return Verdict(False, VerifyReason.EXPIRED, detail)
        if any(i.not_before > now for i in infos):
            return Verdict(False, VerifyReason.NOT_YET_VALID, detail)
        return Verdict(False, VerifyReason.EXPIRED, detail + " (a trust anchor is out of its validity period)")
    if "no interior errors" in message:
        return Verdict(False, VerifyReason.UNKNOWN_ISSUER, "no path from the leaf to a trust anchor")
    lowered = message.lower()
    for phrase, reason in _WEBPKI_REASONS:
        if phrase.lower() in lowered:
            return Verdict(False, reason, detail)
    return Verdict(False, VerifyReason.INVALID, detail)
