"""The TLS probe (kinds ``tls`` and ``starttls``): resolve, connect, STARTTLS, handshake, read, verify.

Per address: connect (directly, or through the module's HTTP CONNECT proxy) -> for ``starttls`` the
protocol's negotiator -> TLS handshake with verification OFF, so the whole chain the peer sends is
always readable (expired, untrusted, self-signed, wrong name) -> read the chain from OpenSSL ->
verify trust and hostname separately in exporter/certs.py -> policies (exporter/policy.py).

Every phase is bounded by what is left of ``request.timeout``; every socket is closed on every path
(failure, timeout, cancellation). A failure of the probed thing is a ProbeResult with a bounded
Reason; an unexpected exception becomes Reason.INTERNAL with a logged traceback.
See docs/probing.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
# OpenSSL error reasons meaning "the peer's bytes are not TLS records".
_NOT_TLS = frozenset({
    "WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST",
    "PACKET_LENGTH_TOO_LONG", "RECORD_LENGTH_MISMATCH", "BAD_RECORD_TYPE", "UNEXPECTED_RECORD",
    "RECORD_LAYER_FAILURE", "SSLV3_ALERT_UNEXPECTED_MESSAGE_NOT_TLS",
})
_VERSION_NAMES = {"TLSv1": "TLS 1.0", "TLSv1.1": "TLS 1.1", "TLSv1.2": "TLS 1.2", "TLSv1.3": "TLS 1.3",
                  "SSLv3": "SSL 3.0"}


_SSL_VERSIONS = {"TLS1.0": ssl.TLSVersion.TLSv1, "TLS1.1": ssl.TLSVersion.TLSv1_1,
                 "TLS1.2": ssl.TLSVersion.TLSv1_2, "TLS1.3": ssl.TLSVersion.TLSv1_3}


def _mtime(path: Path | None) -> int | None:
    try:
        return None if path is None else path.stat().st_mtime_ns
    except OSError:
        return None


class ContextCache:
    """One client SSLContext per distinct TLS settings (+ ALPN), rebuilt when a client cert file changes."""

    def __init__(self, maxsize: int = 256) -> None:
        self._contexts: certs.LRU[tuple[object, ...], ssl.SSLContext] = certs.LRU(maxsize)

    def get(self, tls: TLSSettings, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
        """The cached context; raises PhaseFailure(CLIENT_CERT) when the client cert cannot be loaded."""
        files = (tls.cert_file, tls.key_file, tls.key_password_file)
        key = (tls.min_version, tls.max_version, *files, alpn, *(_mtime(f) for f in files))
        context = self._contexts.get(key)
        if context is None:
            context = build_context(tls, alpn)
            self._contexts.put(key, context)
        return context


def build_context(tls: TLSSettings, alpn: Sequence[str] = ()) -> ssl.SSLContext:
    """A client context that verifies nothing (the chain is verified separately) and accepts weak peers."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # An observer must complete handshakes with weak servers (1024-bit keys, SHA-1, TLS 1.0) so that
    # policies can report them; the verdicts, not the handshake, judge the peer.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ssl deprecates TLSv1 and TLSv1.1 constants
        context.minimum_version = _SSL_VERSIONS[tls.min_version or "TLS1.0"]
        if tls.max_version is not None:
            context.maximum_version = _SSL_VERSIONS[tls.max_version]
    if tls.cert_file is not None and tls.key_file is not None:
        _load_client_cert(context, tls)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def _load_client_cert(context: ssl.SSLContext, tls: TLSSettings) -> None:
    assert tls.cert_file is not None and tls.key_file is not None
    try:
        password = tls.key_password_file.read_text().strip() if tls.key_password_file else None
        context.load_cert_chain(tls.cert_file, tls.key_file, password)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise net.PhaseFailure(Reason.CLIENT_CERT, f"cannot load client certificate {tls.cert_file}: {exc}") from exc


