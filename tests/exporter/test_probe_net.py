"""Target parsing, address selection, resolving, and probing through an HTTP CONNECT proxy."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import subprocess
import sys

import pytest

from certpager.tlsserver import TLSServer
from exporter.config import Module, ProxySettings, TLSSettings
from exporter.probes import net
from exporter.probes.base import Phase, ProbeRequest, Reason
from tests.exporter.conftest import LEAF_NOT_AFTER, V4, V6, ts


@pytest.mark.parametrize(
    ("target", "host", "port"),
    [("example.com:443", "example.com", 443), ("127.0.0.1:8443", "127.0.0.1", 8443),
     ("[::1]:443", "::1", 443), ("[2001:db8::1]:1", "2001:db8::1", 1)],
)
def test_parse_endpoint(target, host, port):
    assert net.parse_endpoint(target) == net.Endpoint(host, port)


@pytest.mark.parametrize(
    ("target", "message"),
    [("example.com", "no port"), ("example.com:0", "port 1-65535"), ("example.com:https", "port 1-65535"),
     ("[::1:443", "[ipv6]:port"), ("::1:443:x", "[ipv6]:port"), (":443", "port 1-65535")],
)
def test_parse_endpoint_rejects(target, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        net.parse_endpoint(target)


def test_authority_brackets_ipv6():
    assert net.Endpoint("::1", 443).authority == "[::1]:443"
    assert net.Endpoint("a.test", 443).authority == "a.test:443"


@pytest.mark.parametrize(
    ("settings", "resolved", "expected"),
    [
        ({}, [V4, V6], ["::1"]),  # ip6 preferred by default
        ({"ip_protocol": "ip4"}, [V6, V4], ["127.0.0.1"]),
        ({}, [V4], ["127.0.0.1"]),  # fallback to the other family
        ({"probe_all_ips": True}, [V4, V6, (socket.AF_INET, "127.0.0.2")], ["::1", "127.0.0.1", "127.0.0.2"]),
        ({"probe_all_ips": True, "ip_protocol_fallback": False}, [V4, V6], ["::1"]),
        ({"probe_all_ips": True, "ip_protocol": "ip4"}, [V6, V4], ["127.0.0.1", "::1"]),
    ],
)
def test_select_addresses(settings, resolved, expected):
    assert net.select_addresses(resolved, Module(**settings)) == expected


def test_select_addresses_without_fallback_is_dns_failure():
    with pytest.raises(net.PhaseFailure) as info:
        net.select_addresses([V4], Module(ip_protocol_fallback=False))
    assert info.value.reason is Reason.DNS
    assert "no AAAA record" in info.value.detail


async def test_system_resolver_reads_hosts_file_for_localhost():
    # "localhost" is answered from /etc/hosts: no DNS query leaves the machine.
    assert (socket.AF_INET, "127.0.0.1") in await net.system_resolver("localhost", 443)


async def test_resolve_ip_literal_skips_the_resolver(resolver):
    assert await net.resolve("::1", 443, Module(), resolver) == ["::1"]
    assert resolver.calls == []


async def test_resolve_failure_is_dns(resolver):
    with pytest.raises(net.PhaseFailure) as info:
        await net.resolve("missing.invalid", 443, Module(), resolver)
    assert info.value.reason is Reason.DNS


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_connect_gives_a_connected_nonblocking_socket(host):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen()
        port = listener.getsockname()[1]
        sock = await net.connect(host, port, None)
        with sock:
            assert sock.getpeername()[:2] == (host, port)
            assert sock.gettimeout() == 0.0
    with pytest.raises(net.PhaseFailure) as refused:  # the listener is closed: nothing listens on the port
        await net.connect(host, port, None)
    assert (refused.value.reason, refused.value.detail) == (Reason.REFUSED, f"connection refused by {host} port {port}")


_CONNECT_ON_UVLOOP = """
import os, socket, uvloop
from exporter.probes import net
async def main():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0)); listener.listen()
        for _ in range(3):
            (await net.connect("127.0.0.1", listener.getsockname()[1], None)).close()
