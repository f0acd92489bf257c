"""Certificate reading never guesses: self-signed by signature, explicit EC sizes, one bad certificate
is an error for itself alone, malformed DER names its byte offset."""

from __future__ import annotations

import base64
import subprocess

import pytest
from cryptography import x509

from certpager import pki
from exporter import certs, der
from exporter.config import Module
from exporter.probes.base import Position, ProbeRequest
from exporter.probes.file import FileProber
from tests.exporter import derkit


def pem(der_bytes: bytes, label: str = "CERTIFICATE") -> bytes:
    body = base64.encodebytes(der_bytes).replace(b"\n", b"")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    name = label.encode()
    return b"-----BEGIN " + name + b"-----\n" + b"\n".join(lines) + b"\n-----END " + name + b"-----\n"


@pytest.mark.parametrize("hash_name", ["sha1", "md5", "sha256"])
def test_self_signed_is_decided_by_the_signature_whatever_the_algorithm(hash_name):
    # Two CAs named "Same CA": one signs itself, the other is signed by the first (another key).
    own = pki.make_root("Same CA", key="rsa2048", hash=hash_name, slot=41)
    other = pki.issue(pki.CertSpec(cn="Same CA", key="rsa2048", hash=hash_name, slot=42), own, ca=True)
    chain = certs.read_chain([pki.make_leaf(other).der, other.der, own.der])
    _, middle, top = chain.infos
    assert (middle.self_signed, middle.position) == (False, Position.INTERMEDIATE)
    assert (top.self_signed, top.position) == (True, Position.ROOT)
    assert certs.signs_itself(own.der) and not certs.signs_itself(other.der)


def test_an_explicit_curve_key_reports_its_size():
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384",
         "-pkeyopt", "ec_param_enc:explicit", "-nodes", "-keyout", "/dev/null", "-subj", "/CN=explicit",
         "-days", "2", "-outform", "DER"], capture_output=True, check=True)
    fields = der.certificate_fields(made.stdout)
    assert (fields.key_type, fields.key_bits) == ("ec", 384)
    assert certs.read_chain([made.stdout]).infos[0].self_signed is True


def test_v2_certificates_are_read(tmp_path):
    root = pki.make_root("v2 root", slot=43)
    v2 = derkit.edit(root.cert, root.key, derkit.as_v2)
    with pytest.raises(x509.InvalidVersion):  # cryptography refuses it; OpenSSL and Go read it
        x509.load_der_x509_certificate(v2)
    (info,) = certs.read_chain([v2]).infos
    assert (info.subject_cn, info.self_signed, info.position) == ("v2 root", True, Position.LEAF)


def test_an_unreadable_certificate_loses_only_its_own_series():
    root = pki.make_root("dup root", slot=44)
    inter = pki.make_intermediate(root, "dup intermediate", slot=45)
    leaf = pki.make_leaf(inter)
    duplicated = derkit.edit(inter.cert, root.key, derkit.with_duplicate_extension)
    chain = certs.read_chain([leaf.der, duplicated, root.der])
    assert [(i.index, i.subject_cn) for i in chain.infos] == [(0, "localhost"), (2, "dup root")]
    (error,) = chain.errors
    assert error.startswith("certificate 1 cannot be read: extension 2.5.29.19 appears twice (at byte ")


async def test_a_file_keeps_its_good_certificates_beside_a_bad_one(tmp_path):
    root = pki.make_root("file root", slot=46)
    v2 = derkit.edit(root.cert, root.key, derkit.as_v2)
    duplicated = derkit.edit(root.cert, root.key, derkit.with_duplicate_extension)
    leaf = pki.make_leaf(root)
    (tmp_path / "a.pem").write_bytes(leaf.cert_pem + pem(duplicated) + pem(v2))
    (tmp_path / "b.der").write_bytes(v2)
    (tmp_path / "c.pem").write_bytes(pem(leaf.der + root.der) + root.cert_pem)  # DER after the DER
    request = ProbeRequest(target=str(tmp_path), module=Module(kind="file"), timeout=5)
    a, b, c = await FileProber().probe(request)
    assert a.success and [(i.index, i.subject_cn) for i in a.chain] == [(0, "localhost"), (2, "file root")]
    assert a.detail.startswith("certificate #1 is malformed: extension 2.5.29.19 appears twice")
    assert b.success and b.chain[0].subject_cn == "file root"
    assert c.success and [i.index for i in c.chain] == [1]
    assert c.detail == f"certificate #0 is malformed: {len(root.der)} bytes after the certificate, at byte " \
                       f"{len(leaf.der)}"


