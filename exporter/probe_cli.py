"""``certpager probe HOST:PORT``: probe one endpoint and print its chain, trust and policy verdicts.

Exit codes (the worst over all addresses probed):
    0  the chain was read, is trusted, and covers the name (and no configured policy is violated)
    1  the probe failed: no chain was read (dns, refused, timeout, not_tls, tls_alert, ...)
    2  usage or config error (argparse's convention)
    3  a chain was read but is not trusted, or does not cover the name
    4  trusted and the name matches, but a policy is violated: from --config, or without one the
       defaults of OpenSSL's security level 2 (RSA keys of 2048 bits or more, EC keys of 224 bits or
       more, no SHA-1 or MD5 signature below the root)
With --insecure the trust and name checks are skipped and count as fine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, TextIO, get_args

from pydantic import ValidationError

from certpager.cli import plural
from certpager.config import CHECK_FILES, parse_duration, validation_problems
from certpager.errors import ConfigError
from exporter import config as exporter_config
from exporter import trust
from exporter.config import Module, Policies, StartTLSProtocol, StartTLSSettings, TLSSettings, endpoint_problem
from exporter.probes.base import CertificateInfo, ProbeRequest, ProbeResult
from exporter.probes.tls import TLSProber

EXIT_OK, EXIT_PROBE_FAILED, EXIT_USAGE, EXIT_UNTRUSTED, EXIT_POLICY = 0, 1, 2, 3, 4
# Without --config: what an OpenSSL 3 client at security level 2 refuses, as policies (they also
# cover what the trust verdict does not look at: with --insecure, or profile webpki).
LEVEL_2_POLICIES = Policies(min_rsa_bits=2048, min_ec_bits=224, forbidden_signature_algorithms=["sha1", "md5"])
_FLAGS = {"ca_file": "--cafile", "server_name": "--servername", "verify_profile": "--verify-profile",
          "security_level": "--security-level"}  # TLSSettings key -> the flag setting it


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the probe subcommand's arguments."""
    parser.add_argument("target", metavar="HOST:PORT", help="endpoint to probe ([v6]:port for IPv6)")
    parser.add_argument("--servername", help="SNI and the name verified (default: HOST)")
    parser.add_argument("--cafile", help="trust these CA certificates instead of the system store")
    parser.add_argument("--starttls", choices=get_args(StartTLSProtocol), help="speak this protocol first")
    parser.add_argument("--timeout", default="10s",
                        help="whole-probe timeout: seconds or a duration like 1500ms, 5s (default 10s)")
    parser.add_argument("--all-ips", action="store_true", help="probe every resolved address")
    parser.add_argument("--insecure", action="store_true", help="skip the trust and name verdicts")
    parser.add_argument("--verify-profile", choices=["openssl", "webpki"],
                        help="whose trust verdict: an OpenSSL 3 client (default) or the Web PKI profile")
    parser.add_argument("--security-level", type=int, choices=range(6), metavar="0-5",
                        help="OpenSSL security level for profile openssl (default 2)")
    parser.add_argument("--config", help="exporter config: its policies are checked, --module is taken from it")
    parser.add_argument("--module", default="tls", help="module of --config to start from (default tls)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def build_request(args: argparse.Namespace) -> ProbeRequest:
    """The ProbeRequest the arguments describe; raises ValueError / ConfigError."""
    module, policies = Module(), LEVEL_2_POLICIES
    if args.config:
        cfg = exporter_config.load(args.config)
        modules = cfg.all_modules
        if args.module not in modules:
            raise ValueError(f"--module {args.module!r} is not in {args.config} (have: {', '.join(modules)})")
        module, policies = modules[args.module], cfg.policies
    tls_update: dict[str, Any] = {}
    if args.servername:
        tls_update["server_name"] = args.servername
    if args.cafile:
        tls_update["ca_file"] = args.cafile
    if args.insecure:
        tls_update["insecure_skip_verify"] = True
    if getattr(args, "verify_profile", None):
        tls_update["verify_profile"] = args.verify_profile
    if getattr(args, "security_level", None) is not None:
        tls_update["security_level"] = args.security_level
    if problem := endpoint_problem(args.target):
        raise ValueError(problem)
    try:
        tls = TLSSettings.model_validate({**module.tls.model_dump(), **tls_update}, context=CHECK_FILES)
    except ValidationError as exc:
        raise ValueError("; ".join(f"{_FLAGS.get(key, key)}: {msg}" for key, msg in validation_problems(exc))) from None
    update: dict[str, Any] = {"tls": tls}
    if args.starttls:
        update.update(kind="starttls", starttls=StartTLSSettings(protocol=args.starttls))
    if args.all_ips:
        update["probe_all_ips"] = True
    module = Module.model_validate({**module.model_dump(), **update})
    try:
        timeout = parse_duration(args.timeout)  # the config's syntax: 5, 5s, 1500ms
    except ValueError as exc:
        raise ValueError(f"--timeout: {exc}") from None
    if timeout <= 0:
        raise ValueError("--timeout must be greater than 0")
    return ProbeRequest(target=args.target, module=module, timeout=timeout, policies=policies)


def exit_code(results: Sequence[ProbeResult]) -> int:
    """The worst outcome over all results (see the module docstring)."""
    if any(not r.success for r in results):
        return EXIT_PROBE_FAILED
    if any(r.chain_verified is False or r.hostname_verified is False for r in results):
        return EXIT_UNTRUSTED
    if any(any(r.policy_violations.values()) for r in results):
        return EXIT_POLICY
    return EXIT_OK


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _days_left(not_after: float, now: float) -> str:
    if not_after >= now:
        days = math.floor((not_after - now) / 86400)
        return "less than a day left" if days == 0 else f"{plural(days, 'day')} left"
    days = math.floor((now - not_after) / 86400)
    return "EXPIRED less than a day ago" if days == 0 else f"EXPIRED {plural(days, 'day')} ago"


def _weakness(cert: CertificateInfo, level: int) -> str:
    """What an OpenSSL client at ``level`` refuses in this certificate's key or signature, in words."""
    if level <= 0:
        return ""
    minimum = trust.MIN_BITS[level]
    found = []
    bits = trust.key_security_bits(cert.key_type, cert.key_bits)
    if bits < minimum:
        found.append(f"WEAK KEY: about {bits} bits, security level {level} needs {minimum}")
    name = cert.signature_algorithm.lower()
    if cert.position != "root" and ("sha1" in name or "md5" in name):
        found.append(f"WEAK SIGNATURE: {cert.signature_algorithm} is below security level {level}")
    return "   ".join(found)


def _cert_lines(cert: CertificateInfo, now: float, level: int = trust.DEFAULT_SECURITY_LEVEL) -> list[str]:
    weak = _weakness(cert, level)
    return [
        f"  #{cert.index} {cert.position:<12} {cert.subject_cn or '(no CN)'}",
        f"       issuer      {cert.issuer_cn or '(no CN)'}",
        f"       not before  {_when(cert.not_before)}",
        f"       not after   {_when(cert.not_after)}  ({_days_left(cert.not_after, now)})",
        f"       key         {cert.key_type} {cert.key_bits}   signature {cert.signature_algorithm}",
        *([f"       !           {weak}"] if weak else []),
        *([f"       sans        {', '.join(cert.sans)}"] if cert.sans else []),
        f"       serial      {cert.serial}",
        f"       sha256      {cert.fingerprint_sha256}",
    ]


def _verdict(ok: bool | None, reason: object, detail: str) -> str:
    if ok is None:
        return "not checked"
    return "OK" if ok else f"FAILED: {reason}" + (f" ({detail})" if detail else "")


def _result_lines(request: ProbeRequest, result: ProbeResult, now: float) -> list[str]:
    timings = ", ".join(f"{phase} {seconds * 1000:.1f} ms" for phase, seconds in result.durations.items())
    address = result.ip or ("(via proxy)" if request.module.proxy is not None else "-")
    lines = [f"address   {address}   {timings}"]
    if not result.success:
        return [*lines, f"FAILED    {result.reason}: {result.detail}"]
    lines += [f"tls       {result.tls_version}   {result.cipher}",
              f"chain     {plural(len(result.chain), 'certificate')} as sent by the peer:"]
    tls = request.module.tls
    for cert in result.chain:
        lines += _cert_lines(cert, now, tls.security_level)
    # A certificate that cannot be read has no line of its own above: say which and why.
    lines += [f"  {part}" for part in result.detail.split("; ") if " cannot be read: " in part]
    name = tls.server_name or request.target.rsplit(":", 1)[0].strip("[]")
    anchors = tls.ca_file or "system store"
    profile = f"{tls.verify_profile}" + (f", security level {tls.security_level}" if tls.verify_profile == "openssl"
                                         else "")
    lines.append(f"trust     {_verdict(result.chain_verified, result.verify_reason, result.detail)}  "
                 f"[{anchors}; {profile}]")
    lines.append(f"hostname  {_verdict(result.hostname_verified, 'name not in the leaf SANs', '')}  [{name}]")
    if result.policy_violations:
        verdicts = ", ".join(f"{p} {'VIOLATED' if v else 'ok'}" for p, v in result.policy_violations.items())
        lines.append(f"policies  {verdicts}")
    return lines


def render_text(request: ProbeRequest, results: Sequence[ProbeResult], now: float) -> str:
    """The report for a person at a terminal."""
    lines = [f"certpager probe {request.target} (kind {request.module.kind})"]
    for result in results:
        lines += ["", *_result_lines(request, result, now)]
    code = exit_code(results)
    lines += ["", f"result    {'OK' if code == EXIT_OK else 'NOT OK'} (exit {code})"]
    return "\n".join(lines) + "\n"


def render_json(request: ProbeRequest, results: Sequence[ProbeResult]) -> str:
    """Machine output: every ProbeResult field, durations keyed by phase name."""
    out = []
    for result in results:
        item = asdict(result)
        item["durations"] = {str(k): v for k, v in result.durations.items()}
        item["policy_violations"] = dict(result.policy_violations)
        item["earliest_expiry"] = result.earliest_expiry
        for cert_item, cert in zip(item["chain"], result.chain, strict=True):
            del cert_item["sha256"]
            cert_item["fingerprint_sha256"] = cert.fingerprint_sha256
        out.append(item)
    doc = {"target": request.target, "kind": request.module.kind, "exit_code": exit_code(results), "results": out}
    return json.dumps(doc, indent=2, default=str) + "\n"


def run(args: argparse.Namespace, *, prober: TLSProber | None = None, out: TextIO | None = None) -> int:
    """Probe, print, and return the exit code."""
    out = out or sys.stdout
    try:
        request = build_request(args)
    except (ValueError, ConfigError) as exc:
        print(f"certpager probe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    results = asyncio.run((prober or TLSProber()).probe(request))
    out.write(render_json(request, results) if args.json else render_text(request, results, time.time()))
    return exit_code(results)
