"""The TLS probe (kinds ``tls`` and ``starttls``): resolve, connect, STARTTLS, handshake, read, verify.

Per address: connect (directly, or through the module's HTTP CONNECT proxy) -> for ``starttls`` the
protocol's negotiator -> TLS handshake with verification OFF, so the whole chain the peer sends is
always readable (expired, untrusted, self-signed, wrong name) -> read the chain from OpenSSL ->
verify trust and hostname separately in exporter/certs.py -> policies (exporter/policy.py).

The handshake is pyOpenSSL's, over the OpenSSL that the ``cryptography`` wheel bundles, run by one
loop on the connected socket for both the direct and the STARTTLS path: OpenSSL reads and writes
the non-blocking socket itself, and the loop waits for readiness on the event loop. That OpenSSL
(3.x and later) costs about 30% less CPU per client handshake than the distribution's OpenSSL 3.0
behind ``ssl``, and pyOpenSSL reads the unverified peer chain through a public API.

Every phase is bounded by what is left of ``request.timeout``; every socket is closed on every path
(failure, timeout, cancellation). A failure of the probed thing is a ProbeResult with a bounded
Reason; an unexpected exception becomes Reason.INTERNAL with a logged traceback.
See docs/probing.md.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from OpenSSL import SSL, crypto

from exporter import certs, policy
from exporter.config import Module, TLSSettings
from exporter.probes import net
from exporter.probes.base import Phase, ProbeRequest, ProbeResult, Reason

log = logging.getLogger(__name__)

_TIMEOUT_REASON = {
    Phase.RESOLVE: Reason.RESOLVE_TIMEOUT,
    Phase.CONNECT: Reason.CONNECT_TIMEOUT,
    Phase.STARTTLS: Reason.STARTTLS_TIMEOUT,
    Phase.HANDSHAKE: Reason.HANDSHAKE_TIMEOUT,
}
# OpenSSL error reasons meaning "the peer hung up" (OpenSSL 3 reports an EOF in the handshake as an error).
_CLOSED = frozenset({"UNEXPECTED_EOF_WHILE_READING"})
# OpenSSL error reasons meaning "the peer's bytes are not TLS records" (OpenSSL's reason string,
# "wrong version number", upper-cased with underscores, as in its SSL_R_* names).
_NOT_TLS = frozenset({
    "WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST",
    "PACKET_LENGTH_TOO_LONG", "RECORD_LENGTH_MISMATCH", "BAD_RECORD_TYPE", "UNEXPECTED_RECORD",
    "RECORD_LAYER_FAILURE", "SSLV3_ALERT_UNEXPECTED_MESSAGE_NOT_TLS",
})
_VERSION_NAMES = {"TLSv1": "TLS 1.0", "TLSv1.1": "TLS 1.1", "TLSv1.2": "TLS 1.2", "TLSv1.3": "TLS 1.3",
                  "SSLv3": "SSL 3.0"}
_PROTOCOL_VERSIONS = {"TLS1.0": SSL.TLS1_VERSION, "TLS1.1": SSL.TLS1_1_VERSION,
                      "TLS1.2": SSL.TLS1_2_VERSION, "TLS1.3": SSL.TLS1_3_VERSION}

_CLIENT_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
                     ed448.Ed448PrivateKey, dsa.DSAPrivateKey)

# Phase durations use their own clock: uvloop's loop.time() advances in whole milliseconds, which
# would report a 0.4 ms loopback handshake as 0 or 0.001 s. Deadlines stay on the loop's clock.
_phase_clock = time.perf_counter


def _mtime(path: Path | None) -> int | None:
    try:
        return None if path is None else path.stat().st_mtime_ns
    except OSError:
        return None


class ContextCache:
    """One client SSL.Context per distinct TLS settings (+ ALPN), rebuilt when a client cert file changes."""

    def __init__(self, maxsize: int = 256) -> None:
        self._contexts: certs.LRU[tuple[object, ...], SSL.Context] = certs.LRU(maxsize)

    def get(self, tls: TLSSettings, alpn: tuple[str, ...] = ()) -> SSL.Context:
        """The cached context; raises PhaseFailure(CLIENT_CERT) when the client cert cannot be loaded."""
        files = (tls.cert_file, tls.key_file, tls.key_password_file)
        key = (tls.min_version, tls.max_version, *files, alpn, *(_mtime(f) for f in files))
        context = self._contexts.get(key)
        if context is None:
            context = build_context(tls, alpn)
            self._contexts.put(key, context)
        return context


def build_context(tls: TLSSettings, alpn: Sequence[str] = ()) -> SSL.Context:
    """A client context that verifies nothing (the chain is verified separately) and accepts weak peers."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_verify(SSL.VERIFY_NONE)
    # An observer must complete handshakes with weak servers (1024-bit keys, SHA-1, TLS 1.0) so that
    # policies can report them; the verdicts, not the handshake, judge the peer.
    context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    context.set_tls13_ciphersuites(TLS13_CIPHERSUITES)
    context.set_min_proto_version(_PROTOCOL_VERSIONS[tls.min_version or "TLS1.0"])
    if tls.max_version is not None:
        context.set_max_proto_version(_PROTOCOL_VERSIONS[tls.max_version])
    # No session is ever resumed: a ticket would only cost the server work and the client memory.
    context.set_options(SSL.OP_NO_TICKET)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    # Free a connection's record buffers while it waits for the peer: 256 probes in flight held
    # about 9 MiB more without it (3,000 probes against nginx, VmHWM).
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    offer_classical_groups(context)
    if tls.cert_file is not None and tls.key_file is not None:
        _load_client_cert(context, tls)
    if alpn:
        context.set_alpn_protos([p.encode("ascii") for p in alpn])
    return context


