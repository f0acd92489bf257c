"""The ``file`` probe kind: PEM bundles, DER, PKCS#12, globs over a changing directory, and every
way a file can fail (each a failed result with its reason, never an exception)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    pkcs7,
    pkcs12,
)

from certpager import pki
from exporter.config import FileSettings, Module, Policies
from exporter.probes import get_probe
from exporter.probes.base import Position, ProbeRequest, ProbeResult, Reason
from exporter.probes.file import FileProber
from tests.exporter.conftest import LEAF_NOT_AFTER, NOW, ProbePKI, ts

DAY = 86400.0


def request(target: Path | str, password_file: Path | None = None, **kw) -> ProbeRequest:
    module = Module(kind="file", file=FileSettings(password_file=password_file))
    return ProbeRequest(target=str(target), module=module, timeout=5.0, **kw)


def positions(result) -> list[tuple[int, Position, str]]:
    return [(c.index, c.position, c.subject_cn) for c in result.chain]


@pytest.fixture
def prober() -> FileProber:
    return FileProber(clock=lambda: 1000.0)


@pytest.fixture
def chain(test_pki: ProbePKI) -> pki.Chain:
    return test_pki.chains["valid"]


FULL = [(0, Position.LEAF, "localhost"), (1, Position.INTERMEDIATE, "certpager Test Intermediate"),
        (2, Position.ROOT, "certpager Test Root")]


async def test_pem_bundle_in_file_order_ignoring_keys(tmp_path, chain, prober):
    path = tmp_path / "bundle.txt"  # the extension says nothing
    path.write_bytes(chain.leaf.cert_pem + chain.leaf.key_pem + chain.chain_pem(root=True)[len(chain.leaf.cert_pem):])
    [result] = await prober.probe(request(path))
    assert (result.success, result.path, positions(result)) == (True, str(path), FULL)
    leaf = result.chain[0]
    assert (leaf.not_after, leaf.not_before) == (ts(LEAF_NOT_AFTER), chain.leaf.not_before)
    assert leaf.sans == ("localhost", "127.0.0.1", "::1")
    assert (result.chain_verified, result.hostname_verified, result.reason) == (None, None, None)
    assert result.chain[2].not_after == ts(NOW) + 3000 * DAY
    assert result.started_at == 1000.0


async def test_order_in_file_decides_index_and_ca_flags_decide_position(tmp_path, chain, prober):
    path = tmp_path / "ca-first.pem"
    path.write_bytes(chain.root.cert_pem + chain.leaf.cert_pem)
    [result] = await prober.probe(request(path))
    assert positions(result) == [(0, Position.ROOT, "certpager Test Root"), (1, Position.LEAF, "localhost")]


async def test_der_file(tmp_path, chain, prober):
    path = tmp_path / "leaf.pem"  # DER despite the name
    path.write_bytes(chain.leaf.der)
    [result] = await prober.probe(request(path))
    assert (result.success, positions(result)) == (True, FULL[:1])
    assert result.chain[0].not_after == ts(LEAF_NOT_AFTER)


async def test_pkcs7_bundles_pem_and_der(tmp_path, chain, prober):
    certs = [chain.leaf.cert, chain.intermediates[0].cert, chain.root.cert]
    (tmp_path / "b.p7b").write_bytes(pkcs7.serialize_certificates(certs, Encoding.DER))
    (tmp_path / "b.p7c").write_bytes(pkcs7.serialize_certificates(certs, Encoding.PEM))
    results = await prober.probe(request(tmp_path))
    # A PKCS#7 SET OF certificates is stored sorted by DER, so the file order is not the chain order.
    assert [r.path for r in results] == [str(tmp_path / "b.p7b"), str(tmp_path / "b.p7c")]
    for result in results:
        assert [c.index for c in result.chain] == [0, 1, 2]
        assert {(c.position, c.subject_cn) for c in result.chain} == {(p, cn) for _, p, cn in FULL}


def write_p12(path: Path, chain: pki.Chain, password: bytes | None) -> None:
    encryption = BestAvailableEncryption(password) if password else NoEncryption()
    assert chain.root is not None
    others = [chain.intermediates[0].cert, chain.root.cert]
    path.write_bytes(pkcs12.serialize_key_and_certificates(b"srv", chain.leaf.key, chain.leaf.cert, others,
                                                           encryption))


async def test_pkcs12_with_password_file(tmp_path, chain, prober):
    write_p12(tmp_path / "store", chain, b"s3cret")
    (tmp_path / "pw").write_bytes(b"s3cret\n")
    [result] = await prober.probe(request(tmp_path / "store", tmp_path / "pw"))
    assert (result.success, positions(result)) == (True, FULL)


@pytest.mark.parametrize(("password", "detail"), [
    (b"wrong\n", "PKCS#12: the password does not open it"),
    (None, "PKCS#12: no password file is configured"),
])
async def test_pkcs12_wrong_or_missing_password(password, detail, tmp_path, chain, prober):
    write_p12(tmp_path / "store.p12", chain, b"s3cret")
    password_file = None
    if password is not None:
        password_file = tmp_path / "pw"
        password_file.write_bytes(password)
    [result] = await prober.probe(request(tmp_path / "store.p12", password_file))
    assert (result.success, result.reason, result.detail) == (False, Reason.BAD_PASSPHRASE, detail)
    assert result.chain == ()


async def test_pkcs12_unreadable_password_file(tmp_path, chain, prober):
    write_p12(tmp_path / "store.p12", chain, b"s3cret")
    (tmp_path / "pw").mkdir()  # a directory where the password file should be
    [result] = await prober.probe(request(tmp_path / "store.p12", tmp_path / "pw"))
    assert (result.reason, result.detail) == (Reason.BAD_PASSPHRASE, f"password file {tmp_path / 'pw'}: Is a directory")


async def test_pkcs12_password_file_change_is_seen(tmp_path, chain, prober):
    write_p12(tmp_path / "store.p12", chain, b"s3cret")
    pw = tmp_path / "pw"
    pw.write_bytes(b"old")
    assert [r.reason for r in await prober.probe(request(tmp_path / "store.p12", pw))] == [Reason.BAD_PASSPHRASE]
    (tmp_path / "pw.new").write_bytes(b"s3cret")
    (tmp_path / "pw.new").rename(pw)
    assert [r.success for r in await prober.probe(request(tmp_path / "store.p12", pw))] == [True]


CORRUPT = {
    "bad_base64.pem": (b"-----BEGIN CERTIFICATE-----\nMIIB!!!notbase64\n-----END CERTIFICATE-----\n",
                       Reason.BAD_PEM, "bad base64 in a CERTIFICATE block"),
    "unterminated.pem": (b"-----BEGIN CERTIFICATE-----\nMIIBCgKCAQEA\n", Reason.BAD_PEM,
                         "a PEM block has no matching END line"),
    "not_a_cert.pem": (b"-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n", Reason.BAD_PEM,
                       "certificate #0 is malformed"),
    "random.bin": (bytes(range(200, 256)) * 4, Reason.BAD_DER, "binary data that is not DER"),
    "empty": (b"", Reason.NO_CERTIFICATE, "the file is empty"),
    "notes.txt": (b"just some text\n", Reason.NO_CERTIFICATE, "text without any PEM block"),
}


@pytest.mark.parametrize("name", sorted(CORRUPT))
async def test_corrupt_files(name, tmp_path, prober):
    data, reason, detail = CORRUPT[name]
    (tmp_path / name).write_bytes(data)
    [result] = await prober.probe(request(tmp_path / name))
    assert (result.success, result.reason, result.path) == (False, reason, str(tmp_path / name))
    assert result.detail.startswith(detail)


async def test_truncated_der_and_pkcs12(tmp_path, chain, prober):
    (tmp_path / "a.der").write_bytes(chain.leaf.der[:-20])
    write_p12(tmp_path / "b.p12", chain, b"pw")
    (tmp_path / "b.p12").write_bytes((tmp_path / "b.p12").read_bytes()[:-40])
    results = await prober.probe(request(tmp_path / "*"))
    assert [(Path(r.path).name, r.reason) for r in results] == [("a.der", Reason.BAD_DER), ("b.p12", Reason.BAD_PKCS12)]


async def test_key_only_files_are_skipped_in_a_directory_but_reported_when_named(tmp_path, chain, prober):
    (tmp_path / "tls.crt").write_bytes(chain.leaf.cert_pem)
    (tmp_path / "tls.key").write_bytes(chain.leaf.key_pem)
    (tmp_path / ".hidden.crt").write_bytes(chain.leaf.cert_pem)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.crt").write_bytes(chain.root.cert_pem)
    assert [r.path for r in await prober.probe(request(tmp_path))] == [str(tmp_path / "tls.crt")]
    [named] = await prober.probe(request(tmp_path / "tls.key"))
    assert (named.reason, named.detail) == (Reason.NO_CERTIFICATE, "no CERTIFICATE block in the PEM file")
    recursive = await prober.probe(request(f"{tmp_path}/**/*.crt"))
    assert [Path(r.path).relative_to(tmp_path).as_posix() for r in recursive] == ["sub/deep.crt", "tls.crt"]


async def test_glob_over_a_changing_directory(tmp_path, test_pki, prober):
    chains = test_pki.chains
    (tmp_path / "a.crt").write_bytes(chains["valid"].leaf.cert_pem)
    (tmp_path / "b.der").write_bytes(chains["expired"].leaf.der)
    target = request(f"{tmp_path}/*")

    def seen(results: list[ProbeResult]) -> list[tuple[str, float]]:
        return [(Path(r.path or "").name, r.chain[0].not_after) for r in results]

    expired = chains["expired"].leaf.not_after
    assert seen(await prober.probe(target)) == [("a.crt", ts(LEAF_NOT_AFTER)), ("b.der", expired)]
    assert prober.parses == 2
    assert len(await prober.probe(target)) == 2
    assert prober.parses == 2  # unchanged files are not parsed again

    (tmp_path / "c.pem").write_bytes(chains["rsa"].chain_pem())  # added
    (tmp_path / "a.crt").unlink()  # removed
    (tmp_path / "b.new").write_bytes(chains["not_yet_valid"].leaf.der)
    (tmp_path / "b.new").rename(tmp_path / "b.der")  # replaced atomically, like a renewal
    assert seen(await prober.probe(target)) == [
        ("b.der", chains["not_yet_valid"].leaf.not_after), ("c.pem", chains["rsa"].leaf.not_after)]
    assert prober.parses == 4

    for name in ("b.der", "c.pem"):
        (tmp_path / name).unlink()
    [gone] = await prober.probe(target)
    assert (gone.success, gone.reason, gone.path, gone.detail) == (False, Reason.FILE_NOT_FOUND, f"{tmp_path}/*",
                                                                   "no file matches")


async def test_missing_path(tmp_path, prober):
    [result] = await prober.probe(request(tmp_path / "nope.pem"))
    assert (result.success, result.reason, result.detail) == (False, Reason.FILE_NOT_FOUND,
                                                              f"{tmp_path / 'nope.pem'}: no such file")


async def test_permission_denied(tmp_path, chain, prober):
    if os.geteuid() == 0:
        # chmod 000 does not stop root; a write-only sysctl does (procfs checks the mode bits for root).
        path = Path("/proc/sys/vm/drop_caches")
    else:
        path = tmp_path / "secret.pem"
        path.write_bytes(chain.leaf.cert_pem)
        path.chmod(0)
    [result] = await prober.probe(request(path))
    assert (result.success, result.reason, result.detail) == (False, Reason.FILE_PERMISSION,
                                                              f"{path}: permission denied")


async def test_a_fifo_is_refused_without_blocking(tmp_path, prober):
    os.mkfifo(tmp_path / "pipe")
    [result] = await prober.probe(request(tmp_path / "pipe"))
    assert (result.reason, result.detail) == (Reason.FILE_READ, f"{tmp_path / 'pipe'}: not a regular file")


async def test_an_oversized_file_is_not_read(tmp_path, prober):
    big = tmp_path / "big.pem"
    with big.open("wb") as handle:
        handle.truncate(16 * 1024 * 1024 + 1)  # sparse: costs no disk
    [result] = await prober.probe(request(big))
    assert (result.reason, result.detail) == (Reason.FILE_READ, f"{big}: larger than 16777216 bytes")


async def test_through_the_probe_registry_with_policies(tmp_path, chain):
    (tmp_path / "leaf.crt").write_bytes(chain.leaf.cert_pem)
    policies = Policies(max_validity_days=60, min_ec_bits=384)
    [result] = await get_probe("file")(request(tmp_path / "leaf.crt", policies=policies))
    assert (result.success, positions(result)) == (True, FULL[:1])
    # The leaf lives 70 days (10 before now, 60 after) on a P-256 key.
    assert result.policy_violations == {"max_validity_days": True, "min_ec_bits": True}
