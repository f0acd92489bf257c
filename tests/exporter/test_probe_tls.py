"""The TLS probe against real loopback TLS servers and misbehaving peers."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from certpager import pki
from certpager.tlsserver import MisbehavingPeer, TLSServer
from exporter import certs
from exporter.config import Module, Policies, StartTLSSettings, TLSSettings
from exporter.probes import PROBERS, file, get_probe, tls
from exporter.probes.base import Phase, Position, ProbeRequest, ProbeResult, Reason, VerifyReason
from exporter.probes.tls import TLSProber
from tests.exporter.conftest import (
    DAY,
    LEAF_NOT_AFTER,
    LEAF_NOT_BEFORE,
    NOW,
    FakeResolver,
    ProbePKI,
    open_fds,
    ts,
)


async def probe_one(prober: TLSProber, target: str, module: Module, timeout: float = 5.0, **kw) -> ProbeResult:
    results = await prober.probe(ProbeRequest(target=target, module=module, timeout=timeout, **kw))
    assert len(results) == 1
    return results[0]


def serve(test_pki: ProbePKI, name: str, **kw) -> TLSServer:
    files = test_pki.files[name]
    return TLSServer(files.cert_file, files.key_file, **kw)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_valid_chain_is_read_and_trusted(prober, test_pki, trusting):
    async with serve(test_pki, "valid") as server:
        result = await probe_one(prober, f"localhost:{server.port}", trusting)
    assert (result.success, result.reason, result.ip) == (True, None, "127.0.0.1")
    leaf, inter = result.chain
    assert (leaf.position, leaf.index, inter.position, inter.index) == (Position.LEAF, 0, Position.INTERMEDIATE, 1)
    assert leaf.not_after == ts(LEAF_NOT_AFTER) and leaf.not_before == ts(LEAF_NOT_BEFORE)
    assert inter.not_after == ts(NOW + 2000 * DAY)
    assert (leaf.subject_cn, leaf.issuer_cn) == ("localhost", "certpager Test Intermediate")
    assert (inter.subject_cn, inter.issuer_cn) == ("certpager Test Intermediate", "certpager Test Root")
    assert (leaf.key_type, leaf.key_bits, leaf.signature_algorithm) == ("ec", 256, "ecdsa-with-SHA256")
    assert leaf.sans == ("localhost", "127.0.0.1", "::1")
    assert leaf.serial == format(test_pki.chains["valid"].leaf.cert.serial_number, "x")
    assert (result.chain_verified, result.verify_reason, result.hostname_verified) == (True, None, True)
    assert result.tls_version == "TLS 1.3" and result.cipher and result.cipher.startswith("TLS_")
    assert set(result.durations) == {Phase.RESOLVE, Phase.CONNECT, Phase.HANDSHAKE}
    assert result.earliest_expiry == ts(LEAF_NOT_AFTER)
    assert result.policy_violations == {}
    assert server.server_names == ["localhost"]


async def test_a_verified_probe_hashes_each_certificate_once(prober, test_pki, trusting, monkeypatch):
    # The chain is parsed once and handed to the verifier and the hostname match: no certificate is
    # hashed again to find it in the parse cache (it used to be, up to three times per probe).
    hashed: list[int] = []
    real_sha256 = certs.hashlib.sha256

    def counting_sha256(data: bytes) -> object:
        hashed.append(len(data))
        return real_sha256(data)

    monkeypatch.setattr(certs.hashlib, "sha256", counting_sha256)
    async with serve(test_pki, "valid") as server:
        result = await probe_one(prober, f"localhost:{server.port}", trusting)
    assert (result.chain_verified, result.hostname_verified) == (True, True)
    assert hashed == [len(c.der) for c in test_pki.chains["valid"].presented()]


async def test_root_sent_by_the_server_is_position_root(prober, test_pki, trusting, tmp_path):
    chain = test_pki.chains["valid"]
    (tmp_path / "full.crt").write_bytes(chain.chain_pem(root=True))
    async with TLSServer(tmp_path / "full.crt", test_pki.files["valid"].key_file) as server:
        result = await probe_one(prober, server.address, trusting)
    assert [(c.position, c.index) for c in result.chain] == [
        (Position.LEAF, 0), (Position.INTERMEDIATE, 1), (Position.ROOT, 2)]
    assert result.chain[2].not_after == ts(NOW + 3000 * DAY)
    assert result.chain_verified is True


async def test_rsa_chain(prober, test_pki, trusting):
    async with serve(test_pki, "rsa") as server:
        result = await probe_one(prober, server.address, trusting)
    leaf, inter = result.chain
    assert (leaf.key_type, leaf.key_bits, leaf.signature_algorithm) == ("rsa", 2048, "sha256WithRSAEncryption")
    assert (inter.key_type, inter.key_bits, inter.signature_algorithm) == ("rsa", 2048, "ecdsa-with-SHA256")
    assert result.chain_verified is True


@pytest.mark.parametrize(
    ("name", "reason", "leaf_not_after"),
    [
        ("expired", VerifyReason.EXPIRED, NOW - 2 * DAY),
        ("not_yet_valid", VerifyReason.NOT_YET_VALID, NOW + 90 * DAY),
        ("self_signed", VerifyReason.SELF_SIGNED, LEAF_NOT_AFTER),
    ],
)
async def test_untrusted_chains_still_export_dates(prober, test_pki, trusting, name, reason, leaf_not_after):
    async with serve(test_pki, name) as server:
        result = await probe_one(prober, server.address, trusting)
    assert (result.success, result.chain_verified, result.verify_reason) == (True, False, reason)
    assert result.chain[0].not_after == ts(leaf_not_after)
    assert result.hostname_verified is True  # the name is right; trust is a separate verdict


async def test_self_signed_leaf_is_alone_and_marked(prober, test_pki, trusting):
    async with serve(test_pki, "self_signed") as server:
        result = await probe_one(prober, server.address, trusting)
    (leaf,) = result.chain
    assert (leaf.position, leaf.self_signed, leaf.subject_cn, leaf.issuer_cn) == (
        Position.LEAF, True, "localhost", "localhost")


async def test_wrong_hostname_is_trusted_but_not_verified(prober, test_pki, trusting):
    async with serve(test_pki, "wrong_name") as server:
        result = await probe_one(prober, f"localhost:{server.port}", trusting)
    assert (result.chain_verified, result.verify_reason, result.hostname_verified) == (True, None, False)
    assert result.chain[0].sans == ("other.example",)


async def test_missing_intermediate_is_reported(prober, test_pki, trusting):
    async with TLSServer.for_files(test_pki.files["valid"], intermediates=False) as server:
        result = await probe_one(prober, server.address, trusting)
    assert len(result.chain) == 1
    assert (result.chain_verified, result.verify_reason) == (False, VerifyReason.MISSING_INTERMEDIATE)
    assert result.detail == ("certificate 0 (CN=localhost): unable to get local issuer certificate "
                             "(OpenSSL error 20 at depth 0)")
    assert result.chain[0].not_after == ts(LEAF_NOT_AFTER)


async def test_expired_intermediate_behind_valid_leaf(prober, test_pki, trusting):
    async with serve(test_pki, "expired_intermediate") as server:
        result = await probe_one(prober, server.address, trusting)
    leaf, inter = result.chain
    assert (leaf.not_after, inter.not_after) == (ts(LEAF_NOT_AFTER), ts(NOW - 5 * DAY))
    assert inter.subject_cn == "Expired Intermediate"
    assert (result.chain_verified, result.verify_reason) == (False, VerifyReason.EXPIRED)
    assert result.earliest_expiry == ts(NOW - 5 * DAY)


async def test_system_store_does_not_trust_the_test_root(prober, test_pki):
    async with serve(test_pki, "valid") as server:
        result = await probe_one(prober, server.address, Module())
    assert (result.success, result.chain_verified, result.verify_reason) == (True, False, VerifyReason.UNKNOWN_ISSUER)


async def test_insecure_skip_verify_gives_no_verdicts(prober, test_pki):
    module = Module(tls=TLSSettings(insecure_skip_verify=True))
    async with serve(test_pki, "expired") as server:
        result = await probe_one(prober, server.address, module)
    assert (result.success, result.chain_verified, result.hostname_verified) == (True, None, None)
    assert result.chain[0].not_after == ts(NOW - 2 * DAY)


async def test_stalling_peer_costs_one_timeout_and_leaks_nothing(prober, trusting):
    async with MisbehavingPeer("stall") as peer:
        before = open_fds()
        started = time.monotonic()
        result = await probe_one(prober, peer.address, trusting, timeout=0.5)
        elapsed = time.monotonic() - started
        assert (result.success, result.reason) == (False, Reason.HANDSHAKE_TIMEOUT)
        assert 0.5 <= elapsed < 1.5
        assert 0.45 <= result.durations[Phase.HANDSHAKE] < 1.0
        for _ in range(100):  # bounded: the peer sees EOF and closes its side
            if open_fds() == before:
                break
            await asyncio.sleep(0.02)
        assert open_fds() == before


async def test_cancelled_probe_leaks_nothing(prober, trusting):
    async with MisbehavingPeer("stall") as peer:
        before = open_fds()
        task = asyncio.create_task(prober.probe(ProbeRequest(peer.address, trusting, timeout=30)))
        for _ in range(100):
            if peer.connections:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            if open_fds() == before:
                break
            await asyncio.sleep(0.02)
        assert open_fds() == before


@pytest.mark.parametrize(("mode", "reason"), [("garbage", Reason.NOT_TLS), ("close", Reason.CONNECTION_CLOSED)])
async def test_misbehaving_peers(prober, trusting, mode, reason):
    async with MisbehavingPeer(mode) as peer:
        result = await probe_one(prober, peer.address, trusting, timeout=2)
    assert (result.success, result.reason, result.chain) == (False, reason, ())
    assert result.ip == "127.0.0.1"


async def test_refused_port(prober, trusting):
    port = free_port()
    result = await probe_one(prober, f"127.0.0.1:{port}", trusting)
    assert (result.success, result.reason, result.ip) == (False, Reason.REFUSED, "127.0.0.1")
    assert Phase.HANDSHAKE not in result.durations


async def test_unresolvable_name_never_leaves_the_machine(prober, resolver: FakeResolver, trusting):
    result = await probe_one(prober, "nothing-here.invalid:443", trusting)
    assert (result.success, result.reason, result.ip) == (False, Reason.DNS, None)
    assert resolver.calls == ["nothing-here.invalid"]
    assert set(result.durations) == {Phase.RESOLVE}


async def test_ipv6_loopback(prober, test_pki, trusting):
    async with serve(test_pki, "valid", host="::1") as server:
        result = await probe_one(prober, server.address, trusting)
    assert server.address == f"[::1]:{server.port}"
    assert (result.success, result.ip, result.chain_verified, result.hostname_verified) == (True, "::1", True, True)
    assert server.server_names == [None]  # never SNI for an IP literal


async def test_probe_all_ips_probes_each_address(prober, test_pki, trusting):
    module = trusting.model_copy(update={"probe_all_ips": True})
    async with serve(test_pki, "valid", host=("127.0.0.1", "::1")) as server:
        results = await prober.probe(ProbeRequest(f"dual.test:{server.port}", module, timeout=5))
    assert [(r.ip, r.success) for r in results] == [("::1", True), ("127.0.0.1", True)]
    assert all(r.chain[0].not_after == ts(LEAF_NOT_AFTER) for r in results)


async def test_probe_all_ips_shows_the_one_bad_node(prober, test_pki, trusting):
    module = trusting.model_copy(update={"probe_all_ips": True})
    async with serve(test_pki, "valid", host="127.0.0.1") as server:
        results = await prober.probe(ProbeRequest(f"dual.test:{server.port}", module, timeout=5))
    assert [(r.ip, r.success, r.reason) for r in results] == [("::1", False, Reason.REFUSED),
                                                              ("127.0.0.1", True, None)]


async def test_connect_address_override_keeps_name_for_sni_and_verify(prober, resolver, test_pki, trusting):
    async with serve(test_pki, "service") as server:
        result = await probe_one(prober, f"service.test:{server.port}", trusting, address="127.0.0.1")
    assert (result.success, result.ip, result.hostname_verified, result.chain_verified) == (
        True, "127.0.0.1", True, True)
    assert server.server_names == ["service.test"]
    assert resolver.calls == []  # the override is an IP: nothing resolved


async def test_server_name_setting_overrides_sni(prober, test_pki):
    module = Module(tls=TLSSettings(ca_file=test_pki.ca_file, server_name="api.wild.test"))
    async with serve(test_pki, "wildcard") as server:
        result = await probe_one(prober, server.address, module)
    assert server.server_names == ["api.wild.test"]
    assert (result.hostname_verified, result.chain_verified) == (True, True)


async def test_max_version_and_min_tls_version_policy(prober, test_pki, trusting):
    async with serve(test_pki, "valid", max_version="TLS1.2") as server:
        old = await probe_one(prober, server.address, trusting, policies=Policies(min_tls_version="TLS1.3"))
        ok = await probe_one(prober, server.address, trusting, policies=Policies(min_tls_version="TLS1.2"))
    assert (old.tls_version, old.policy_violations) == ("TLS 1.2", {"min_tls_version": True})
    assert (ok.tls_version, ok.policy_violations) == ("TLS 1.2", {"min_tls_version": False})


@contextlib.asynccontextmanager
async def openssl_server(test_pki: ProbePKI, *args: str):
    """Debian's ``openssl s_server`` on loopback: unlike asyncio, it sends its alerts before closing."""
    files = test_pki.files["valid"]
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_server", "-accept", "127.0.0.1:0", "-cert", str(files.cert_file),
        "-key", str(files.key_file), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        line = b""
        for _ in range(20):  # bounded: the ACCEPT line comes first
            line = await asyncio.wait_for(proc.stdout.readline(), 5)
            if line.startswith(b"ACCEPT"):
                break
        yield line.decode().split()[1]
    finally:
        proc.kill()
        await proc.wait()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl program")
