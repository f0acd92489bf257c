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

import datetime as dt
import hashlib
import ipaddress
import logging
import math
import os
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
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509 import verification

from exporter import der
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


def _is_self_signed(der_bytes: bytes) -> bool:
    """Is a self-issued certificate signed by its own key? (cryptography, the only signature checker)"""
    cert = _load(der_bytes)
    try:
        cert.verify_directly_issued_by(cert)
    except InvalidSignature:
        return False
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # cryptography will not check some signatures (SHA-1, MD5): fall back to the key identifiers.
        return _key_ids_match(cert)
    return True


def _load(der_bytes: bytes) -> x509.Certificate:
    with warnings.catch_warnings():  # peers send odd certificates (a serial of 0); report them, do not warn
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return x509.load_der_x509_certificate(der_bytes)


def _key_ids_match(cert: x509.Certificate) -> bool:
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return True  # same subject and issuer name and nothing to tell them apart
    return aki is None or aki == ski


def _parse(der_bytes: bytes, digest: bytes, index: int = 1) -> ParsedCert:
    try:
        fields = der.certificate_fields(der_bytes)
        self_signed = fields.self_issued and _is_self_signed(der_bytes)
    except ValueError as exc:  # der.DerError, and cryptography's for what it cannot load
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
    """The certificates a peer presented, each hashed and parsed once for the whole probe."""

    ders: tuple[bytes, ...]
    parsed: tuple[ParsedCert, ...]  # as first seen (for names and dates)
    infos: tuple[CertificateInfo, ...]  # with this chain's index and position of each certificate

    @property
    def leaf(self) -> ParsedCert:
        return self.parsed[0]


def read_chain(ders: Sequence[bytes]) -> PresentedChain:
    """Parse a presented chain (leaf first); raises CertificateParseError."""
    parsed = tuple(_parse_digest(der, hashlib.sha256(der).digest(), index) for index, der in enumerate(ders))
    infos = tuple(_at_index(p.info, index) for index, p in enumerate(parsed))
    return PresentedChain(tuple(ders), parsed, infos)


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


def match_hostname(parsed: ParsedCert, name: str) -> bool:
    """Does the leaf's SAN cover ``name`` (DNS name, or IP literal against IP SANs only)?"""
    bare = name.strip("[]")
    if any(c == ":" for c in bare) or bare.replace(".", "").isdigit():  # cheap pre-check before ipaddress
        try:
            return str(ipaddress.ip_address(bare)) in parsed.ip_addresses
        except ValueError:
            pass
    wanted = name.rstrip(".").lower()
    if not wanted.isascii():
        try:
            wanted = wanted.encode("idna").decode("ascii")  # SANs hold A-labels (xn--...)
        except UnicodeError:
            return False
    for san in parsed.dns_names:
        pattern = san.rstrip(".").lower()
        if pattern == wanted or _wildcard_match(pattern, wanted):
            return True
    return False


# --- trust ---------------------------------------------------------------------------------------


class TrustStoreError(Exception):
    """The CA file cannot be read or holds no certificate."""


@dataclass(frozen=True, slots=True)
class _LoadedStore:
    token: tuple[object, ...]  # identifies the file version the store was built from
    store: verification.Store
    anchors: frozenset[bytes]  # DER of every anchor, to tell "self-signed and trusted" apart


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
        certs, skipped = _load_pem_bundle(data)
        if not certs:
            raise TrustStoreError(f"{path}: no PEM certificate could be read")
        anchors = frozenset(c.public_bytes(Encoding.DER) for c in certs)
        log.debug("trust store loaded",
                  extra={"kv": {"path": str(path), "certificates": len(certs), "skipped": skipped}})
        return _LoadedStore(token, verification.Store(certs), anchors)


_PEM_END = b"-----END CERTIFICATE-----"


def _load_pem_bundle(data: bytes) -> tuple[list[x509.Certificate], int]:
    # One by one, so a single odd certificate (system bundles hold a few, e.g. with a non-positive
    # serial that cryptography warns about) neither fails the whole store nor spams warnings.
    certs: list[x509.Certificate] = []
    skipped = 0
    for block in data.split(_PEM_END)[:-1]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                certs.append(x509.load_pem_x509_certificate(block + _PEM_END))
        except ValueError:
            skipped += 1
    return certs, skipped


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

    def verify(self, chain: PresentedChain, ca_file: Path | None) -> Verdict:
        """Is there a path from the leaf through the presented certificates to a trust anchor?"""
        now = self._clock()
        try:
            store = self.stores.get(ca_file)
        except TrustStoreError as exc:
            return Verdict(False, VerifyReason.INVALID, f"trust store: {exc}")
        # Digests, not DER: they are already held by the parse cache (no second copy of each DER).
        key = (tuple(p.info.sha256 for p in chain.parsed), store.token)
        cached = self._cache.get(key)
        if cached is not None and now < cached[1]:
            return cached[0]
        verdict = self._verify(chain, store, now)
        self._cache.put(key, (verdict, self._valid_until(chain.parsed, now)))
        return verdict

    @staticmethod
    def _valid_until(parsed: Sequence[ParsedCert], now: float) -> float:
        boundaries = [t for p in parsed for t in (p.info.not_before, p.info.not_after) if t > now]
        return min([now + VERDICT_TTL, *boundaries])

    def _verify(self, chain: PresentedChain, store: _LoadedStore, now: float) -> Verdict:
        if chain.leaf.info.self_signed and chain.ders[0] not in store.anchors:
            return Verdict(False, VerifyReason.SELF_SIGNED, "the leaf is self-signed and not a trust anchor")
        moment = dt.datetime.fromtimestamp(now, dt.UTC)
        verifier = _server_verifier(verification.PolicyBuilder().store(store.store).time(moment), chain.leaf)
        if verifier is None:
            return Verdict(False, VerifyReason.INVALID, "the leaf has no usable subjectAltName")
        try:
            certs = [_load(der) for der in chain.ders]
        except ValueError as exc:  # read by exporter/der.py, but not a certificate cryptography accepts
            return Verdict(False, VerifyReason.INVALID, f"a certificate cannot be verified: {exc}")
        try:
            verifier.verify(certs[0], certs[1:])
        except verification.VerificationError as exc:
            return _classify(str(exc), chain.parsed, now)
        return Verdict(True)


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


def _classify(message: str, parsed: Sequence[ParsedCert], now: float) -> Verdict:
    # cryptography's VerificationError carries only a message; these phrases are stable across
    # 43..50 ("cert is not valid at validation time", "candidates exhausted ... no interior errors").
    detail = message.split(" (encountered processing", 1)[0]
    if "not valid at validation time" in message:
        infos = [p.info for p in parsed]
        if any(i.not_after < now for i in infos):
            return Verdict(False, VerifyReason.EXPIRED, detail)
        if any(i.not_before > now for i in infos):
            return Verdict(False, VerifyReason.NOT_YET_VALID, detail)
        return Verdict(False, VerifyReason.EXPIRED, detail + " (a trust anchor is out of its validity period)")
    if "no interior errors" in message:
        return Verdict(False, VerifyReason.UNKNOWN_ISSUER, "no path from the leaf to a trust anchor")
    return Verdict(False, VerifyReason.INVALID, detail)