uvloop.run(main())
print(sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")))
"""


def test_connect_to_an_ip_literal_starts_no_resolver_thread():
    # uvloop's sock_connect passes IP literals to getaddrinfo on libuv's thread pool: a worker thread
    # woken, and the loop woken again, on every probe. A fresh process shows whether the pool started.
    out = subprocess.run([sys.executable, "-c", _CONNECT_ON_UVLOOP], capture_output=True, text=True, timeout=60,
                         check=True)
    threads = out.stdout.strip()
    assert "libuv-worker" not in threads, threads  # the pool's threads (the kernel's io_uring ones may exist)


async def test_resolver_preference_through_the_probe(prober, test_pki, trusting):
    async with TLSServer(test_pki.files["valid"].cert_file, test_pki.files["valid"].key_file) as server:
        v4 = await prober.probe(ProbeRequest(f"v4only.test:{server.port}", trusting, timeout=5))
        strict = trusting.model_copy(update={"ip_protocol_fallback": False})
        no_v6 = await prober.probe(ProbeRequest(f"v4only.test:{server.port}", strict, timeout=5))
    assert [(r.success, r.ip) for r in v4] == [(True, "127.0.0.1")]
    assert [(r.success, r.reason) for r in no_v6] == [(False, Reason.DNS)]


async def test_source_ip_address_is_bound(prober, test_pki, trusting):
    module = trusting.model_copy(update={"source_ip_address": "127.0.0.1"})
    async with TLSServer(test_pki.files["valid"].cert_file, test_pki.files["valid"].key_file) as server:
        (result,) = await prober.probe(ProbeRequest(server.address, module, timeout=5))
    assert result.success is True
    bad = trusting.model_copy(update={"source_ip_address": "192.0.2.1"})  # TEST-NET-1: not ours, bind fails
    (failed,) = await prober.probe(ProbeRequest(server.address, bad, timeout=5))
    assert (failed.success, failed.reason) == (False, Reason.UNREACHABLE)


# --- HTTP CONNECT proxy ------------------------------------------------------------------------


class ConnectProxy:
    """A small HTTP CONNECT proxy on loopback, optionally requiring Basic auth."""

    def __init__(self, credentials: str | None = None, *, answer: bytes | None = None) -> None:
        self.credentials = credentials
        self.answer = answer  # a fixed (bad) answer instead of tunnelling
        self.requests: list[str] = []
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self):
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader, writer):
        task = asyncio.current_task()
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _serve(self, reader, writer):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        self.requests.append(head[0])
        headers = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
        if self.answer is not None:
            writer.write(self.answer)
            return await writer.drain()
        expected = f"Basic {base64.b64encode(self.credentials.encode()).decode()}" if self.credentials else None
        if expected and headers.get("Proxy-Authorization") != expected:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n")
            return await writer.drain()
        endpoint = net.parse_endpoint(head[0].split()[1])
        try:
            up_reader, up_writer = await asyncio.open_connection(endpoint.host, endpoint.port)
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
            return await writer.drain()
        self._writers.add(up_writer)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader, writer):
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


def _proxied(trusting: Module, proxy: ConnectProxy, auth_file=None) -> Module:
    return trusting.model_copy(update={"proxy": ProxySettings(url=proxy.url, auth_file=auth_file)})


async def test_probe_through_proxy(prober, resolver, test_pki, trusting):
    files = test_pki.files["service"]
    async with TLSServer(files.cert_file, files.key_file) as server, ConnectProxy() as proxy:
        module = _proxied(trusting, proxy).model_copy(
            update={"tls": TLSSettings(ca_file=test_pki.ca_file, server_name="service.test")})
        (result,) = await prober.probe(ProbeRequest(f"127.0.0.1:{server.port}", module, timeout=5))
    assert (result.success, result.ip, result.chain_verified, result.hostname_verified) == (True, None, True, True)
    assert result.chain[0].not_after == ts(LEAF_NOT_AFTER)
    assert proxy.requests == [f"CONNECT 127.0.0.1:{server.port} HTTP/1.1"]
    assert server.server_names == ["service.test"]
    assert Phase.RESOLVE not in result.durations  # the proxy resolves
    assert resolver.calls == []


async def test_proxy_tunnels_to_the_address_override(prober, test_pki, trusting):
    files = test_pki.files["service"]
    async with TLSServer(files.cert_file, files.key_file) as server, ConnectProxy() as proxy:
        module = _proxied(trusting, proxy)
        (result,) = await prober.probe(
            ProbeRequest(f"service.test:{server.port}", module, timeout=5, address="127.0.0.1"))
    assert (result.success, result.hostname_verified) == (True, True)
    assert proxy.requests == [f"CONNECT 127.0.0.1:{server.port} HTTP/1.1"]
    assert server.server_names == ["service.test"]


async def test_proxy_with_auth_file(prober, test_pki, trusting, tmp_path):
    auth = tmp_path / "proxy-auth"
    auth.write_text("probe:s3cret\n")
    files = test_pki.files["valid"]
    async with TLSServer(files.cert_file, files.key_file) as server, ConnectProxy("probe:s3cret") as proxy:
        (ok,) = await prober.probe(ProbeRequest(server.address, _proxied(trusting, proxy, auth), timeout=5))
        (denied,) = await prober.probe(ProbeRequest(server.address, _proxied(trusting, proxy), timeout=5))
    assert (ok.success, ok.chain_verified) == (True, True)
    assert (denied.success, denied.reason) == (False, Reason.PROXY)
    assert "407" in denied.detail and "s3cret" not in denied.detail


@pytest.mark.parametrize(
    ("answer", "detail"),
    [(b"SSH-2.0-nope\r\n\r\n", "garbage"), (b"HTTP/1.1 403 Forbidden\r\n\r\n", "refused CONNECT"),
     (b"HTTP/1.1 200 OK", "closed the connection")],
)
async def test_proxy_bad_answers(prober, trusting, answer, detail):
    async with ConnectProxy(answer=answer) as proxy:
        (result,) = await prober.probe(ProbeRequest("service.test:443", _proxied(trusting, proxy), timeout=5))
    assert (result.success, result.reason) == (False, Reason.PROXY)
    assert detail in result.detail


async def test_proxy_unreachable_upstream_is_proxy_reason(prober, trusting):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with ConnectProxy() as proxy:
        (result,) = await prober.probe(ProbeRequest(f"127.0.0.1:{port}", _proxied(trusting, proxy), timeout=5))
    assert (result.success, result.reason) == (False, Reason.PROXY)
    assert "502" in result.detail


async def test_proxy_refusing_connections_is_refused(prober, trusting):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    module = trusting.model_copy(update={"proxy": ProxySettings(url=f"http://127.0.0.1:{port}")})
    (result,) = await prober.probe(ProbeRequest("service.test:443", module, timeout=5))
    assert (result.success, result.reason) == (False, Reason.REFUSED)


async def test_proxy_auth_file_missing_is_proxy_reason(prober, trusting, tmp_path):
    async with ConnectProxy("a:b") as proxy:
        module = _proxied(trusting, proxy, tmp_path / "nope")
        (result,) = await prober.probe(ProbeRequest("service.test:443", module, timeout=5))
    assert (result.success, result.reason) == (False, Reason.PROXY)
    assert "auth_file" in result.detail


async def test_address_override_by_name_is_resolved_but_sni_stays(prober, resolver, test_pki, trusting):
    files = test_pki.files["service"]
    async with TLSServer(files.cert_file, files.key_file) as server:
        (result,) = await prober.probe(
            ProbeRequest(f"service.test:{server.port}", trusting, timeout=5, address="v4only.test"))
    assert (result.success, result.ip, result.hostname_verified) == (True, "127.0.0.1", True)
    assert resolver.calls == ["v4only.test"]
    assert server.server_names == ["service.test"]


async def test_slow_resolver_is_resolve_timeout(trusting):
    from exporter.probes.tls import TLSProber

    async def stuck(host, port):
        await asyncio.sleep(30)
        return []

    (result,) = await TLSProber(resolver=stuck).probe(ProbeRequest("slow.test:443", trusting, timeout=0.2))
    assert (result.success, result.reason) == (False, Reason.RESOLVE_TIMEOUT)
    assert 0.15 <= result.durations[Phase.RESOLVE] < 1.0


async def test_all_ips_share_one_deadline(prober, trusting):
    from certpager.tlsserver import MisbehavingPeer

    module = trusting.model_copy(update={"probe_all_ips": True})
    async with MisbehavingPeer("stall", host=("127.0.0.1", "::1")) as peer:
        started = asyncio.get_running_loop().time()
        results = await prober.probe(ProbeRequest(f"dual.test:{peer.port}", module, timeout=0.5))
        elapsed = asyncio.get_running_loop().time() - started
    assert [(r.ip, r.reason) for r in results] == [("::1", Reason.HANDSHAKE_TIMEOUT),
                                                   ("127.0.0.1", Reason.HANDSHAKE_TIMEOUT)]
    assert elapsed < 0.9  # concurrently, within the one timeout (not 2 x 0.5 s)
