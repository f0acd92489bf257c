"""The probe's pyOpenSSL handshake: old protocol versions, key exchange groups, encrypted client keys,
STARTTLS through the memory-BIO loop, and the mapping of OpenSSL errors to reasons."""

from __future__ import annotations

import contextlib
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvloop
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from certpager import pki
from certpager.tlsserver import TLSServer
from exporter.config import Module, Policies, StartTLSSettings, TLSSettings
from exporter.probes.base import Phase, Reason
from exporter.probes.tls import (
    TLSProber,
    build_context,
    classify_handshake_error,
    new_connection,
    offer_classical_groups,
)
from tests.exporter.conftest import LEAF_NOT_AFTER, ProbePKI, ts
from tests.exporter.test_probe_tls import (
    LineNegotiator,
    UpgradingServer,
    openssl_server,
    probe_one,
    serve,
)

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl program")


async def test_tls10_only_peer_is_observed(prober, test_pki, trusting, tmp_path):
    # OpenSSL 4.0 (the one pyOpenSSL uses) still speaks TLS 1.0 at @SECLEVEL=0: a policy must see it.
    rsa_inter = test_pki.chains["sha1"].intermediates[0]
    chain = pki.Chain(leaf=pki.make_leaf(rsa_inter, ("localhost",), key="rsa1024", hash="sha1"),
                      intermediates=(rsa_inter,), root=test_pki.root)
    files = chain.write(tmp_path)
    async with TLSServer(files.cert_file, files.key_file, max_version="TLS1.0") as server:
        result = await probe_one(prober, server.address, trusting, policies=Policies(min_tls_version="TLS1.2"))
    assert (result.success, result.tls_version, result.chain[0].key_bits) == (True, "TLS 1.0", 1024)
    assert result.policy_violations == {"min_tls_version": True}


@needs_openssl
async def test_min_version_above_the_peers_is_tls_alert(prober, test_pki):
    module = Module(tls=TLSSettings(min_version="TLS1.3", insecure_skip_verify=True))
    async with openssl_server(test_pki, "-tls1_2") as address:
        result = await probe_one(prober, address, module)
    assert (result.success, result.reason) == (False, Reason.TLS_ALERT)
    assert "PROTOCOL_VERSION" in result.detail


@needs_openssl
@pytest.mark.parametrize(("version_flag", "version"), [("-tls1_3", "TLS 1.3"), ("-tls1_2", "TLS 1.2")])
async def test_server_with_one_uncommon_group_completes(prober, test_pki, version_flag, version):
    # The client offers every classical group with one X25519 key share: a server that only accepts P-384 completes
    # (TLS 1.3 through a HelloRetryRequest, TLS 1.2 through the supported_groups list).
    module = Module(tls=TLSSettings(insecure_skip_verify=True))
    async with openssl_server(test_pki, "-groups", "secp384r1", version_flag) as address:
        result = await probe_one(prober, address, module)
    assert (result.success, result.tls_version, result.chain[0].not_after) == (True, version, ts(LEAF_NOT_AFTER))


def _encrypted_key(test_pki: ProbePKI, tmp_path: Path, password: bytes) -> Path:
    key = serialization.load_pem_private_key(test_pki.client.key_file.read_bytes(), None)
    path = tmp_path / "client-encrypted.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(password)))
    return path


def _client_module(test_pki: ProbePKI, key_file: Path, password_file: Path | None) -> Module:
    return Module(tls=TLSSettings(ca_file=test_pki.ca_file, max_version="TLS1.2", cert_file=test_pki.client.cert_file,
                                  key_file=key_file, key_password_file=password_file))


X25519, SECP256R1, SECP384R1, X25519MLKEM768 = 0x001D, 0x0017, 0x0018, 0x11EC


@dataclass
class ClientHello:
    suites: list[int]  # cipher_suites, in the client's order of preference
    supported_groups: list[int]
    key_shares: list[int]  # groups with a key share