# OpenSSL's three default TLS 1.3 suites, AES-128-GCM first instead of AES-256-GCM-SHA384: the order Go's
# crypto/tls (blackbox_exporter) offers on AES-capable CPUs. A server that follows the client's order
# then runs its key schedule on SHA-256, which CPUs with SHA extensions compute several times faster
# than SHA-384: about 4% of a probe's CPU (interleaved A/B, 3,000 endpoints, docs/performance.md).
TLS13_CIPHERSUITES = b"TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"

# OpenSSL's default groups minus the post-quantum hybrids (X25519MLKEM768 and kin), X25519 first.
CLASSICAL_GROUPS = b"X25519:secp256r1:X448:secp384r1:secp521r1:ffdhe2048:ffdhe3072"


def offer_classical_groups(context: SSL.Context, lib: object | None = None) -> bool:
    """Offer only classical key-exchange groups, so the ClientHello carries one X25519 key share.

    OpenSSL 3.5 and later also send an X25519MLKEM768 share by default: 120-190 µs of key
    generation per probe (about 10% of its CPU), wasted on every server without ML-KEM, and a probe
    exchanges no secret worth protecting from a future quantum computer. ML-KEM is left out of the
    list, not just moved down, because a server that prefers it would otherwise answer with a
    HelloRetryRequest, a round trip more. Every server that speaks TLS 1.3 accepts X25519 or
    secp256r1 (RFC 8446 section 9.1); anything else is reached through a HelloRetryRequest.

    pyOpenSSL has no setter for the groups list, so this calls SSL_CTX_set1_curves_list (the older
    name of SSL_CTX_set1_groups_list) through cryptography's documented hazmat binding. If a
    release drops that function, or this OpenSSL rejects the list, OpenSSL's defaults stay: the probe
    costs more, and works the same. Returns whether the list was applied.
    """
    if lib is None:
        from cryptography.hazmat.bindings.openssl.binding import Binding

        lib = Binding.lib
    set_list = getattr(lib, "SSL_CTX_set1_curves_list", None)
    handle = getattr(context, "_context", None)
    if set_list is None or handle is None:
        return False
    return bool(set_list(handle, CLASSICAL_GROUPS) == 1)


