"""The exporter's config schema: modules, targets, target files, thresholds, policies.

Every model is strict (unknown keys are errors) and frozen; a reload swaps the whole ``Config``.
Durations are written Prometheus-style (``30s``, ``5m``, ``7d``) and held as float seconds.
See docs/exporter-config.md for the user-facing reference; keep both in step.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, Field, field_validator, model_validator

from certpager.auth import FileAuth
from certpager.config import CHECK_FILES, Duration, Problems, ReadableFile, StrictModel, load_config
from exporter.access import check_entry

ModuleKind = Literal["tls", "starttls", "file"]
StartTLSProtocol = Literal[
    "smtp", "lmtp", "imap", "pop3", "ftp", "ldap", "postgres", "mysql", "xmpp", "xmpp-server"
]
TLSVersion = Literal["TLS1.0", "TLS1.1", "TLS1.2", "TLS1.3"]
IPProtocol = Literal["ip4", "ip6"]

THRESHOLD_CLASSES = ("certificate_expiring_30_days", "certificate_expiring_7_days", "certificate_expired")
DEFAULT_THRESHOLDS: Mapping[str, float] = {
    "certificate_expiring_30_days": 30 * 86400.0,
    "certificate_expiring_7_days": 7 * 86400.0,
    "certificate_expired": 0.0,
}
# Label names a target may not set: they are produced by the exporter itself.
RESERVED_LABELS = frozenset(
    {"target", "ip", "path", "position", "index", "subject_cn", "issuer_cn", "serial", "class", "policy",
     "reason", "phase", "version", "cipher", "sans", "key_type", "key_bits", "signature_algorithm",
     "fingerprint_sha256", "module"}
)
MAX_PROBE_TIMEOUT = 3600.0
LABEL_NAME_RE = r"^[a-zA-Z_][a-zA-Z0-9_]*$"


class TLSSettings(StrictModel):
    """How to handshake and what to trust."""

    server_name: str | None = None  # SNI and the name verified; default: the target's host
    # Files are checked readable at load and reload: a typo would fail every target's verdict.
    ca_file: ReadableFile | None = None  # trust anchors; default: the system store
    cert_file: ReadableFile | None = None  # client certificate (mTLS)
    key_file: ReadableFile | None = None
    key_password_file: ReadableFile | None = None
    insecure_skip_verify: bool = False  # skip the trust verdict (dates are always exported)
    # Whose trust verdict: "openssl" (an OpenSSL 3 client: curl, Python, nginx upstreams) or "webpki"
    # (the CA/Browser Forum profile of cryptography's verifier). docs/exporter-config.md.
    verify_profile: Literal["openssl", "webpki"] = "openssl"
    security_level: int = Field(default=2, ge=0, le=5)  # OpenSSL's; openssl profile only
    min_version: TLSVersion | None = None
    max_version: TLSVersion | None = None

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, value: str | None) -> str | None:
        return _protocol_name(value)

    @model_validator(mode="after")
    def _client_cert_pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together")
        if self.min_version and self.max_version and self.min_version > self.max_version:
            raise ValueError(f"min_version {self.min_version} is above max_version {self.max_version}")
        return self


class StartTLSSettings(StrictModel):
    """The plaintext protocol spoken before the TLS upgrade."""

    protocol: StartTLSProtocol
    # Name announced in EHLO/LHLO (smtp, lmtp) or the stream's "to" domain (xmpp); default: target host.
    hello_name: str | None = None
    # postgres: "sslrequest" (classic) or "direct" (PostgreSQL 17 direct TLS with ALPN postgresql).
    postgres_mode: Literal["sslrequest", "direct"] = "sslrequest"

    @field_validator("hello_name")
    @classmethod
    def _hello_name(cls, value: str | None) -> str | None:
        return _protocol_name(value)


class ProxySettings(StrictModel):
    """An HTTP CONNECT proxy the probe tunnels through."""

    url: str  # http://host:port
    auth_file: ReadableFile | None = None  # "user:password" for Proxy-Authorization: Basic

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        expected = "expected an http://host:port proxy URL (HTTP CONNECT)"
        if not value.startswith("http://") or any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError(expected)
        try:
            parts = urllib.parse.urlsplit(value)
            port = parts.port  # raises ValueError for a port that is not 0-65535 digits
        except ValueError:
            raise ValueError(f"{expected}: the port must be a number from 1 to 65535") from None
        if not parts.hostname or port == 0:
            raise ValueError(expected)
        return value


class FileSettings(StrictModel):
    """Certificate files: PEM bundles, DER, PKCS#12."""

    password_file: ReadableFile | None = None  # PKCS#12 password