def client_hello(context: SSL.Context) -> ClientHello:
    """The ClientHello a new connection sends, parsed as far as the tests need (RFC 8446 4.1.2)."""
    connection = new_connection(context, "example.test")
    with contextlib.suppress(SSL.WantReadError):
        connection.do_handshake()
    hello = connection.bio_read(65536)
    assert hello[0] == 22 and hello[5] == 1  # a handshake record holding a ClientHello
    at = 5 + 4 + 2 + 32  # record header, handshake header, legacy_version, random
    at += 1 + hello[at]  # legacy_session_id
    size = struct.unpack_from("!H", hello, at)[0]
    parsed = ClientHello([struct.unpack_from("!H", hello, at + 2 + i)[0] for i in range(0, size, 2)], [], [])
    at += 2 + size
    at += 1 + hello[at]  # legacy_compression_methods
    end = at + 2 + struct.unpack_from("!H", hello, at)[0]
    at += 2
    while at < end:
        kind, length = struct.unpack_from("!HH", hello, at)
        body = hello[at + 4:at + 4 + length]
        if kind == 10:  # supported_groups
            count = struct.unpack_from("!H", body)[0] // 2
            parsed.supported_groups = [struct.unpack_from("!H", body, 2 + 2 * i)[0] for i in range(count)]
        elif kind == 51:  # key_share: KeyShareEntry list
            pos = 2
            while pos < len(body):
                group, size = struct.unpack_from("!HH", body, pos)
                parsed.key_shares.append(group)
                pos += 4 + size
        at += 4 + length
    return parsed


def test_client_hello_offers_classical_groups_with_one_x25519_share():
    hello = client_hello(build_context(TLSSettings()))
    supported, shares = hello.supported_groups, hello.key_shares
    assert shares == [X25519]
    assert supported[:2] == [X25519, SECP256R1] and SECP384R1 in supported
    assert X25519MLKEM768 not in supported  # a server preferring it would answer with a HelloRetryRequest


def test_without_the_binding_the_openssl_defaults_stay():
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    before = client_hello(context)
    assert offer_classical_groups(context, lib=object()) is False
    assert client_hello(context).supported_groups == before.supported_groups


def handshake_in_memory(test_pki: ProbePKI) -> SSL.Connection:
    """The probe's client against pyOpenSSL's own server (OpenSSL 4.0 defaults), over memory BIOs,
    allowing exactly one round trip: the client's do_handshake raises WantReadError if the server
    asked for more (a HelloRetryRequest means a second ClientHello to send)."""
    files = test_pki.files["valid"]
    server_context = SSL.Context(SSL.TLS_SERVER_METHOD)
    server_context.use_certificate_chain_file(str(files.cert_file))
    server_context.use_privatekey_file(str(files.key_file))
    server = SSL.Connection(server_context, None)
    server.set_accept_state()
    client = new_connection(build_context(TLSSettings()), "localhost")
    with contextlib.suppress(SSL.WantReadError):
        client.do_handshake()
    server.bio_write(client.bio_read(65536))
    with contextlib.suppress(SSL.WantReadError):
        server.do_handshake()
    client.bio_write(server.bio_read(65536))
    client.do_handshake()
    return client


def test_a_server_preferring_post_quantum_groups_needs_no_retry(test_pki):
    # pyOpenSSL's own OpenSSL (4.0) prefers X25519MLKEM768 as a server: the probe's single X25519
    # share must be accepted in one round trip, with no HelloRetryRequest.
    assert handshake_in_memory(test_pki).get_protocol_version_name() == "TLSv1.3"


TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256 = 0x1301, 0x1302, 0x1303


def test_client_hello_prefers_aes_128_gcm_like_go():
    suites = client_hello(build_context(TLSSettings())).suites
    tls13 = [s for s in suites if s >> 8 == 0x13]
    assert tls13 == [TLS_AES_128_GCM_SHA256, TLS_CHACHA20_POLY1305_SHA256, TLS_AES_256_GCM_SHA384]
    assert len(suites) > 20  # the TLS 1.2 list is untouched: weak servers still complete


def test_a_server_following_the_clients_order_negotiates_aes_128(test_pki):
    # OpenSSL servers (nginx's default among them) pick the TLS 1.3 suite in the client's order.
    assert handshake_in_memory(test_pki).get_cipher_name() == "TLS_AES_128_GCM_SHA256"