def _mutated(original: bytes, at: bytes, replacement: bytes) -> bytes:
    assert original.count(at) >= 1
    return original.replace(at, replacement, 1)


def test_malformed_der_is_an_error_naming_the_offset():
    leaf = pki.make_leaf(pki.make_root("mutation root", slot=47), cn="m")
    data = leaf.der
    fields = derkit.tbs_fields(leaf.cert)
    serial = fields[1]
    # A non-minimal length: the serial's length in the long form (the containers' lengths are right).
    longer = derkit.sign_tbs([fields[0], b"\x02\x81" + serial[1:], *fields[2:]], leaf.key)
    with pytest.raises(der.DerError, match=r"a non-minimal length of the element at byte 13"):
        der.certificate_fields(longer)
    # A non-minimal INTEGER (a leading zero before a positive byte).
    padded = b"\x02" + bytes([serial[1] + 1]) + b"\x00" + serial[2:]
    with pytest.raises(der.DerError, match=r"a non-minimal INTEGER at byte \d+"):
        der.certificate_fields(derkit.sign_tbs([fields[0], padded, *fields[2:]], leaf.key))
    # A damaged OID tag in the subject's attribute: an error, never subject_cn="".
    cn_oid = bytes.fromhex("0603550403")
    damaged = data.replace(cn_oid + b"\x0c\x01m", b"\x07" + cn_oid[1:] + b"\x0c\x01m")
    assert damaged != data
    with pytest.raises(der.DerError, match=r"expected an attribute type \(OID\) at byte \d+"):
        der.certificate_fields(damaged)


def test_a_leaf_without_san_matches_its_cn_for_openssl_clients_only():
    from tests.exporter import pki_shapes

    root = pki_shapes.make("cn root", None, ca=True)
    no_san = certs.read_chain([pki_shapes.make("cn-only.test", root, ca=False, names=[]).der]).leaf
    with_san = certs.read_chain([pki_shapes.make("cn-only.test", root, ca=False, names=["other.test"]).der]).leaf
    assert no_san is not None and with_san is not None
    assert certs.match_hostname(no_san, "cn-only.test", cn_fallback=True)  # OpenSSL's X509_check_host
    assert not certs.match_hostname(no_san, "cn-only.test")  # browsers, Go, Python's ssl
    assert not certs.match_hostname(with_san, "cn-only.test", cn_fallback=True)  # a SAN: the CN is never used
    assert not certs.match_hostname(no_san, "127.0.0.1", cn_fallback=True)


@pytest.mark.parametrize(("tls", "message"), [
    ({"security_level": 6}, "less than or equal to 5"),
    ({"security_level": -1}, "greater than or equal to 0"),
    ({"verify_profile": "browser"}, "'openssl' or 'webpki'"),
])
def test_verify_settings_are_validated(tls, message):
    with pytest.raises(ValueError, match=message):
        Module.model_validate({"tls": tls})


async def test_a_peer_sending_an_unreadable_intermediate_keeps_the_other_series(tmp_path):
    from certpager.tlsserver import TLSServer
    from exporter.config import TLSSettings
    from exporter.probes.tls import TLSProber
    from tests.exporter import pki_shapes

    root = pki_shapes.make("peer dup root", None, ca=True)
    inter = pki_shapes.make("peer dup int", root, ca=True, edit=derkit.with_duplicate_extension)
    leaf = pki_shapes.make("peer.test", inter, ca=False)
    (tmp_path / "chain.pem").write_bytes(leaf.pem + inter.pem)
    (tmp_path / "key.pem").write_bytes(leaf.key_pem)
    (tmp_path / "ca.pem").write_bytes(root.pem)
    module = Module(tls=TLSSettings(server_name="peer.test", ca_file=tmp_path / "ca.pem"))
    async with TLSServer(tmp_path / "chain.pem", tmp_path / "key.pem") as server:
        (result,) = await TLSProber().probe(ProbeRequest(target=server.address, module=module, timeout=5))
    assert result.success and [(c.index, c.subject_cn) for c in result.chain] == [(0, "peer.test")]
    assert result.hostname_verified is True
    assert result.chain_verified is False  # OpenSSL does not take it as the issuer either
    assert "certificate 1 cannot be read: extension 2.5.29.19 appears twice" in result.detail