async def test_no_common_version_is_tls_alert(prober, test_pki):
    module = Module(tls=TLSSettings(max_version="TLS1.2", insecure_skip_verify=True))
    async with openssl_server(test_pki, "-tls1_3") as address:
        result = await probe_one(prober, address, module)
    assert (result.success, result.reason) == (False, Reason.TLS_ALERT)
    assert "PROTOCOL_VERSION" in result.detail.upper()


def _mtls_module(test_pki: ProbePKI, with_cert: bool, max_version: str = "TLS1.2") -> Module:
    client = test_pki.client
    settings = {"cert_file": client.cert_file, "key_file": client.key_file} if with_cert else {}
    return Module(tls=TLSSettings(ca_file=test_pki.ca_file, max_version=max_version, **settings))


async def test_mtls_with_client_cert(prober, test_pki):
    async with serve(test_pki, "valid", client_ca_file=test_pki.client.ca_file) as server:
        result = await probe_one(prober, server.address, _mtls_module(test_pki, True))
    assert (result.success, result.chain_verified) == (True, True)
    assert server.client_subjects == ["probe-client"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl program")
async def test_mtls_without_client_cert_tls12_is_alert(prober, test_pki):
    args = ("-Verify", "1", "-CAfile", str(test_pki.client.ca_file), "-tls1_2")
    async with openssl_server(test_pki, *args) as address:
        result = await probe_one(prober, address, _mtls_module(test_pki, False))
    assert (result.success, result.reason) == (False, Reason.TLS_ALERT)


async def test_mtls_without_client_cert_tls13_still_reads_the_chain(prober, test_pki):
    # In TLS 1.3 the server judges the client's certificate after the client's handshake is done,
    # so the server's chain is read (documented in docs/probing.md).
    async with serve(test_pki, "valid", client_ca_file=test_pki.client.ca_file) as server:
        result = await probe_one(prober, server.address, _mtls_module(test_pki, False, "TLS1.3"))
    assert (result.success, result.chain[0].not_after) == (True, ts(LEAF_NOT_AFTER))


async def test_unreadable_client_cert_is_client_cert_reason(prober, test_pki, tmp_path: Path):
    module = Module(tls=TLSSettings(cert_file=tmp_path / "missing.crt", key_file=tmp_path / "missing.key"))
    async with serve(test_pki, "valid") as server:
        result = await probe_one(prober, server.address, module)
    assert (result.success, result.reason, server.connections) == (False, Reason.CLIENT_CERT, 0)


async def test_bad_target_is_a_result_not_an_exception(prober, trusting):
    result = await probe_one(prober, "no-port-here", trusting)
    assert (result.success, result.reason) == (False, Reason.DNS)
    assert "no port" in result.detail


async def test_starttls_protocol_without_negotiator_is_unsupported(prober, monkeypatch, trusting):
    from exporter.probes import starttls

    monkeypatch.setattr(starttls, "NEGOTIATORS", {}, raising=False)
    module = Module(kind="starttls", starttls=StartTLSSettings(protocol="smtp"), tls=trusting.tls)
    result = await probe_one(prober, "127.0.0.1:25", module)
    assert (result.success, result.reason) == (False, Reason.STARTTLS_UNSUPPORTED)


async def test_registry():
    assert get_probe("tls") is tls.probe and get_probe("starttls") is tls.probe and get_probe("file") is file.probe
    assert set(PROBERS) == {"tls", "starttls", "file"}


# --- the STARTTLS pipeline (dialogues themselves are tested with the negotiators) -------------


class LineNegotiator:
    """A toy dialogue: send ``UPGRADE``, expect ``OK``; anything else is a refusal."""

    def __init__(self, alpn=None) -> None:
        self.alpn_protocols = alpn
        self.hosts: list[str] = []

    async def negotiate(self, sock, settings, host):
        from exporter.probes.starttls.base import StartTLSError

        self.hosts.append(host)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, b"UPGRADE\r\n")
        line = await loop.sock_recv(sock, 4)  # exactly "OK\r\n": the TLS bytes stay in the socket
        if not line:  # end of stream, as the real negotiators report it
            raise EOFError("server closed the connection")
        if line != b"OK\r\n":
            raise StartTLSError(Reason.STARTTLS_REFUSED, f"server said {line!r}")