def test_phase_durations_are_finer_than_uvloops_clock(test_pki):
    # uvloop's loop.time() moves in whole milliseconds; phases are timed with perf_counter instead.
    module = Module(tls=TLSSettings(insecure_skip_verify=True))

    async def probe_on_uvloop() -> list[float]:
        durations = []
        async with serve(test_pki, "valid") as server:
            for _ in range(3):
                result = await probe_one(TLSProber(), server.address, module)
                durations += [result.durations[Phase.CONNECT], result.durations[Phase.HANDSHAKE]]
        return durations

    durations = uvloop.run(probe_on_uvloop())
    assert all(d > 0 for d in durations)
    assert any(abs(d * 1000 - round(d * 1000)) > 1e-6 for d in durations)


async def test_encrypted_client_key_with_password_file(prober, test_pki, tmp_path):
    password_file = tmp_path / "password"
    password_file.write_text("s3cret\n")  # the trailing newline is not part of the password
    module = _client_module(test_pki, _encrypted_key(test_pki, tmp_path, b"s3cret"), password_file)
    async with serve(test_pki, "valid", client_ca_file=test_pki.client.ca_file) as server:
        result = await probe_one(prober, server.address, module)
    assert (result.success, result.chain_verified) == (True, True)
    assert server.client_subjects == ["probe-client"]


@pytest.mark.parametrize("password", [None, "wrong"])
async def test_encrypted_client_key_without_the_right_password_is_client_cert(prober, test_pki, tmp_path,
                                                                               password):
    password_file = None
    if password is not None:
        password_file = tmp_path / "password"
        password_file.write_text(password)
    module = _client_module(test_pki, _encrypted_key(test_pki, tmp_path, b"s3cret"), password_file)
    async with serve(test_pki, "valid", client_ca_file=test_pki.client.ca_file) as server:
        result = await probe_one(prober, server.address, module)
    assert (result.success, result.reason, server.connections) == (False, Reason.CLIENT_CERT, 0)
    assert result.detail.startswith(f"cannot load client certificate {test_pki.client.cert_file}: ")
    assert "s3cret" not in result.detail


async def test_starttls_handshake_runs_over_the_stream_with_tls12(prober, monkeypatch, test_pki):
    from exporter.probes import starttls

    monkeypatch.setattr(starttls, "NEGOTIATORS", {"smtp": LineNegotiator()})
    module = Module(kind="starttls", starttls=StartTLSSettings(protocol="smtp"),
                    tls=TLSSettings(ca_file=test_pki.ca_file, max_version="TLS1.2"))
    async with UpgradingServer(test_pki) as server:
        result = await probe_one(prober, server.address, module)
    assert (result.success, result.tls_version, result.chain_verified) == (True, "TLS 1.2", True)
    assert result.cipher is not None and result.cipher.startswith("ECDHE-")
    assert server.alpn_selected == [None]  # the server finished its handshake: it saw the client Finished


@pytest.mark.parametrize(("reason_text", "expected"), [
    ("wrong version number", Reason.NOT_TLS),
    ("http request", Reason.NOT_TLS),
    ("packet length too long", Reason.NOT_TLS),
    ("tlsv1 alert protocol version", Reason.TLS_ALERT),
    ("sslv3 alert handshake failure", Reason.TLS_ALERT),
    ("no protocols available", Reason.TLS_ALERT),
])
def test_openssl_reason_strings_are_classified(reason_text, expected):
    reason, detail = classify_handshake_error(SSL.Error([("SSL routines", "", reason_text)]))
    assert reason == expected
    assert reason_text.upper().replace(" ", "_") in detail


@pytest.mark.parametrize("exc", [SSL.SysCallError(-1, "Unexpected EOF"), SSL.ZeroReturnError(),
                                 ConnectionResetError("reset"),
                                 # OpenSSL 3 on a socket: the peer's FIN mid-handshake is an SSL error
                                 SSL.Error([("SSL routines", "", "unexpected eof while reading")])])
def test_closing_peers_are_connection_closed(exc):
    assert classify_handshake_error(exc)[0] == Reason.CONNECTION_CLOSED
