"""Network plumbing for probes: parse targets, resolve, pick addresses, connect (directly or via a proxy).

Failures are raised as :class:`PhaseFailure` (reason + detail) and turned into a ``ProbeResult`` by
the caller; timeouts are the caller's business (it wraps each phase in ``asyncio.timeout``).

Address selection (``module.ip_protocol``, ``ip_protocol_fallback``, ``probe_all_ips``), like
blackbox's preferred_ip_protocol / ip_protocol_fallback:
- one address per probe by default: the first of the preferred family, else (with fallback) the first
  of the other family, else Reason.DNS;
- ``probe_all_ips``: every resolved address, preferred family first; the other family only with
  fallback on.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from exporter.config import Module, ProxySettings
from exporter.probes.base import Reason

Resolver = Callable[[str, int], Awaitable[list[tuple[int, str]]]]
"""host, port -> [(socket family, IP literal)], in resolver order; raises socket.gaierror / OSError."""

MAX_PROXY_RESPONSE = 16 * 1024  # bytes of CONNECT response headers we are willing to read


class PhaseFailure(Exception):
    """A probe phase failed for a reason of the probed thing (not a certpager bug)."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed ``host:port`` target."""

    host: str  # name or IP literal, without IPv6 brackets
    port: int

    @property
    def is_ip(self) -> bool:
        return ip_family(self.host) is not None

    @property
    def authority(self) -> str:
        """host:port as written in an HTTP CONNECT request ([v6]:port)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def ip_family(host: str) -> int | None:
    """AF_INET / AF_INET6 when ``host`` is an IP literal, else None."""
    # inet_pton, not ipaddress: this runs several times per probe and ipaddress is ~20x slower.
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return family
    return None


def parse_endpoint(target: str, default_port: int | None = None) -> Endpoint:
    """Parse ``host:port`` or ``[v6]:port``; raises ValueError with the expected form."""
    host, port = target, ""
    if target.startswith("["):
        host, sep, rest = target[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"expected [ipv6]:port, got {target!r}")
        port = rest[1:]
    elif target.count(":") == 1:
        host, port = target.split(":")
    elif ":" in target and ip_family(target) is None:
        raise ValueError(f"expected host:port or [ipv6]:port, got {target!r}")
    if not port:
        if default_port is None:
            raise ValueError(f"expected host:port, got {target!r} (no port)")
        return Endpoint(host, default_port)
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port with a port 1-65535, got {target!r}")
    return Endpoint(host, int(port))


async def system_resolver(host: str, port: int) -> list[tuple[int, str]]:
    """Resolve with the loop's getaddrinfo (A and AAAA), deduplicated in resolver order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[tuple[int, str], None] = {}
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            seen[(family, str(sockaddr[0]))] = None
    return list(seen)


def select_addresses(resolved: list[tuple[int, str]], module: Module) -> list[str]:
    """Apply the module's family preference (see module docstring); raises PhaseFailure(DNS)."""
    preferred = socket.AF_INET6 if module.ip_protocol == "ip6" else socket.AF_INET
    first = [ip for fam, ip in resolved if fam == preferred]
    other = [ip for fam, ip in resolved if fam != preferred]
    if module.probe_all_ips:
        chosen = first + other if module.ip_protocol_fallback else first
    else:
        chosen = first[:1] or (other[:1] if module.ip_protocol_fallback else [])
    if not chosen:
        family = "AAAA" if preferred == socket.AF_INET6 else "A"
        raise PhaseFailure(Reason.DNS, f"no {family} record and ip_protocol_fallback is off")
    return chosen


async def resolve(host: str, port: int, module: Module, resolver: Resolver) -> list[str]:
    """The addresses to probe for ``host`` (an IP literal resolves to itself)."""
    family = ip_family(host)
    if family is not None:
        return [host]
    try:
        resolved = await resolver(host, port)
    except (socket.gaierror, UnicodeError) as exc:
        raise PhaseFailure(Reason.DNS, f"cannot resolve {host!r}: {exc}") from exc
    except OSError as exc:
        raise PhaseFailure(Reason.DNS, f"resolver failed for {host!r}: {exc}") from exc
    if not resolved:
        raise PhaseFailure(Reason.DNS, f"{host!r} has no address")
    return select_addresses(resolved, module)