class UpgradingServer:
    """Plaintext ``UPGRADE``/``OK`` then TLS on the same connection (``answer`` b"" stalls).

    A blocking server in a thread: asyncio's server-side start_tls loses the SSL object when the
    client aborts right after the handshake (as the probe does), and the test needs the chosen ALPN.
    """

    def __init__(self, test_pki: ProbePKI, answer: bytes = b"OK\r\n", alpn=()) -> None:
        from certpager.tlsserver import server_context

        files = test_pki.files["valid"]
        self.context = server_context(files.cert_file, files.key_file, alpn=alpn)
        self.answer = answer
        self.alpn_selected: list[str | None] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(5)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve_one, daemon=True)

    async def __aenter__(self):
        self._thread.start()
        return self

    async def __aexit__(self, *exc):
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 10)
        self._listener.close()

    def _serve_one(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(64)
                if not self.answer:
                    conn.recv(64)  # stall: returns when the client leaves (or after 5 s)
                    return
                conn.sendall(self.answer)
                if self.answer == b"OK\r\n":
                    with self.context.wrap_socket(conn, server_side=True) as tls_conn:
                        self.alpn_selected.append(tls_conn.selected_alpn_protocol())
            except OSError:
                pass


def _starttls_module(trusting: Module) -> Module:
    return Module(kind="starttls", starttls=StartTLSSettings(protocol="smtp"), tls=trusting.tls)


async def test_starttls_pipeline_reads_the_chain(prober, monkeypatch, test_pki, trusting):
    from exporter.probes import starttls

    negotiator = LineNegotiator(alpn=["postgresql"])
    monkeypatch.setattr(starttls, "NEGOTIATORS", {"smtp": negotiator})
    async with UpgradingServer(test_pki, alpn=["postgresql"]) as server:
        result = await probe_one(prober, server.address, _starttls_module(trusting))
    assert (result.success, result.chain_verified, result.chain[0].not_after) == (True, True, ts(LEAF_NOT_AFTER))
    assert set(result.durations) == {Phase.RESOLVE, Phase.CONNECT, Phase.STARTTLS, Phase.HANDSHAKE}
    assert negotiator.hosts == ["127.0.0.1"]
    assert server.alpn_selected == ["postgresql"]  # the negotiator's ALPN reached the handshake


async def test_starttls_refusal_is_the_negotiators_reason(prober, monkeypatch, test_pki, trusting):
    from exporter.probes import starttls

    monkeypatch.setattr(starttls, "NEGOTIATORS", {"smtp": LineNegotiator()})
    async with UpgradingServer(test_pki, answer=b"NO\r\n") as server:
        result = await probe_one(prober, server.address, _starttls_module(trusting))
    assert (result.success, result.reason, result.detail) == (False, Reason.STARTTLS_REFUSED, "server said b'NO\\r\\n'")


async def test_starttls_stall_is_starttls_timeout_and_leaks_nothing(prober, monkeypatch, test_pki, trusting):
    from exporter.probes import starttls

    monkeypatch.setattr(starttls, "NEGOTIATORS", {"smtp": LineNegotiator()})
    async def stalled_probe():
        async with UpgradingServer(test_pki, answer=b"") as server:
            result = await probe_one(prober, server.address, _starttls_module(trusting), timeout=0.3)
        assert (result.success, result.reason) == (False, Reason.STARTTLS_TIMEOUT)  # server gone: its side closed

    await stalled_probe()  # uvloop opens a descriptor of its own (/dev/null) on first use: count after it
    before = open_fds()
    for _ in range(3):
        await stalled_probe()
    for _ in range(100):
        if open_fds() == before:
            break
        await asyncio.sleep(0.02)
    assert open_fds() == before


async def test_starttls_peer_closing_is_connection_closed(prober, monkeypatch, trusting):
    from exporter.probes import starttls

    monkeypatch.setattr(starttls, "NEGOTIATORS", {"smtp": LineNegotiator()})
    async with MisbehavingPeer("close") as peer:
        result = await probe_one(prober, peer.address, _starttls_module(trusting))
    assert (result.success, result.reason) == (False, Reason.CONNECTION_CLOSED)


async def test_no_fd_leak_over_every_outcome(prober, test_pki, trusting):
    async with serve(test_pki, "valid") as ok, MisbehavingPeer("garbage") as garbage, \
            MisbehavingPeer("close") as closing, MisbehavingPeer("stall") as stall:
        targets = [ok.address, garbage.address, closing.address, stall.address, f"127.0.0.1:{free_port()}",
                   "gone.invalid:443"]
        before = open_fds()
        for _ in range(5):
            results = await asyncio.gather(*(prober.probe(ProbeRequest(t, trusting, timeout=0.3)) for t in targets))
            reasons = [r[0].reason for r in results]
            assert reasons == [None, Reason.NOT_TLS, Reason.CONNECTION_CLOSED, Reason.HANDSHAKE_TIMEOUT,
                               Reason.REFUSED, Reason.DNS]
        for _ in range(100):  # bounded: servers close their side once they see EOF
            if open_fds() == before:
                break
            await asyncio.sleep(0.02)
        assert open_fds() == before


async def test_weak_server_is_observed_and_reported(prober, test_pki, trusting, tmp_path):
    # A 1024-bit RSA leaf signed with SHA-1, over TLS 1.1: the handshake must still complete so that
    # the policies can say what is wrong.
    rsa_inter = test_pki.chains["sha1"].intermediates[0]
    chain = pki.Chain(leaf=pki.make_leaf(rsa_inter, ("localhost",), key="rsa1024", hash="sha1"),
                      intermediates=(rsa_inter,), root=test_pki.root)
    files = chain.write(tmp_path)
    policies = Policies(min_rsa_bits=2048, forbidden_signature_algorithms=["sha1"], min_tls_version="TLS1.2")
    async with TLSServer(files.cert_file, files.key_file, max_version="TLS1.1") as server:
        result = await probe_one(prober, server.address, trusting, policies=policies)
    assert (result.success, result.tls_version, result.chain[0].key_bits) == (True, "TLS 1.1", 1024)
    assert result.policy_violations == {"min_rsa_bits": True, "forbidden_signature_algorithm": True,
                                        "min_tls_version": True}
    # An OpenSSL client at security level 2 refuses the 1024-bit leaf first.
    assert (result.chain_verified, result.verify_reason) == (False, VerifyReason.WEAK_KEY)
    assert "certificate 0 (CN=localhost): its RSA key of 1024 bits is about 80 bits strong" in result.detail
