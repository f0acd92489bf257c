"""Per-probe client CPU: handshake with verification off + separate verification vs OpenSSL verifying.

Not a test: prints figures. Usage: ``.venv/bin/python bench/probe_verify_cost.py [--probes 500]``.

Part 1, in memory: the client (pyOpenSSL, as the probe) and a stdlib ``ssl`` server joined by memory
BIOs in one thread; only the client's calls are timed (``time.thread_time``), variants alternate
handshake by handshake, so load drift on a shared machine hits all of them alike.
Part 2, over loopback: the TLS server runs in a child process so that ``time.process_time()``
counts the prober's CPU only, sockets and asyncio included.

Variants (same server, same RSA-2048 root -> intermediate -> leaf chain, TLS 1.3):
  engine        exporter.probes.tls.TLSProber.probe (everything a real probe does, caches warm)
  off+cached    VERIFY_NONE handshake, read the chain, certs.ChainVerifier (verdict cache) + hostname
  off+uncached  the same, but the verdict cache and parse cache are bypassed every probe (profile
                openssl: OpenSSL's X509_verify_cert plus the purpose and security-level checks)
  off+uncached-webpki  the same with profile webpki (cryptography's verifier); in memory only
  openssl       VERIFY_PEER handshake against the CA file, read get_verified_chain() (pyOpenSSL has
                no hostname check, so this slightly under-counts what OpenSSL verifying would cost)
  off-only      VERIFY_NONE handshake and chain read, no verification (the floor)
  hybrid-share  off-only with OpenSSL 4.0's default key shares, X25519MLKEM768 and X25519, instead of the
                engine's single X25519 share (exporter.probes.tls.offer_classical_groups); skipped when
                cryptography's binding lacks SSL_CTX_set1_curves_list
  stdlib-off    off-only with the stdlib ``ssl`` module (Debian's OpenSSL): the probe before pyOpenSSL
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from OpenSSL import SSL, crypto  # noqa: E402

from certpager import pki  # noqa: E402
from certpager.tlsserver import TLSServer, server_context  # noqa: E402
from exporter import certs  # noqa: E402
from exporter.config import Module, TLSSettings  # noqa: E402
from exporter.probes.base import ProbeRequest  # noqa: E402
from exporter.probes.tls import (  # noqa: E402
    TLSProber,
    build_context,
    handshake,
    new_connection,
    peer_chain,
    peer_chain_der,
)

# OpenSSL 3.5+'s default list: a "*" marks a group whose key share goes into the ClientHello.
HYBRID_DEFAULT = b"*X25519MLKEM768:*X25519:secp256r1:X448:secp384r1:secp521r1:ffdhe2048:ffdhe3072"


async def _handshake(port: int, ctx: SSL.Context, sni: str) -> SSL.Connection:
    # Every variant uses the engine's socket + memory-BIO handshake, so only verification differs.
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        return await handshake(sock, ctx, sni)
    finally:
        sock.close()


async def _stdlib_handshake(port: int, ctx: ssl.SSLContext, sni: str) -> list[bytes]:
    # The probe's loop before pyOpenSSL: stdlib SSLObject over memory BIOs on the socket.
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if pending := outgoing.read():
                    await loop.sock_sendall(sock, pending)
                incoming.write(await loop.sock_recv(sock, 65536))
        if pending := outgoing.read():
            await loop.sock_sendall(sock, pending)
        chain = obj._sslobj.get_unverified_chain()  # type: ignore[attr-defined]
        return [c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain]  # type: ignore[attr-defined]
    finally:
        sock.close()


def stdlib_off() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    return ctx


def strict_context(ca_file: Path) -> SSL.Context:
    ctx = build_context(TLSSettings())
    ctx.set_verify(SSL.VERIFY_PEER)
    ctx.load_verify_locations(str(ca_file))
    return ctx


def hybrid_context() -> SSL.Context | None:
    """The engine's context with OpenSSL's default hybrid + X25519 key shares (None without the binding)."""
    from cryptography.hazmat.bindings.openssl.binding import Binding

    ctx = build_context(TLSSettings())
    set_list = getattr(Binding.lib, "SSL_CTX_set1_curves_list", None)
    if set_list is None or set_list(ctx._context, HYBRID_DEFAULT) != 1:
        return None
    return ctx


def variants(port: int, files: pki.ChainFiles) -> dict[str, Callable[[], Awaitable[object]]]:
    module = Module(tls=TLSSettings(ca_file=files.ca_file))
    prober = TLSProber()
    off = build_context(module.tls)
    verifier = certs.ChainVerifier()
    strict = strict_context(files.ca_file)
    hybrid = hybrid_context()
    old = stdlib_off()

    async def engine() -> object:
        (result,) = await prober.probe(ProbeRequest(f"localhost:{port}", module, timeout=5, address="127.0.0.1"))
        assert result.success and result.chain_verified and result.hostname_verified, result
        return result

    async def off_cached() -> object:
        chain = certs.read_chain(peer_chain_der(await _handshake(port, off, "localhost")))
        assert verifier.verify(chain, files.ca_file).verified
        return certs.match_hostname(_leaf(chain), "localhost")

    async def off_uncached() -> object:
        chain = _uncached_chain(*peer_chain(await _handshake(port, off, "localhost")))
        fresh = certs.ChainVerifier(verifier.stores)  # keeps the loaded store, empty verdict cache
        assert fresh.verify(chain, files.ca_file).verified
        return certs.match_hostname(_leaf(chain), "localhost")

    async def openssl() -> object:
        return (await _handshake(port, strict, "localhost")).get_verified_chain()

    async def off_only() -> object:
        return peer_chain_der(await _handshake(port, off, "localhost"))

    async def hybrid_share() -> object:
        assert hybrid is not None
        return peer_chain_der(await _handshake(port, hybrid, "localhost"))

    async def stdlib() -> object:
        return await _stdlib_handshake(port, old, "localhost")

    fns: dict[str, Callable[[], Awaitable[object]]] = {
        "engine": engine, "off+cached": off_cached, "off+uncached": off_uncached, "openssl": openssl,
        "off-only": off_only, "hybrid-share": hybrid_share, "stdlib-off": stdlib}
    if hybrid is None:
        del fns["hybrid-share"]
    return fns


async def measure(
    fns: dict[str, Callable[[], Awaitable[object]]], probes: int, concurrency: int, rounds: int
) -> dict[str, list[tuple[float, float]]]:
    """Per-probe (CPU, wall) seconds of each variant per round; variants interleave so load drifts hit all."""
    for fn in fns.values():
        for _ in range(20):  # warm caches and the allocator
            await fn()
    per_round = max(concurrency, probes // rounds // concurrency * concurrency)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for _ in range(per_round // concurrency):
                await asyncio.gather(*(fn() for _ in range(concurrency)))
            samples[name].append(((time.process_time() - cpu0) / per_round, (time.perf_counter() - wall0) / per_round))
    return samples


def _memory_handshake(client: SSL.Context, server: ssl.SSLContext) -> tuple[float, SSL.Connection]:
    c = new_connection(client, "localhost")
    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    s = server.wrap_bio(s_in, s_out, server_side=True)
    cpu = 0.0
    for _ in range(10):
        begin = time.thread_time()
        try:
            c.do_handshake()
            done = True
        except SSL.WantReadError:
            done = False
        out = b""
        with contextlib.suppress(SSL.WantReadError):
            out = c.bio_read(65536)
        cpu += time.thread_time() - begin
        s_in.write(out)
        with contextlib.suppress(ssl.SSLWantReadError):
            s.do_handshake()
        if pending := s_out.read():
            begin = time.thread_time()
            c.bio_write(pending)
            cpu += time.thread_time() - begin
        if done:
            return cpu, c
    raise RuntimeError("handshake did not finish")


def _stdlib_memory_handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> float:
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    cpu = 0.0
    for _ in range(10):
        begin = time.thread_time()
        try:
            c.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        if done:
            c._sslobj.get_unverified_chain()  # type: ignore[attr-defined]
        cpu += time.thread_time() - begin
        s_in.write(c_out.read())
        with contextlib.suppress(ssl.SSLWantReadError):
            s.do_handshake()
        c_in.write(s_out.read())
        if done:
            return cpu
    raise RuntimeError("handshake did not finish")


def _leaf(chain: certs.PresentedChain) -> certs.ParsedCert:
    assert chain.leaf is not None
    return chain.leaf


def _uncached_chain(ders: list[bytes], decoded: Sequence[crypto.X509] = ()) -> certs.PresentedChain:
    """The presented chain parsed afresh (the parse cache bypassed)."""
    parsed = tuple(certs._parse(d, b"", i) for i, d in enumerate(ders))
    digests = tuple(hashlib.sha256(d).digest() for d in ders)
    return certs.PresentedChain(tuple(ders), digests, parsed, tuple(p.info for p in parsed), (), tuple(decoded))


def memory_variants(files: pki.ChainFiles) -> dict[str, Callable[[], float]]:
    server = server_context(files.cert_file, files.key_file)
    off = build_context(TLSSettings())
    strict = strict_context(files.ca_file)
    hybrid = hybrid_context()
    old = stdlib_off()
    verifier = certs.ChainVerifier()

    def timed(fn: Callable[[], object]) -> float:
        begin = time.thread_time()
        fn()
        return time.thread_time() - begin

    def off_only() -> float:
        cpu, c = _memory_handshake(off, server)
        return cpu + timed(lambda: peer_chain_der(c))

    def off_cached() -> float:
        cpu, c = _memory_handshake(off, server)

        def verify() -> None:
            chain = certs.read_chain(peer_chain_der(c))
            assert verifier.verify(chain, files.ca_file).verified
            certs.match_hostname(_leaf(chain), "localhost")
        return cpu + timed(verify)

    def uncached(profile: str) -> Callable[[], float]:
        def run() -> float:
            cpu, c = _memory_handshake(off, server)

            def verify() -> None:
                chain = _uncached_chain(*peer_chain(c))
                assert certs.ChainVerifier(verifier.stores).verify(chain, files.ca_file, profile=profile).verified
                certs.match_hostname(_leaf(chain), "localhost")
            return cpu + timed(verify)
        return run

    def openssl() -> float:
        cpu, c = _memory_handshake(strict, server)
        return cpu + timed(c.get_verified_chain)

    def hybrid_share() -> float:
        assert hybrid is not None
        cpu, c = _memory_handshake(hybrid, server)
        return cpu + timed(lambda: peer_chain_der(c))

    fns = {"off-only": off_only, "off+cached": off_cached, "off+uncached": uncached("openssl"),
           "off+uncached-webpki": uncached("webpki"), "openssl": openssl,
           "hybrid-share": hybrid_share, "stdlib-off": lambda: _stdlib_memory_handshake(old, server)}
    if hybrid is None:
        del fns["hybrid-share"]
    return fns


def measure_memory(files: pki.ChainFiles, handshakes: int) -> None:
    fns = memory_variants(files)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(handshakes):
        for name, fn in fns.items():
            samples[name].append(fn())
    print(f"part 1, in memory: {handshakes} handshakes per variant, alternating; client CPU per handshake")
    print(f"{'variant':<14} {'median us':>10} {'p25':>6} {'p75':>6}")
    for name, xs in samples.items():
        xs.sort()
        print(f"{name:<14} {statistics.median(xs) * 1e6:>10.0f} {xs[len(xs) // 4] * 1e6:>6.0f}"
              f" {xs[3 * len(xs) // 4] * 1e6:>6.0f}")


async def serve(directory: Path) -> None:
    files = pki.ChainFiles(directory / "server.crt", directory / "server.key", directory / "server-ca.crt",
                           directory / "server-leaf.crt")
    async with TLSServer(files.cert_file, files.key_file) as server:
        print(server.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def main(args: argparse.Namespace) -> None:
    directory = Path(tempfile.mkdtemp(prefix="certpager-bench-"))
    root = pki.make_root(key="rsa2048")
    chain = pki.build_chain(("localhost",), root=root, intermediate=pki.make_intermediate(root, key="rsa2048"),
                            key="rsa2048")
    files = chain.write(directory)
    client = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    print(f"RSA-2048 root -> intermediate -> leaf, TLS 1.3, client {client}, stdlib/server {ssl.OPENSSL_VERSION},"
          f" Python {sys.version.split()[0]}")
    measure_memory(files, args.probes)
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(directory)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        print(f"part 2, over loopback: {args.probes} probes per variant in {args.rounds} interleaved rounds,"
              f" concurrency {args.concurrency}")
        print(f"{'variant':<14} {'CPU us/probe (median round)':>28} {'probes/CPU-s':>13} {'wall us/probe':>14}")
        samples = await measure(variants(port, files), args.probes, args.concurrency, args.rounds)
        for name, rows in samples.items():
            cpu = statistics.median(r[0] for r in rows)
            wall = statistics.median(r[1] for r in rows)
            print(f"{name:<14} {cpu * 1e6:>28.0f} {1 / cpu:>13.0f} {wall * 1e6:>14.0f}")
    finally:
        if child.stdin:
            child.stdin.close()
        child.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    asyncio.run(serve(ns.serve) if ns.serve else main(ns))