async def connect(ip: str, port: int, source_ip: str | None) -> socket.socket:
    """A connected non-blocking TCP socket to ``ip``; the caller owns (and must close) it."""
    family = ip_family(ip) or socket.AF_INET
    # Non-blocking from its creation: one ioctl less than setblocking(False).
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        if source_ip is not None:
            sock.bind((source_ip, 0))
        await _connect_socket(sock, (ip, port))
    except ConnectionRefusedError as exc:
        sock.close()
        raise PhaseFailure(Reason.REFUSED, f"connection refused by {ip} port {port}") from exc
    except TimeoutError as exc:  # the kernel gave up (ETIMEDOUT); our own deadline surfaces outside
        sock.close()
        raise PhaseFailure(Reason.CONNECT_TIMEOUT, f"connection to {ip} port {port} timed out") from exc
    except OSError as exc:
        sock.close()
        raise PhaseFailure(Reason.UNREACHABLE, f"cannot connect to {ip} port {port}: {exc}") from exc
    except BaseException:  # timeout/cancel: never leak the socket
        sock.close()
        raise
    return sock


# connect(2) on a non-blocking socket goes on in the background after EINPROGRESS, and after EINTR
# (a signal during the call), as asyncio's own loop also treats it.
_CONNECTING = frozenset({errno.EINPROGRESS, errno.EINTR})


async def _connect_socket(sock: socket.socket, address: tuple[str, int]) -> None:
    """connect(2) on a non-blocking socket to an IP literal; raises OSError (ConnectionRefusedError, ...).

    Not ``loop.sock_connect``: uvloop's passes every address, IP literals too, to getaddrinfo on
    libuv's thread pool, which woke a worker thread and the loop again on every probe.
    """
    error = sock.connect_ex(address)
    if error in _CONNECTING:
        await wait_ready(sock, write=True)
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, os.strerror(error))  # OSError picks the subclass of the errno


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():  # the loop may report readiness again before the waiting task runs
        future.set_result(None)


async def wait_ready(sock: socket.socket, *, write: bool) -> None:
    """Wait until ``sock`` is readable (or writable): an EOF or error counts as ready; the next call reports it."""
    loop = asyncio.get_running_loop()
    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)
    future = loop.create_future()
    fd = sock.fileno()
    add(fd, _wake, future)
    try:
        await future
    finally:
        remove(fd)


# --- HTTP CONNECT proxy ------------------------------------------------------------------------


def proxy_endpoint(proxy: ProxySettings) -> Endpoint:
    """host and port of an http:// proxy URL (port 80 by default)."""
    parts = urlsplit(proxy.url)
    if not parts.hostname:
        raise PhaseFailure(Reason.PROXY, "proxy URL has no host")
    return Endpoint(parts.hostname, parts.port or 80)


def _auth_header(auth_file: Path | None) -> bytes:
    if auth_file is None:
        return b""
    try:
        credentials = auth_file.read_text().strip()
    except OSError as exc:
        raise PhaseFailure(Reason.PROXY, f"cannot read proxy auth_file {auth_file}: {exc.strerror}") from exc
    if ":" not in credentials:
        raise PhaseFailure(Reason.PROXY, f"proxy auth_file {auth_file} must hold user:password")
    token = base64.b64encode(credentials.encode()).decode("ascii")
    return f"Proxy-Authorization: Basic {token}\r\n".encode()


async def _read_head(sock: socket.socket) -> bytes:
    # Read byte chunks until the end of the headers; a proxy sends nothing after "200" until we speak,
    # so nothing of the tunnel is consumed here.
    loop = asyncio.get_running_loop()
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await loop.sock_recv(sock, 4096)
        if not chunk:
            raise PhaseFailure(Reason.PROXY, "proxy closed the connection before answering CONNECT")
        head += chunk
        if len(head) > MAX_PROXY_RESPONSE:
            raise PhaseFailure(Reason.PROXY, "proxy answer to CONNECT is too long")
    return head


async def proxy_tunnel(sock: socket.socket, proxy: ProxySettings, target: Endpoint) -> None:
    """Ask the proxy on ``sock`` to CONNECT to ``target``; raises PhaseFailure(PROXY)."""
    request = (
        f"CONNECT {target.authority} HTTP/1.1\r\nHost: {target.authority}\r\n".encode()
        + _auth_header(proxy.auth_file)
        + b"\r\n"
    )
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, request)
        head = await _read_head(sock)
    except OSError as exc:
        raise PhaseFailure(Reason.PROXY, f"proxy connection failed: {exc}") from exc
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise PhaseFailure(Reason.PROXY, f"proxy answered garbage: {status_line[:80]!r}")
    if parts[1] == "407":
        raise PhaseFailure(Reason.PROXY, "proxy authentication required (407)")
    if not parts[1].startswith("2"):
        raise PhaseFailure(Reason.PROXY, f"proxy refused CONNECT: {status_line[:80]}")
