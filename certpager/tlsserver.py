"""Loopback TLS servers for tests, the demo and benchmarks, plus misbehaving peers.

- :class:`TLSServer` serves a given chain (files from ``certpager.pki.Chain.write``), optionally
  requiring a client certificate, optionally limited in TLS versions.
- :class:`MisbehavingPeer` accepts TCP and then stalls (never answers), answers non-TLS bytes, or
  closes at once.

All are async context managers binding ``127.0.0.1`` or ``::1`` on port 0 (``.port`` tells which),
or both on one port (``host=("127.0.0.1", "::1")``, for probe-every-IP tests); leaving the context
closes the listeners and every connection still open.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ssl
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from certpager.pki import ChainFiles

_VERSIONS = {"TLS1.0": ssl.TLSVersion.TLSv1, "TLS1.1": ssl.TLSVersion.TLSv1_1,
             "TLS1.2": ssl.TLSVersion.TLSv1_2, "TLS1.3": ssl.TLSVersion.TLSv1_3}
PeerMode = Literal["stall", "garbage", "close"]
GARBAGE = b"SSH-2.0-OpenSSH_9.2p1 certpager-test\r\n"  # what a non-TLS service typically says


class _Listener:
    """Common start/stop and connection bookkeeping."""

    def __init__(self, host: str | Sequence[str]) -> None:
        self.hosts = (host,) if isinstance(host, str) else tuple(host)
        self.host = self.hosts[0]
        self.port = 0
        self.connections = 0  # TCP connections accepted so far
        self._servers: list[asyncio.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ssl: ssl.SSLContext | None = None

    @property
    def address(self) -> str:
        """host:port (``[::1]:port`` for IPv6), the form a probe target takes."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        for attempt in range(20):  # another process may hold the port on the second address: retry
            try:
                await self._bind_all()
                return self
            except OSError as exc:
                await self._close_servers()
                if exc.errno != errno.EADDRINUSE or attempt == 19:
                    raise
        raise AssertionError("unreachable")

    async def _bind_all(self) -> None:
        self.port = 0
        for host in self.hosts:
            server = await asyncio.start_server(self._accept, host, self.port, ssl=self._ssl)
            self._servers.append(server)
            self.port = server.sockets[0].getsockname()[1]

    async def _close_servers(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()
        self._servers.clear()

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for server in self._servers:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()  # the handlers see EOF or a reset and return
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        for task in list(self._tasks):
            task.cancel()
        await self._close_servers()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections += 1
        self._writers.add(writer)
        self._tasks.add(task)
        try:
            await self.handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away or the server stops; nothing to report
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.transport.abort()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


def server_context(
    cert_file: Path,
    key_file: Path,
    *,
    client_ca_file: Path | None = None,
    min_version: str | None = None,
    max_version: str | None = None,
    alpn: Sequence[str] = (),
) -> ssl.SSLContext:
    """A server SSLContext serving ``cert_file`` (leaf first, then intermediates)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # serve weak keys too: policy tests need them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1/TLSv1_1 constants are deprecated
        ctx.minimum_version = _VERSIONS[min_version] if min_version else ssl.TLSVersion.TLSv1
        if max_version:
            ctx.maximum_version = _VERSIONS[max_version]
    ctx.load_cert_chain(cert_file, key_file)
    if client_ca_file is not None:
        ctx.load_verify_locations(client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


class TLSServer(_Listener):
    """Serves a chain; ``client_ca_file`` makes it require a client certificate issued under it."""

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        *,
        host: str | Sequence[str] = "127.0.0.1",
        client_ca_file: Path | None = None,
        min_version: str | None = None,
        max_version: str | None = None,
        alpn: Sequence[str] = (),
    ) -> None:
        super().__init__(host)
        self._ssl = server_context(cert_file, key_file, client_ca_file=client_ca_file,
                                   min_version=min_version, max_version=max_version, alpn=alpn)
        self.client_subjects: list[str] = []  # CN of each client certificate seen
        self.server_names: list[str | None] = []  # SNI of each handshake (None: no SNI sent)
        self._ssl.sni_callback = self._record_sni

    def _record_sni(self, _obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.server_names.append(name)

    @classmethod
    def for_files(cls, files: ChainFiles, *, intermediates: bool = True, **kw: Any) -> TLSServer:
        """Serve ``Chain.write`` output; ``intermediates=False`` serves the leaf alone (a broken server)."""
        return cls(files.cert_file if intermediates else files.leaf_only_file, files.key_file, **kw)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert")
        if peer:
            names = [v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"]
            self.client_subjects.append(names[0] if names else "")
        with contextlib.suppress(ssl.SSLError):
            await reader.read()  # until the client leaves


class MisbehavingPeer(_Listener):
    """A TCP listener that is not a TLS server: ``stall``, ``garbage`` (non-TLS bytes) or ``close``."""

    def __init__(self, mode: PeerMode, *, host: str | Sequence[str] = "127.0.0.1") -> None:
        super().__init__(host)
        self.mode = mode

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "close":
            return  # _accept closes the connection
        if self.mode == "garbage":
            await reader.read(1)  # wait for the ClientHello, then answer like an SSH server
            writer.write(GARBAGE)
            await writer.drain()
        await reader.read()  # stall (or keep the garbage on the wire) until the client leaves
