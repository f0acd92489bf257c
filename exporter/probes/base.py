"""The one probe contract every probe kind implements.

A probe is ``async def probe(request: ProbeRequest) -> list[ProbeResult]``. It never raises for a
failure of the thing probed: a refused port, a stalled peer, a lying TLS server or an unreadable file
is a ``ProbeResult`` with ``success=False`` and a bounded ``reason``. It returns one result per address
probed (``probe_all_ips``) or per file read (kind ``file``); otherwise exactly one.

Probes know nothing of metrics: the collector renders results; the scheduler decides when to probe.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from exporter.config import Module, Policies


class Phase(enum.StrEnum):
    """Timed steps of a network probe (label ``phase`` of tls_probe_duration_seconds)."""

    RESOLVE = "resolve"
    CONNECT = "connect"
    STARTTLS = "starttls"
    HANDSHAKE = "handshake"


class Reason(enum.StrEnum):
    """Why a probe failed: a bounded set, the label ``reason`` of tls_probe_error_info."""

    DNS = "dns"  # the name does not resolve (NXDOMAIN, no address of the wanted family)
    RESOLVE_TIMEOUT = "resolve_timeout"
    REFUSED = "refused"  # TCP RST on connect
    UNREACHABLE = "unreachable"  # no route / network unreachable / other connect OSError
    CONNECT_TIMEOUT = "connect_timeout"
    PROXY = "proxy"  # the CONNECT proxy refused, failed or answered garbage
    STARTTLS_UNSUPPORTED = "starttls_unsupported"  # server did not offer the upgrade
    STARTTLS_REFUSED = "starttls_refused"  # server answered the upgrade request with an error
    STARTTLS_PROTOCOL = "starttls_protocol"  # server spoke something other than the protocol
    STARTTLS_TIMEOUT = "starttls_timeout"
    TLS_ALERT = "tls_alert"  # handshake failed: peer alert, no shared cipher/version
    NOT_TLS = "not_tls"  # peer answered with bytes that are not TLS
    CONNECTION_CLOSED = "connection_closed"  # peer closed or reset during the handshake
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    CLIENT_CERT = "client_cert"  # the module's client certificate or key cannot be loaded
    FILE_NOT_FOUND = "file_not_found"
    FILE_PERMISSION = "file_permission"
    FILE_READ = "file_read"
    BAD_PEM = "bad_pem"
    BAD_DER = "bad_der"
    BAD_PKCS12 = "bad_pkcs12"
    BAD_PASSPHRASE = "bad_passphrase"
    NO_CERTIFICATE = "no_certificate"  # a file or peer yielded no certificate at all
    INTERNAL = "internal"  # a bug in certpager; logged with a traceback, still a result


class VerifyReason(enum.StrEnum):
    """Why the presented chain is not trusted (label ``reason`` of tls_verify_error_info)."""

    EXPIRED = "expired"  # a certificate on the path is past notAfter
    NOT_YET_VALID = "not_yet_valid"
    SELF_SIGNED = "self_signed"  # the leaf signs itself and is not a trust anchor
    UNKNOWN_ISSUER = "unknown_issuer"  # no path to a trust anchor (an untrusted or unknown root)
    MISSING_INTERMEDIATE = "missing_intermediate"  # the peer sent the leaf without its issuer
    CHAIN_TOO_LONG = "chain_too_long"  # more certificates than the verifier's depth limit
    PATH_LENGTH = "path_length"  # a CA's pathLenConstraint is exceeded
    NAME_CONSTRAINTS = "name_constraints"  # a name outside a CA's permitted (or inside its excluded) names
    PURPOSE = "purpose"  # a certificate not meant for TLS servers (extendedKeyUsage, keyUsage)
    WEAK_KEY = "weak_key"  # a key below the security level (e.g. RSA-1024 at level 2)
    WEAK_SIGNATURE = "weak_signature"  # a signature below the security level (SHA-1, MD5)
    INVALID = "invalid"  # any other failure (bad signature, not a CA, unhandled critical extension, ...)


class Position(enum.StrEnum):
    LEAF = "leaf"
    INTERMEDIATE = "intermediate"
    ROOT = "root"  # self-signed CA certificate


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What the exporter reports of one certificate (no DER kept: memory per target matters)."""

    position: Position
    index: int  # order in which the peer (or file) presented it, from 0
    subject_cn: str
    issuer_cn: str
    serial: str  # lower-case hex, no separators
    not_before: float  # unix seconds
    not_after: float  # unix seconds
    sans: tuple[str, ...]  # DNS names and IP addresses
    key_type: str  # rsa | ec | ed25519 | ed448 | dsa
    key_bits: int
    signature_algorithm: str  # e.g. sha256WithRSAEncryption, ecdsa-with-SHA384
    sha256: bytes  # SHA-256 of the DER (the parse cache's key object: no second copy per certificate)
    self_signed: bool
    is_ca: bool

    @property
    def fingerprint_sha256(self) -> str:
        """The SHA-256 fingerprint in lower-case hex (computed when rendered, not stored)."""
        return self.sha256.hex()


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of probing one address of a target (or one file)."""

    success: bool  # handshake completed (or file parsed) and a chain was read
    reason: Reason | None = None  # set exactly when success is False
    detail: str = ""  # human explanation for logs and ``certpager probe``; never a label
    ip: str | None = None  # the address connected to (label ``ip`` when probing all IPs)
    path: str | None = None  # kind file: the file the chain came from
    durations: Mapping[Phase, float] = field(default_factory=dict)
    tls_version: str | None = None  # "TLS 1.3" (blackbox's spelling)
    cipher: str | None = None  # OpenSSL cipher name
    chain: tuple[CertificateInfo, ...] = ()
    chain_verified: bool | None = None  # None: not checked (insecure_skip_verify, or no chain)
    verify_reason: VerifyReason | None = None  # set exactly when chain_verified is False
    hostname_verified: bool | None = None  # None: not checked (files, no chain)
    # policy name -> violated; holds exactly the policies that were configured and checked
    policy_violations: Mapping[str, bool] = field(default_factory=dict)
    started_at: float = 0.0  # unix seconds, from the injected clock
    duration: float = 0.0  # whole probe, seconds

    @property
    def earliest_expiry(self) -> float | None:
        return min((c.not_after for c in self.chain), default=None)


@dataclass(frozen=True, slots=True)
class ProbeRequest:
    """Everything one probe needs; built by the scheduler or the /probe handler."""

    target: str  # host:port, [v6]:port, or a path/glob for kind file
    module: Module
    timeout: float  # seconds for the whole probe (all phases, all addresses)
    policies: Policies = field(default_factory=Policies)
    labels: Mapping[str, str] = field(default_factory=dict)  # the target's labels (policy scoping)
    address: str | None = None  # connect here instead of resolving the target host


ProbeFn = Callable[[ProbeRequest], Awaitable[list[ProbeResult]]]
