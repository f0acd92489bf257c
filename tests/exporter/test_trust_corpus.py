"""Trust verdicts against the clients: every shape of tests/exporter/pki_shapes.py served on loopback.

- profile ``openssl`` (the default) must give the verdict of Debian's ``openssl s_client
  -verify_return_error`` (OpenSSL 3 at its default security level 2), and the reason must be the
  one its error number means; Python's ``ssl`` (its default context) must agree with s_client;
- profile ``webpki`` must give the verdict of ``cryptography``'s own Web PKI verifier.

One TLS server serves every shape, picked by SNI; the s_client runs go four at a time.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import verification

from exporter import trust
from exporter.config import Module, TLSSettings
from exporter.probes.base import ProbeRequest, ProbeResult, VerifyReason
from exporter.probes.tls import TLSProber
from tests.exporter.pki_shapes import Shape, shapes

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs Debian's openssl")


@pytest.fixture(scope="module")
def corpus() -> list[Shape]:
    return shapes()


def test_the_corpus_is_large_enough(corpus: list[Shape]) -> None:
    assert len(corpus) >= 50
    assert len({s.name for s in corpus}) == len(corpus)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, corpus: list[Shape]) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("shapes")
    for shape in corpus:
        (directory / f"{shape.name}.pem").write_bytes(b"".join(c.pem for c in shape.presented))
        (directory / f"{shape.name}.key").write_bytes(shape.presented[0].key_pem)
        (directory / f"{shape.name}-ca.pem").write_bytes(b"".join(c.pem for c in shape.anchors))
    return {s.host: directory / s.name for s in corpus}


def _server_context(base: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # serve weak chains: the client decides
    context.load_cert_chain(f"{base}.pem", f"{base}.key")
    return context


async def _serve(served: dict[str, Path]) -> asyncio.Server:
    contexts = {name: _server_context(base) for name, base in served.items()}

    def pick(connection: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        if name in contexts:
            connection.context = contexts[name]

    default = _server_context(next(iter(served.values())))
    default.sni_callback = pick  # type: ignore[assignment]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(1)  # until the client closes
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0, ssl=default, ssl_handshake_timeout=10)


async def _s_client(port: int, shape: Shape, ca_file: Path) -> tuple[bool, int | None, str]:
    """(verified, OpenSSL error number, output) as Debian's openssl s_client sees the shape."""
    process = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", shape.host,
        "-CAfile", str(ca_file), "-no-CApath", "-no-CAstore", "-verify_return_error", "-brief",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output = (await asyncio.wait_for(process.communicate(), 30))[0].decode(errors="replace")
    found = re.search(r"verify error:num=(\d+)", output)
    return process.returncode == 0, int(found.group(1)) if found else None, output


def _python_ssl(port: int, shape: Shape, ca_file: Path) -> bool:
    """Does Python's ssl module (Debian's OpenSSL, its default context, no name check) connect?"""
    import socket

    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, \
                context.wrap_socket(sock, server_hostname=shape.host):
            return True
    except ssl.SSLError:
        return False


def _module(shape: Shape, ca_file: Path, profile: str) -> Module:
    return Module(tls=TLSSettings(server_name=shape.host, ca_file=ca_file, verify_profile=profile))  # type: ignore[arg-type]


def _cryptography_verdict(shape: Shape, ca_file: Path) -> bool:
    """cryptography's Web PKI verifier, called directly, for the name the client asks for."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            anchors = [x509.load_der_x509_certificate(c.der) for c in shape.anchors]
            chain = [x509.load_der_x509_certificate(c.der) for c in shape.presented]
            verifier = (verification.PolicyBuilder().store(verification.Store(anchors))
                        .build_server_verifier(x509.DNSName(shape.host)))
            verifier.verify(chain[0], chain[1:])
        except (ValueError, x509.InvalidVersion, verification.VerificationError):
            return False
    return True


def _expected_reason(number: int, result: ProbeResult) -> VerifyReason:
    """The reason s_client's error number means (OpenSSL error 20 at the leaf: a missing intermediate)."""
    if number == 20 and "at depth 0)" in result.detail:
        return VerifyReason.MISSING_INTERMEDIATE
    return trust._REASONS.get(number, VerifyReason.INVALID)


async def test_verdicts_match_openssl_s_client_and_cryptography(served: dict[str, Path], corpus: list[Shape]) -> None:
    server = await _serve(served)
    port = server.sockets[0].getsockname()[1]
    prober = TLSProber()
    limit = asyncio.Semaphore(4)
    verdicts: dict[tuple[str, str], bool | None] = {}

    async def check(shape: Shape) -> list[str]:
        ca_file = Path(f"{served[shape.host]}-ca.pem")
        async with limit:
            openssl_ok, number, output = await _s_client(port, shape, ca_file)
            python_ok = await asyncio.to_thread(_python_ssl, port, shape, ca_file)
        problems = []
        if python_ok != openssl_ok:  # the two OpenSSL clients agree; a difference is the corpus' to explain
            problems.append(f"{shape.name}: Python's ssl {python_ok}, s_client {openssl_ok}")
        for profile in ("openssl", "webpki"):
            request = ProbeRequest(target=f"127.0.0.1:{port}", module=_module(shape, ca_file, profile), timeout=10)
            (result,) = await prober.probe(request)
            if not result.success:
                problems.append(f"{shape.name}: probe failed: {result.reason} {result.detail}")
                continue
            if "{" in result.detail or "PhantomData" in result.detail:
                problems.append(f"{shape.name}/{profile}: a debug dump in the detail: {result.detail}")
            verdicts[shape.name, profile] = result.chain_verified
            if profile == "webpki":
                if result.chain_verified != _cryptography_verdict(shape, ca_file):
                    problems.append(f"{shape.name}/webpki: {result.chain_verified} {result.detail}")
            elif result.chain_verified != openssl_ok:
                problems.append(f"{shape.name}: certpager {result.chain_verified} ({result.verify_reason}: "
                                f"{result.detail}), s_client {openssl_ok}: {output[-300:]!r}")
            elif not openssl_ok and number is not None and result.verify_reason != _expected_reason(number, result):
                problems.append(f"{shape.name}: reason {result.verify_reason} ({result.detail}), s_client "
                                f"error {number}")
        return problems

    try:
        found = await asyncio.gather(*(check(shape) for shape in corpus))
    finally:
        server.close()
        await server.wait_closed()
    problems = [p for shape_problems in found for p in shape_problems]
    assert not problems, "\n".join(problems)
    # The corpus holds both kinds, and the shapes where the profiles disagree (see docs/probing.md).
    differ = sorted(name for (name, profile), ok in verdicts.items()
                    if profile == "openssl" and ok != verdicts[name, "webpki"])
    assert {"ca_without_key_usage", "v1_root", "leaf_without_aki", "leaf_ca_true", "negative_serial",
            "underscore_san", "cn_without_san", "depth_11", "rsa1024_leaf", "aki_mismatch"} <= set(differ)
    assert 10 < sum(1 for (_, profile), ok in verdicts.items() if profile == "openssl" and ok) < len(corpus) - 10