class Module(StrictModel):
    """Named probe settings, blackbox-style."""

    kind: ModuleKind = "tls"
    timeout: Duration = 10.0
    tls: TLSSettings = TLSSettings()
    starttls: StartTLSSettings | None = None
    proxy: ProxySettings | None = None
    file: FileSettings = FileSettings()
    ip_protocol: IPProtocol = "ip6"  # preferred family, like blackbox's preferred_ip_protocol
    ip_protocol_fallback: bool = True
    probe_all_ips: bool = False  # probe every resolved address, labelled ``ip``
    source_ip_address: str | None = None

    @model_validator(mode="after")
    def _kind_settings(self) -> Self:
        if self.kind == "starttls" and self.starttls is None:
            raise ValueError("kind starttls needs a starttls: {protocol: ...} section")
        if self.kind != "starttls" and self.starttls is not None:
            raise ValueError(f"starttls settings given for kind {self.kind}")
        return self

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("expected a duration greater than 0")
        if value > MAX_PROBE_TIMEOUT:
            raise ValueError("expected a duration of at most 1h (a probe that long never answers a scrape)")
        return value

    @field_validator("source_ip_address")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.ip_address(value)
        return value


DEFAULT_MODULES: Mapping[str, Module] = {"tls": Module()}


class Thresholds(StrictModel):
    """Expiry classes: alert when less than this much time is left."""

    certificate_expiring_30_days: Duration = DEFAULT_THRESHOLDS["certificate_expiring_30_days"]
    certificate_expiring_7_days: Duration = DEFAULT_THRESHOLDS["certificate_expiring_7_days"]
    certificate_expired: Duration = DEFAULT_THRESHOLDS["certificate_expired"]

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in THRESHOLD_CLASSES}


class ThresholdOverrides(StrictModel):
    """Per-target (or per label group) thresholds; unset classes inherit."""

    certificate_expiring_30_days: Duration | None = None
    certificate_expiring_7_days: Duration | None = None
    certificate_expired: Duration | None = None

    def apply(self, base: Mapping[str, float]) -> dict[str, float]:
        merged = dict(base)
        for name in THRESHOLD_CLASSES:
            value = getattr(self, name)
            if value is not None:
                merged[name] = value
        return merged


class ThresholdGroup(StrictModel):
    """Thresholds for every target whose labels match all of ``match``."""

    match: dict[str, str]
    thresholds: ThresholdOverrides

    @field_validator("match")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value)


class Policies(StrictModel):
    """Certificate and connection policies; each configured one is exported as checked."""

    min_rsa_bits: int | None = Field(default=None, ge=1, le=65536)
    min_ec_bits: int | None = Field(default=None, ge=1, le=65536)
    forbidden_signature_algorithms: list[str] = Field(default_factory=list)  # e.g. [sha1, md5]
    min_tls_version: TLSVersion | None = None
    max_validity_days: int | None = Field(default=None, ge=1, le=36500)
    # Self-signed leaves are a violation for targets whose labels match any of these label sets
    # ([{}] = everywhere).
    forbid_self_signed: list[dict[str, str]] = Field(default_factory=list)


class Target(StrictModel):
    """One endpoint (host:port) or, for kind ``file``, a path, glob or directory."""

    target: str
    module: str = "tls"
    labels: dict[str, str] = Field(default_factory=dict)
    interval: Duration | None = None  # default: global.scrape_interval
    thresholds: ThresholdOverrides | None = None
    # Connect to this address instead of resolving the target's host (SNI/verify still use the name).
    address: str | None = None

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value)

    @field_validator("interval")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        return _positive_duration(value)


class TargetFile(StrictModel):
    """Prometheus file_sd files (JSON or YAML), watched and reloaded when they change."""

    files: list[str] = Field(min_length=1)  # paths or globs, relative to the config file's directory
    module: str = "tls"
    interval: Duration | None = None
    refresh_interval: Duration = 30.0

    @field_validator("interval", "refresh_interval")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        return _positive_duration(value)


class MetricsSettings(StrictModel):
    """Label cardinality switches for tls_cert_info."""

    cert_info_sans: bool = True
    cert_info_fingerprint: bool = True


class GlobalSettings(StrictModel):
    scrape_interval: Duration = 300.0  # how often each target is probed in the background
    concurrency: int = Field(default=256, ge=1, le=100_000)
    # Spread first probes and intervals by this fraction.
    jitter: float = Field(default=0.1, ge=0, le=1, allow_inf_nan=False)
    retry_backoff: Duration = 15.0  # first retry after a failed probe; doubles up to the interval
    timeout_offset: Duration = 0.5  # /probe: subtracted from X-Prometheus-Scrape-Timeout-Seconds

    @field_validator("scrape_interval", "retry_backoff")
    @classmethod
    def _positive(cls, value: float) -> float:
        # retry_backoff 0 would re-probe a failing target back to back.
        return _positive_duration(value) or value


