"""Fixtures for the STARTTLS tests: TLS contexts from the session PKI, a dialogue runner, real servers.

Real servers are started once per session, on random loopback ports, from one temporary directory
that is removed afterwards; a missing Debian package skips its tests (see .ci/debian-packages).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509

from exporter.config import StartTLSSettings
from exporter.probes.starttls import NEGOTIATORS
from tests.exporter.conftest import ProbePKI
from tests.exporter.starttls import servers
from tests.exporter.starttls.servers import Daemon

Dialogue = Callable[..., Awaitable[x509.Certificate]]


@pytest.fixture(scope="session")
def server_tls(test_pki: ProbePKI) -> ssl.SSLContext:
    files = test_pki.files["valid"]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert_file, files.key_file)
    return context


@pytest.fixture
def dialogue(test_pki: ProbePKI) -> Dialogue:
    """Connect, run the protocol's negotiator, upgrade to TLS (verifying), return the leaf."""

    async def run(port: int, protocol: str, *, host: str = "localhost", timeout: float = 5.0,
                  **settings: object) -> x509.Certificate:
        negotiator = NEGOTIATORS[protocol]
        context = ssl.create_default_context(cafile=str(test_pki.ca_file))
        if negotiator.alpn_protocols:
            context.set_alpn_protocols(list(negotiator.alpn_protocols))
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        writer = None
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, ("127.0.0.1", port))
                await negotiator.negotiate(sock, StartTLSSettings(protocol=protocol, **settings), host)
                _, writer = await asyncio.open_connection(sock=sock, ssl=context, server_hostname=host)
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            writer.close()  # close_notify, so the server sees a clean end
            with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            return x509.load_der_x509_certificate(der)
        finally:
            if writer is not None:
                writer.transport.abort()
            sock.close()

    return run


def _need(program: str) -> None:
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed (see .ci/debian-packages)")


@pytest.fixture(scope="session")
def real_base() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="certpager-starttls-", dir="/tmp"))
    base.chmod(0o755)  # the postgres user must reach its directory
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def _running(*daemons: Daemon) -> Iterator[None]:
    started: list[Daemon] = []
    try:
        for daemon in daemons:
            started.append(daemon.start())
        yield
    finally:
        for daemon in started:
            daemon.stop()


@pytest.fixture(scope="session")
def postgres_ports(real_base: Path, test_pki: ProbePKI) -> Iterator[tuple[int, int]]:
    """(port with ssl=on, port with ssl=off) of two real PostgreSQL servers."""
    bin_dir = servers.postgres_bin()
    if bin_dir is None:
        pytest.skip("postgresql is not installed (see .ci/debian-packages)")
    files = test_pki.files["valid"]
    template = servers.postgres_cluster(real_base, bin_dir)
    on = servers.postgres(real_base, bin_dir, template, "pg-ssl", files.cert_file, files.key_file, ssl=True)
    off = servers.postgres(real_base, bin_dir, template, "pg-nossl", files.cert_file, files.key_file, ssl=False)
    with _running(on, off):
        yield on.ports[0], off.ports[0]


@pytest.fixture(scope="session")
def mariadb_port(real_base: Path, test_pki: ProbePKI) -> Iterator[int]:
    _need("mariadbd")
    files = test_pki.files["valid"]
    daemon = servers.mariadb(real_base, files.cert_file, files.key_file)
    with _running(daemon):
        yield daemon.ports[0]


@pytest.fixture(scope="session")
def dovecot_ports(real_base: Path, test_pki: ProbePKI) -> Iterator[dict[str, int]]:
    """Ports of two real Dovecot instances: imap/pop3 with ssl=yes, imap_plain/pop3_plain with ssl=no."""
    _need("dovecot")
    files = test_pki.files["valid"]
    on, imap, pop3 = servers.dovecot(real_base, "dovecot-ssl", files.cert_file, files.key_file, ssl=True)
    off, imap_plain, pop3_plain = servers.dovecot(real_base, "dovecot-nossl", files.cert_file, files.key_file,
                                                  ssl=False)
    with _running(on, off):
        yield {"imap": imap, "pop3": pop3, "imap_plain": imap_plain, "pop3_plain": pop3_plain}


@pytest.fixture(scope="session")
def slapd_ports(real_base: Path, test_pki: ProbePKI) -> Iterator[tuple[int, int]]:
    """(port with TLS configured, port without) of two real slapd servers."""
    _need("slapd")
    files = test_pki.files["valid"]
    on, tls_port = servers.slapd(real_base, "slapd-tls", files.cert_file, files.key_file, tls=True)
    off, plain_port = servers.slapd(real_base, "slapd-plain", files.cert_file, files.key_file, tls=False)
    with _running(on, off):
        yield tls_port, plain_port