@dataclass
class _Attempt:
    """Mutable state of one address's probe: what to close and what was measured."""

    durations: dict[Phase, float] = field(default_factory=dict)
    sock: socket.socket | None = None
    transport: asyncio.BaseTransport | None = None
    # Held until close(): a StreamWriter collected while its transport is open warns (ResourceWarning),
    # and the failure path drops the frames that reference it before the ``finally`` runs.
    writer: asyncio.StreamWriter | None = None
    phase: Phase | None = None  # the phase running now (a timeout is reported against it)
    _began: float = 0.0

    def enter(self, phase: Phase) -> None:
        """Start timing ``phase`` (ending the previous one)."""
        now = asyncio.get_running_loop().time()
        if self.phase is not None:
            self.durations[self.phase] = now - self._began
        self.phase, self._began = phase, now

    def finish(self) -> None:
        """Record the running phase's duration; no phase runs afterwards."""
        if self.phase is not None:
            self.durations[self.phase] = asyncio.get_running_loop().time() - self._began
            self.phase = None

    def close(self) -> None:
        self.finish()
        if isinstance(self.transport, asyncio.WriteTransport):
            self.transport.abort()
        if self.sock is not None:
            self.sock.close()  # idempotent; the transport may already own and have closed it


async def handshake_on_socket(sock: socket.socket, context: ssl.SSLContext, sni: str | None) -> ssl.SSLObject:
    """TLS client handshake over memory BIOs on a connected socket; the caller closes the socket.

    Cheaper than an asyncio SSL transport (about 10% of a probe's CPU, see docs/probing.md): the probe
    needs the handshake only, not a stream.
    """
    loop = asyncio.get_running_loop()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    ssl_object = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    while True:
        try:
            ssl_object.do_handshake()
            break
        except ssl.SSLWantReadError:
            if pending := outgoing.read():
                await loop.sock_sendall(sock, pending)
            data = await loop.sock_recv(sock, 65536)
            if not data:
                raise ConnectionResetError("peer closed the connection during the handshake") from None
            incoming.write(data)
    with contextlib.suppress(OSError):  # the client Finished: the server sees a complete handshake
        if pending := outgoing.read():
            await loop.sock_sendall(sock, pending)
    return ssl_object


def classify_handshake_error(exc: BaseException) -> tuple[Reason, str]:
    """Bounded reason for an exception raised by the TLS handshake."""
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return Reason.CONNECTION_CLOSED, f"peer closed the connection during the handshake ({exc})"
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None) or ""
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


