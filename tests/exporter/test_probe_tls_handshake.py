"""The probe's pyOpenSSL handshake: old protocol versions, key exchange groups, encrypted client keys,
STARTTLS through the memory-BIO loop, and the mapping of OpenSSL errors to reasons."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from certpager import pki
from certpager.tlsserver import TLSServer
from exporter.config import Module, Policies, StartTLSSettings, TLSSettings
from exporter.probes.base import Reason
from exporter.probes.tls import classify_handshake_error
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
    # The client keeps OpenSSL's default groups: a server that only accepts P-384 still completes
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
                                 ConnectionResetError("reset")])
def test_closing_peers_are_connection_closed(exc):
    assert classify_handshake_error(exc)[0] == Reason.CONNECTION_CLOSED