class ProbeSettings(StrictModel):
    """What ``/probe`` may be asked (see exporter/access.py)."""

    # CIDRs and host globs; empty: any target. Configured targets are always allowed.
    allowed_targets: list[Annotated[str, AfterValidator(check_entry)]] = Field(default_factory=list)
    max_concurrent: int = Field(default=128, ge=1, le=100_000)  # /probe requests at once; more get 503


class WebSettings(StrictModel):
    """The HTTP endpoints: ``auth`` guards ``/probe`` and ``POST /-/reload`` (the other endpoints stay open)."""

    auth: FileAuth = FileAuth()


class Config(StrictModel):
    """The whole exporter config file."""

    global_: GlobalSettings = Field(default_factory=GlobalSettings, alias="global")
    modules: dict[str, Module] = Field(default_factory=dict)
    targets: list[Target] = Field(default_factory=list)
    target_files: list[TargetFile] = Field(default_factory=list)
    thresholds: Thresholds = Thresholds()
    threshold_groups: list[ThresholdGroup] = Field(default_factory=list)
    policies: Policies = Policies()
    metrics: MetricsSettings = MetricsSettings()
    probe: ProbeSettings = ProbeSettings()
    web: WebSettings = WebSettings()

    model_config = StrictModel.model_config | {"populate_by_name": True}

    @property
    def all_modules(self) -> dict[str, Module]:
        """Configured modules plus the built-in ``tls`` default (a configured one wins)."""
        return {**DEFAULT_MODULES, **self.modules}

    @model_validator(mode="after")
    def _references(self) -> Self:
        # Every problem is reported, each on its own line: not only the first of three bad targets.
        known = self.all_modules
        problems: list[tuple[str, str]] = []
        for i, tf in enumerate(self.target_files):
            if tf.module not in known:
                problems.append((f"target_files[{i}].module", f"unknown module {tf.module!r}"))
        seen: set[str] = set()
        for i, target in enumerate(self.targets):
            if target.module not in known:
                problems.append((f"targets[{i}].module", f"unknown module {target.module!r}"))
            # The ``target`` label identifies a target's series, so a name may appear once.
            if target.target in seen:
                problems.append((f"targets[{i}].target",
                                 f"duplicate target {target.target!r} (names must be unique)"))
            seen.add(target.target)
            module = known.get(target.module)
            if module is not None and module.kind != "file" and (problem := endpoint_problem(target.target)):
                problems.append((f"targets[{i}].target", problem))
            if target.address is not None and (problem := endpoint_problem(target.address)):
                problems.append((f"targets[{i}].address", problem))
        if problems:
            raise Problems(problems)
        return self

    def thresholds_for(self, labels: Mapping[str, str], override: ThresholdOverrides | None) -> dict[str, float]:
        """Defaults, then every matching label group in order, then the target's own override."""
        result = self.thresholds.as_dict()
        for group in self.threshold_groups:
            if all(labels.get(k) == v for k, v in group.match.items()):
                result = group.thresholds.apply(result)
        if override is not None:
            result = override.apply(result)
        return result


def endpoint_problem(target: str) -> str | None:
    """Why ``target`` is not ``host:port`` / ``[v6]:port`` (None when it is)."""
    if any(ch.isspace() or not ch.isprintable() for ch in target):
        # A CR/LF would end a proxy's CONNECT line early and start a request of the caller's choosing.
        return f"spaces and control characters are not allowed, got {target!r}"
    host, sep, port = target.rpartition(":")
    expected = f"expected host:port or [ipv6]:port, got {target!r}"
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        return expected
    if host.startswith("["):
        if not host.endswith("]"):
            return expected
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{host[1:-1]!r} is not an IPv6 address"
    elif ":" in host:
        return f"IPv6 addresses need brackets: [addr]:port, got {target!r}"
    return None


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    import re

    for name in labels:
        if not re.match(LABEL_NAME_RE, name) or name.startswith("__"):
            raise ValueError(f"label name {name!r} is not a valid Prometheus label name")
        if name in RESERVED_LABELS:
            raise ValueError(f"label name {name!r} is reserved for the exporter's own labels")
    return labels


def _protocol_name(value: str | None) -> str | None:
    # The name goes into SNI, EHLO or a stream header: CR/LF there would split the protocol's lines.
    if value is not None and (not value or any(c.isspace() or not c.isprintable() for c in value)):
        raise ValueError("expected a host name without spaces or control characters")
    return value


def _positive_duration(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise ValueError("expected a duration greater than 0")
    return value


def load(path: Path | str) -> Config:
    """Load and validate an exporter config file (raises certpager.errors.ConfigError)."""
    return load_config(Config, path, context=CHECK_FILES)