def peer_chain_der(ssl_object: ssl.SSLObject) -> list[bytes]:
    """Every certificate the peer sent, in order, as DER (works with verification off)."""
    public = getattr(ssl_object, "get_unverified_chain", None)
    if public is not None:  # Python 3.13+
        return [bytes(c) for c in public() or []]
    chain = ssl_object._sslobj.get_unverified_chain()  # type: ignore[attr-defined]  # 3.11/3.12
    return [c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain or []]  # type: ignore[attr-defined]


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
        loop = asyncio.get_running_loop()
        begin = loop.time()
        try:
            async with asyncio.timeout_at(deadline):
                return await net.resolve(host, endpoint.port, request.module, self.resolver)
        except TimeoutError as exc:
            raise net.PhaseFailure(Reason.RESOLVE_TIMEOUT, "resolve timed out") from exc
        finally:
            durations[Phase.RESOLVE] = loop.time() - begin

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
                ssl_object = await self._handshake(request, endpoint, ip, deadline, attempt)
            attempt.finish()  # verification is not part of the handshake's time
            return self._read(request, endpoint, ip, ssl_object, durations, started)
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
        self, request: ProbeRequest, endpoint: net.Endpoint, ip: str | None, deadline: float, attempt: _Attempt
    ) -> ssl.SSLObject:
        module = request.module
        negotiator = self._starttls_negotiator(module)
        alpn = tuple(negotiator.alpn_protocols or ()) if negotiator is not None else ()
        context = self.contexts.get(module.tls, alpn)
        attempt.enter(Phase.CONNECT)
        attempt.sock = await self._connect(module, endpoint, ip, request.address)
        sni = _sni(module, endpoint)
        if negotiator is None:
            attempt.enter(Phase.HANDSHAKE)
            return await handshake_on_socket(attempt.sock, context, sni)
        return await self._starttls(request, endpoint, negotiator, context, sni, deadline, attempt)

    async def _starttls(
        self, request: ProbeRequest, endpoint: net.Endpoint, negotiator: Any, context: ssl.SSLContext,
        sni: str | None, deadline: float, attempt: _Attempt,
    ) -> ssl.SSLObject:
        assert request.module.starttls is not None and attempt.sock is not None
        reader, writer = await asyncio.open_connection(sock=attempt.sock)
        attempt.writer, attempt.transport = writer, writer.transport
        attempt.enter(Phase.STARTTLS)
        await negotiator.negotiate(reader, writer, request.module.starttls, endpoint.host)
        attempt.enter(Phase.HANDSHAKE)
        await writer.start_tls(context, server_hostname=sni, ssl_handshake_timeout=_remaining(deadline) + 5)
        attempt.transport = writer.transport
        return _ssl_object(writer.transport)

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
        self, request: ProbeRequest, endpoint: net.Endpoint, ip: str | None, ssl_object: ssl.SSLObject,
        durations: dict[Phase, float], started: float,
    ) -> ProbeResult:
        ders = peer_chain_der(ssl_object)
        if not ders:
            return self._failed(Reason.NO_CERTIFICATE, "the peer sent no certificate", ip, durations, started)
        try:
            chain = certs.chain_info(ders)
        except certs.CertificateParseError as exc:
            return self._failed(Reason.BAD_DER, f"the peer sent an unreadable certificate: {exc}", ip,
                                durations, started)
        version = tls_version_name(ssl_object.version())
        cipher = ssl_object.cipher()
        verified, verify_reason, hostname_ok, detail = None, None, None, ""
        tls = request.module.tls
        if not tls.insecure_skip_verify:
            verdict = self.verifier.verify(ders, tls.ca_file)
            verified, verify_reason, detail = verdict.verified, verdict.reason, verdict.detail
            hostname_ok = certs.match_hostname(certs.parse(ders[0]), tls.server_name or endpoint.host)
        return ProbeResult(
            success=True, detail=detail, ip=ip, durations=durations, tls_version=version,
            cipher=cipher[0] if cipher else None, chain=chain, chain_verified=verified,
            verify_reason=verify_reason, hostname_verified=hostname_ok,
            policy_violations=policy.evaluate(request.policies, chain, version, request.labels),
            started_at=started, duration=max(0.0, self.clock() - started),
        )


def _endpoint(target: str) -> net.Endpoint:
    try:
        return net.parse_endpoint(target)
    except ValueError as exc:
        raise net.PhaseFailure(Reason.DNS, f"bad target: {exc}") from exc


def _remaining(deadline: float) -> float:
    return deadline - asyncio.get_running_loop().time()


def _sni(module: Module, endpoint: net.Endpoint) -> str | None:
    # Never SNI for an IP literal (RFC 6066 section 3 forbids it).
    name = module.tls.server_name or endpoint.host
    return None if net.ip_family(name) is not None else name


def _ssl_object(transport: asyncio.BaseTransport) -> ssl.SSLObject:
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject):
        raise RuntimeError("TLS transport has no SSLObject")
    return ssl_object


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


_default: TLSProber | None = None


def default_prober() -> TLSProber:
    """The process-wide prober (shared caches)."""
    global _default
    if _default is None:
        _default = TLSProber()
    return _default


async def probe(request: ProbeRequest) -> list[ProbeResult]:
    """The ``tls``/``starttls`` ProbeFn: probe with the process-wide prober."""
    return await default_prober().probe(request)