def _load_client_cert(context: SSL.Context, tls: TLSSettings) -> None:
    assert tls.cert_file is not None and tls.key_file is not None
    try:
        password = tls.key_password_file.read_text().strip().encode() if tls.key_password_file else None
        data = tls.key_file.read_bytes()
        load = serialization.load_pem_private_key if b"-----BEGIN" in data else serialization.load_der_private_key
        key = load(data, password)
        if not isinstance(key, _CLIENT_KEY_TYPES):
            raise ValueError(f"unsupported key type {type(key).__name__}")
        context.use_certificate_chain_file(str(tls.cert_file))
        context.use_privatekey(key)
        context.check_privatekey()
    except (OSError, SSL.Error, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # TypeError: an encrypted key without key_password_file, or a password for a plain key.
        raise net.PhaseFailure(Reason.CLIENT_CERT, f"cannot load client certificate {tls.cert_file}: "
                               f"{_error_text(exc)}") from exc


@dataclass
class _Attempt:
    """Mutable state of one address's probe: what to close and what was measured."""

    durations: dict[Phase, float] = field(default_factory=dict)
    sock: socket.socket | None = None
    phase: Phase | None = None  # the phase running now (a timeout is reported against it)
    _began: float = 0.0

    def enter(self, phase: Phase) -> None:
        """Start timing ``phase`` (ending the previous one)."""
        now = _phase_clock()
        if self.phase is not None:
            self.durations[self.phase] = now - self._began
        self.phase, self._began = phase, now

    def finish(self) -> None:
        """Record the running phase's duration; no phase runs afterwards."""
        if self.phase is not None:
            self.durations[self.phase] = _phase_clock() - self._began
            self.phase = None

    def close(self) -> None:
        self.finish()
        if self.sock is not None:
            self.sock.close()


def new_connection(context: SSL.Context, sni: str | None, sock: socket.socket | None = None) -> SSL.Connection:
    """A client connection on ``sock`` (over memory BIOs when None), with SNI when ``sni`` is set."""
    connection = SSL.Connection(context, sock)
    connection.set_connect_state()
    if sni is not None:
        connection.set_tlsext_host_name(sni.encode("ascii") if sni.isascii() else sni.encode("idna"))
    return connection


async def handshake(sock: socket.socket, context: SSL.Context, sni: str | None) -> SSL.Connection:
    """TLS client handshake on a connected non-blocking socket (the caller closes the socket).

    OpenSSL reads and writes the socket itself; this loop only waits until the socket is ready for
    what OpenSSL asked for. No bytes pass through Python: about 75 µs less per probe than moving
    them between memory BIOs and the event loop's socket calls (docs/performance.md).
    """
    connection = new_connection(context, sni, sock)
    while True:
        try:
            connection.do_handshake()
            return connection
        except SSL.WantReadError:
            await net.wait_ready(sock, write=False)
        except SSL.WantWriteError:
            await net.wait_ready(sock, write=True)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        reasons = [str(entry[2]) for entry in exc.args[0] if isinstance(entry, tuple) and len(entry) == 3]
        if reasons:
            return "; ".join(reasons)
    return str(exc)


def _ssl_reason(exc: SSL.Error) -> str:
    """OpenSSL's first reason ("wrong version number") as its SSL_R_ name ("WRONG_VERSION_NUMBER")."""
    text = _error_text(exc).split(";", 1)[0]
    return text.strip().upper().replace(" ", "_").replace("-", "_")


def classify_handshake_error(exc: BaseException) -> tuple[Reason, str]:
    """Bounded reason for an exception raised by the TLS handshake."""
    if isinstance(exc, SSL.ZeroReturnError | SSL.SysCallError):
        return Reason.CONNECTION_CLOSED, f"peer closed the connection during the handshake ({_error_text(exc)})"
    if isinstance(exc, SSL.Error):
        reason = _ssl_reason(exc)
        if reason in _CLOSED:
            return Reason.CONNECTION_CLOSED, "peer closed the connection during the handshake"
        if reason in _NOT_TLS:
            return Reason.NOT_TLS, f"peer did not answer with TLS ({reason})"
        return Reason.TLS_ALERT, f"handshake failed: {reason or exc}"
    if isinstance(exc, ConnectionError | asyncio.IncompleteReadError | EOFError):
        return Reason.CONNECTION_CLOSED, f"peer closed the connection during the handshake ({exc!r})"
    if isinstance(exc, OSError):
        return Reason.CONNECTION_CLOSED, f"connection failed during the handshake: {exc}"
    raise exc


def tls_version_name(version: str | None) -> str | None:
    """OpenSSL's "TLSv1.3" in blackbox's spelling "TLS 1.3"."""
    return None if version is None else _VERSION_NAMES.get(version, version)


def peer_chain_der(connection: SSL.Connection) -> list[bytes]:
    """Every certificate the peer sent, in order, as DER (works with verification off)."""
    return peer_chain(connection)[0]


def peer_chain(connection: SSL.Connection) -> tuple[list[bytes], list[crypto.X509]]:
    """The peer's certificates as DER, and as the X509 objects OpenSSL already decoded (for its verifier)."""
    chain = connection.get_peer_cert_chain() or []
    return [crypto.dump_certificate(crypto.FILETYPE_ASN1, cert) for cert in chain], chain


def _negotiator(protocol: str) -> Any:
    # Imported lazily: the STARTTLS package is written separately and may not define a protocol yet.
    try:
        from exporter.probes import starttls
    except ImportError:
        return None
    return getattr(starttls, "NEGOTIATORS", {}).get(protocol)


class TLSProber:
    """Probes TLS endpoints; holds the caches (SSL contexts, trust verdicts) shared by all probes."""

    def __init__(
        self,
        *,
        resolver: net.Resolver = net.system_resolver,
        verifier: certs.ChainVerifier | None = None,
        contexts: ContextCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.resolver = resolver
        self.verifier = verifier or certs.ChainVerifier(clock=clock)
        self.contexts = contexts or ContextCache()
        self.clock = clock

    async def probe(self, request: ProbeRequest) -> list[ProbeResult]:
        """Probe the target; one result per address probed (never raises for the target's failure)."""
        started, loop = self.clock(), asyncio.get_running_loop()
        deadline = loop.time() + request.timeout
        durations: dict[Phase, float] = {}
        try:
            endpoint = _endpoint(request.target)
            addresses = await self._addresses(request, endpoint, deadline, durations)
        except net.PhaseFailure as exc:
            return [self._failed(exc.reason, exc.detail, None, durations, started)]
        except Exception as exc:
            log.exception("probe failed unexpectedly", extra={"kv": {"target": request.target}})
            return [self._failed(Reason.INTERNAL, f"internal error: {exc!r}", None, durations, started)]
        attempts = [self._probe_address(request, endpoint, ip, deadline, dict(durations), started)
                    for ip in addresses]
        if len(attempts) == 1:
            return [await attempts[0]]  # the common case: no task per probe
        return list(await asyncio.gather(*attempts))

    async def _addresses(
        self, request: ProbeRequest, endpoint: net.Endpoint, deadline: float, durations: dict[Phase, float]
    ) -> Sequence[str | None]:
        if request.module.proxy is not None:
            return [None]  # the proxy resolves the name
        host = request.address or endpoint.host
        if request.address is not None and request.address.startswith("[") and request.address.endswith("]"):
            host = request.address[1:-1]
        if net.ip_family(host) is not None:
            durations[Phase.RESOLVE] = 0.0
            return [host]  # nothing to resolve, nothing to time out
        begin = _phase_clock()
        try:
            async with asyncio.timeout_at(deadline):
                return await net.resolve(host, endpoint.port, request.module, self.resolver)
        except TimeoutError as exc:
            raise net.PhaseFailure(Reason.RESOLVE_TIMEOUT, "resolve timed out") from exc
        finally:
            durations[Phase.RESOLVE] = _phase_clock() - begin

    def _failed(
        self, reason: Reason, detail: str, ip: str | None, durations: dict[Phase, float], started: float
    ) -> ProbeResult:
        return ProbeResult(success=False, reason=reason, detail=detail, ip=ip, durations=durations,
                           started_at=started, duration=max(0.0, self.clock() - started))

    async def _probe_address(
        self, request: ProbeRequest, endpoint: net.Endpoint, ip: str | None, deadline: float,
        durations: dict[Phase, float], started: float,
    ) -> ProbeResult:
        attempt = _Attempt(durations)
        try:
            # One timeout for the whole attempt (cheaper than one per phase); the phase running when it
            # fires names the reason.
            async with asyncio.timeout_at(deadline):
                connection = await self._handshake(request, endpoint, ip, attempt)
            attempt.finish()  # verification is not part of the handshake's time
            return self._read(request, endpoint, ip, connection, durations, started)
        except TimeoutError:
            phase = attempt.phase or Phase.HANDSHAKE
            attempt.finish()  # durations are complete before the (immutable) result is built
            return self._failed(_TIMEOUT_REASON[phase], f"{phase} timed out", ip, durations, started)
        except Exception as exc:
            failure = _phase_failure(attempt.phase, exc)
            attempt.finish()
            if isinstance(failure, net.PhaseFailure):
                return self._failed(failure.reason, failure.detail, ip, durations, started)
            log.exception("probe failed unexpectedly", extra={"kv": {"target": request.target, "ip": ip}})
            return self._failed(Reason.INTERNAL, f"internal error: {exc!r}", ip, durations, started)
        finally:
            attempt.close()

    async def _handshake(
        self, request: ProbeRequest, endpoint: net.Endpoint, ip: str | None, attempt: _Attempt
    ) -> SSL.Connection:
        module = request.module
        negotiator = self._starttls_negotiator(module)
        alpn = tuple(negotiator.alpn_protocols or ()) if negotiator is not None else ()
        context = self.contexts.get(module.tls, alpn)
        attempt.enter(Phase.CONNECT)
        attempt.sock = await self._connect(module, endpoint, ip, request.address)
        if negotiator is not None:
            assert module.starttls is not None
            attempt.enter(Phase.STARTTLS)
            # The negotiators read exactly up to the upgrade: the server's TLS bytes are still in the socket.
            await negotiator.negotiate(attempt.sock, module.starttls, endpoint.host)
        attempt.enter(Phase.HANDSHAKE)
        return await handshake(attempt.sock, context, _sni(module, endpoint))

    @staticmethod
    def _starttls_negotiator(module: Module) -> Any:
        if module.kind != "starttls" or module.starttls is None:
            return None
        negotiator = _negotiator(module.starttls.protocol)
        if negotiator is None:
            raise net.PhaseFailure(Reason.STARTTLS_UNSUPPORTED,
                                   f"STARTTLS protocol {module.starttls.protocol!r} is not implemented")
        return negotiator

    async def _connect(
        self, module: Module, endpoint: net.Endpoint, ip: str | None, address: str | None
    ) -> socket.socket:
        if module.proxy is None:
            assert ip is not None
            return await net.connect(ip, endpoint.port, module.source_ip_address)
        proxy = net.proxy_endpoint(module.proxy)
        proxy_ips = await net.resolve(proxy.host, proxy.port, module, self.resolver)
        sock = await net.connect(proxy_ips[0], proxy.port, module.source_ip_address)
        try:
            # The proxy connects to the address override when there is one (SNI stays the target's name).
            tunnel_to = net.Endpoint(address.strip("[]"), endpoint.port) if address else endpoint
            await net.proxy_tunnel(sock, module.proxy, tunnel_to)
        except BaseException:
            sock.close()
            raise
        return sock

    def _read(
        self, request: ProbeRequest, endpoint: net.Endpoint, ip: str | None, connection: SSL.Connection,
        durations: dict[Phase, float], started: float,
    ) -> ProbeResult:
        ders, decoded = peer_chain(connection)
        if not ders:
            return self._failed(Reason.NO_CERTIFICATE, "the peer sent no certificate", ip, durations, started)
        chain = certs.read_chain(ders, decoded)
        if not chain.infos:
            return self._failed(Reason.BAD_DER, f"the peer sent no readable certificate: {chain.errors[0]}", ip,
                                durations, started)
        version = tls_version_name(connection.get_protocol_version_name())
        cipher = connection.get_cipher_name()
        verified, verify_reason, hostname_ok = None, None, None
        details = list(chain.errors)  # an unreadable certificate loses its own series only
        tls = request.module.tls
        if not tls.insecure_skip_verify:
            verdict = self.verifier.verify(chain, tls.ca_file, profile=tls.verify_profile,
                                           security_level=tls.security_level)
            verified, verify_reason = verdict.verified, verdict.reason
            details.append(verdict.detail)
            if chain.leaf is not None:
                hostname_ok = certs.match_hostname(chain.leaf, tls.server_name or endpoint.host,
                                                   cn_fallback=tls.verify_profile == "openssl")
        detail = "; ".join(d for d in details if d)
        return ProbeResult(
            success=True, detail=detail, ip=ip, durations=durations, tls_version=version,
            cipher=cipher, chain=chain.infos, chain_verified=verified,
            verify_reason=verify_reason, hostname_verified=hostname_ok,
            policy_violations=policy.evaluate(request.policies, chain.infos, version, request.labels),
            started_at=started, duration=max(0.0, self.clock() - started),
        )


def _endpoint(target: str) -> net.Endpoint:
    try:
        return net.parse_endpoint(target)
    except ValueError as exc:
        raise net.PhaseFailure(Reason.DNS, f"bad target: {exc}") from exc


def _sni(module: Module, endpoint: net.Endpoint) -> str | None:
    # Never SNI for an IP literal (RFC 6066 section 3 forbids it).
    name = module.tls.server_name or endpoint.host
    return None if net.ip_family(name) is not None else name


def _phase_failure(phase: Phase | None, exc: Exception) -> Exception:
    """Map an exception raised in ``phase`` to a PhaseFailure, or return it unchanged (a bug)."""
    from exporter.probes.starttls.base import StartTLSError

    if isinstance(exc, net.PhaseFailure):
        return exc
    if isinstance(exc, StartTLSError):
        return net.PhaseFailure(exc.reason, exc.detail)
    if phase is Phase.HANDSHAKE:
        try:
            reason, detail = classify_handshake_error(exc)
        except Exception as other:
            return other
        return net.PhaseFailure(reason, detail)
    if phase is Phase.STARTTLS and isinstance(exc, ConnectionError | asyncio.IncompleteReadError | EOFError):
        return net.PhaseFailure(Reason.CONNECTION_CLOSED, f"peer closed the connection during STARTTLS ({exc!r})")
    return exc


@functools.cache
def default_prober() -> TLSProber:
    """The process-wide prober (shared caches)."""
    return TLSProber()


async def probe(request: ProbeRequest) -> list[ProbeResult]:
    """The ``tls``/``starttls`` ProbeFn: probe with the process-wide prober."""
    return await default_prober().probe(request)
