"""Certificate helpers: DER -> CertificateInfo, hostname matching, trust verification and its caches."""

from __future__ import annotations

import datetime as dt
import hashlib
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from certpager import pki
from exporter import certs
from exporter.probes.base import Position, VerifyReason
from tests.exporter.conftest import DAY, LEAF_NOT_AFTER, LEAF_NOT_BEFORE, NOW, ts


def _infos(chain_ders):
    return certs.read_chain(chain_ders).infos


def _verify(verifier, chain_ders, ca_file, profile="openssl"):
    return verifier.verify(certs.read_chain(chain_ders), ca_file, profile=profile)


def ders(chain: pki.Chain, **kw) -> list[bytes]:
    return [c.der for c in chain.presented(**kw)]


def test_chain_info_exact(test_pki):
    chain = test_pki.chains["valid"]
    leaf, inter, root = _infos(ders(chain, root=True))
    assert (leaf.position, leaf.index, inter.position, inter.index, root.position, root.index) == (
        Position.LEAF, 0, Position.INTERMEDIATE, 1, Position.ROOT, 2)
    assert (leaf.not_before, leaf.not_after) == (ts(LEAF_NOT_BEFORE), ts(LEAF_NOT_AFTER))
    assert (root.not_before, root.not_after) == (ts(NOW - 1000 * DAY), ts(NOW + 3000 * DAY))
    assert leaf.serial == format(chain.leaf.cert.serial_number, "x")
    assert leaf.fingerprint_sha256 == hashlib.sha256(chain.leaf.der).hexdigest()
    assert leaf.sans == ("localhost", "127.0.0.1", "::1")
    assert (leaf.self_signed, leaf.is_ca, inter.is_ca, root.self_signed, root.is_ca) == (False, False, True, True, True)
    assert (root.subject_cn, root.issuer_cn) == ("certpager Test Root", "certpager Test Root")


def test_self_signed_leaf_is_leaf_not_root(test_pki):
    (leaf,) = _infos(ders(test_pki.chains["self_signed"]))
    assert (leaf.position, leaf.self_signed, leaf.is_ca) == (Position.LEAF, True, False)


def test_self_signed_non_ca_after_the_leaf_is_intermediate(test_pki):
    stray = test_pki.chains["self_signed"].leaf.der
    info = _infos([test_pki.chains["valid"].leaf.der, stray])
    assert info[1].position is Position.INTERMEDIATE


@pytest.mark.parametrize(
    ("key", "hash_name", "key_type", "bits", "signature"),
    [
        ("rsa3072", "sha384", "rsa", 3072, "sha384WithRSAEncryption"),
        ("rsa1024", "sha256", "rsa", 1024, "sha256WithRSAEncryption"),
        ("ec384", "sha384", "ec", 384, "ecdsa-with-SHA384"),
        ("ed25519", "sha256", "ed25519", 256, "ed25519"),
    ],
)
def test_key_and_signature_of_self_signed(key, hash_name, key_type, bits, signature):
    issued = pki.make_leaf(None, ("k.test",), key=key, hash=hash_name)
    info = _infos([issued.der])[0]
    assert (info.key_type, info.key_bits, info.signature_algorithm) == (key_type, bits, signature)


def test_sha1_signature_name(test_pki):
    info = _infos([test_pki.chains["sha1"].leaf.der])[0]
    assert info.signature_algorithm == "sha1WithRSAEncryption"


def test_parse_is_cached_by_der(test_pki):
    der = test_pki.chains["valid"].leaf.der
    assert certs.parse(der) is certs.parse(bytes(der))


def test_garbage_der_is_parse_error():
    with pytest.raises(certs.CertificateParseError):
        certs.parse(b"\x30\x03\x02\x01\x00")


def test_lru_is_bounded():
    lru: certs.LRU[int, int] = certs.LRU(2)
    lru.put(1, 1)
    lru.put(2, 2)
    assert lru.get(1) == 1  # 1 is now the most recent
    lru.put(3, 3)
    assert (lru.get(2), lru.get(1), lru.get(3), len(lru)) == (None, 1, 3, 2)


def test_aging_cache_keeps_the_working_set_and_forgets_the_rest():
    ticks = [0.0]
    cache: certs.AgingCache[str, int] = certs.AgingCache(100, max_idle=60, monotonic=lambda: ticks[0])
    cache.put("rotated-away", 1)
    cache.put("in-use", 2)
    ticks[0] = 61
    cache.put("new", 3)  # rotation: the first two are now the old generation
    assert cache.get("in-use") == 2  # promoted back into the young generation
    ticks[0] = 122
    cache.put("newer", 4)  # second rotation: unused "rotated-away" is gone
    assert (cache.get("rotated-away"), cache.get("in-use"), cache.get("new"), cache.get("newer")) == (None, 2, 3, 4)


def test_aging_cache_is_bounded_by_size():
    cache: certs.AgingCache[int, int] = certs.AgingCache(3, max_idle=1e9, monotonic=lambda: 0.0)
    for i in range(10):
        cache.put(i, i)
    assert len(cache) <= 6 and cache.get(9) == 9 and cache.get(0) is None


@pytest.mark.parametrize(
    ("sans", "name", "expected"),
    [
        (("example.com",), "example.com", True),
        (("example.com",), "EXAMPLE.com.", True),
        (("example.com",), "www.example.com", False),
        (("*.example.com",), "www.example.com", True),
        (("*.example.com",), "example.com", False),
        (("*.example.com",), "a.b.example.com", False),
        (("*.com",), "example.com", False),
        (("w*.example.com",), "www.example.com", False),
        (("*.*.example.com",), "a.b.example.com", False),
        (("127.0.0.1",), "127.0.0.1", True),
        (("::1",), "::1", True),
        (("::1",), "[::1]", True),
        (("::1",), "0:0:0:0:0:0:0:1", True),  # IP SANs compare as addresses, not as text
        (("2001:db8::1",), "[2001:DB8:0::1]", True),
        (("127.0.0.1",), "127.0.0.2", False),
        (("127.0.0.1.nip.test",), "127.0.0.1", False),
        (("*.example.com",), "127.0.0.1", False),
        (("xn--bcher-kva.example",), "bücher.example", True),
    ],
)
def test_match_hostname(sans, name, expected):
    issued = pki.make_leaf(None, sans, cn="cn.is.never.used")
    assert certs.match_hostname(certs.parse(issued.der), name) is expected


def test_no_cn_fallback():
    issued = pki.make_leaf(None, (), cn="only-cn.test")
    assert certs.match_hostname(certs.parse(issued.der), "only-cn.test") is False


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_verifier_verdicts(test_pki):
    verifier = certs.ChainVerifier()
    ca = test_pki.ca_file
    assert _verify(verifier, ders(test_pki.chains["valid"]), ca) == certs.Verdict(True)
    assert _verify(verifier, ders(test_pki.chains["expired"]), ca).reason is VerifyReason.EXPIRED
    assert _verify(verifier, ders(test_pki.chains["not_yet_valid"]), ca).reason is VerifyReason.NOT_YET_VALID
    assert _verify(verifier, ders(test_pki.chains["self_signed"]), ca).reason is VerifyReason.SELF_SIGNED
    assert _verify(verifier, ders(test_pki.chains["valid"], intermediates=False), ca).reason is (
        VerifyReason.MISSING_INTERMEDIATE)
    assert _verify(verifier, ders(test_pki.chains["valid"], intermediates=False), ca, "webpki").reason is (
        VerifyReason.UNKNOWN_ISSUER)
    assert _verify(verifier, ders(test_pki.chains["expired_intermediate"]), ca).reason is VerifyReason.EXPIRED
    sha1 = _verify(verifier, ders(test_pki.chains["sha1"]), ca)
    assert (sha1.verified, sha1.reason) == (False, VerifyReason.WEAK_SIGNATURE)
    assert sha1.detail.startswith(
        "certificate 0 (CN=localhost): its signature (sha1WithRSAEncryption) is about 63 bits")
    sha1 = _verify(verifier, ders(test_pki.chains["sha1"]), ca, "webpki")
    assert (sha1.verified, sha1.reason) == (False, VerifyReason.WEAK_SIGNATURE)
    assert "{" not in sha1.detail and "signature algorithm" in sha1.detail.lower()


def test_a_certificate_cryptography_refuses_is_reported_and_not_trusted(test_pki):
    # exporter/der.py does not check a PrintableString's alphabet; cryptography refuses '*' in one.
    # The chain is still reported (dates, names), and the verdict says why it cannot be trusted.
    leaf = test_pki.chains["valid"].leaf
    country = x509.NameAttribute(NameOID.COUNTRY_NAME, "QQ")  # a PrintableString, as cryptography encodes it
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost"), country]))
               .issuer_name(leaf.cert.issuer).public_key(leaf.cert.public_key()).serial_number(7)
               .not_valid_before(leaf.cert.not_valid_before_utc).not_valid_after(leaf.cert.not_valid_after_utc)
               .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False))
    good = builder.sign(test_pki.intermediate.key, hashes.SHA256()).public_bytes(Encoding.DER)
    assert good.count(b"\x13\x02QQ") == 1
    bad = good.replace(b"\x13\x02QQ", b"\x13\x02Q*")
    (info,) = _infos([bad])
    assert (info.subject_cn, info.sans) == ("localhost", ("localhost",))
    verdict = _verify(certs.ChainVerifier(), [bad, test_pki.intermediate.der], test_pki.ca_file, "webpki")
    assert (verdict.verified, verdict.reason) == (False, VerifyReason.INVALID)
    assert verdict.detail.startswith("a certificate cannot be verified: ")
    # OpenSSL reads it, and finds that the changed bytes no longer match the signature.
    verdict = _verify(certs.ChainVerifier(), [bad, test_pki.intermediate.der], test_pki.ca_file)
    assert verdict == certs.Verdict(False, VerifyReason.INVALID, "certificate 0 (CN=localhost): certificate "
                                    "signature failure (OpenSSL error 7 at depth 0)")


def test_wrong_name_does_not_affect_trust(test_pki):
    verdict = _verify(certs.ChainVerifier(), ders(test_pki.chains["wrong_name"]), test_pki.ca_file)
    assert verdict == certs.Verdict(True)


def test_pinned_self_signed_leaf_is_trusted(test_pki):
    files = test_pki.files["self_signed"]  # its ca_file is the leaf itself
    assert _verify(certs.ChainVerifier(), ders(test_pki.chains["self_signed"]), files.ca_file).verified is True


def test_cross_signed_intermediate(test_pki, tmp_path):
    other_root = pki.make_root("Other Root", slot=30)
    cross = pki.cross_sign(test_pki.intermediate, other_root)
    chain = test_pki.chains["valid"]
    (tmp_path / "other.crt").write_bytes(other_root.cert_pem)
    verifier = certs.ChainVerifier()
    assert _verify(verifier, [chain.leaf.der, cross.der], tmp_path / "other.crt").verified is True
    # Served with both the original and the cross-signed intermediate, trusted by either root.
    both = [chain.leaf.der, test_pki.intermediate.der, cross.der]
    assert _verify(verifier, both, tmp_path / "other.crt", "webpki").verified is True
    assert _verify(verifier, both, test_pki.ca_file).verified is True
    # OpenSSL takes the first issuer the peer sent that fits and does not backtrack through the
    # others it sent: an OpenSSL client refuses this order (s_client agrees: test_trust_corpus.py).
    assert _verify(verifier, both, tmp_path / "other.crt").reason is VerifyReason.UNKNOWN_ISSUER
    assert _verify(verifier, [chain.leaf.der, cross.der, test_pki.intermediate.der],
                   tmp_path / "other.crt").verified is True
    info = _infos(both)
    assert [c.position for c in info] == [Position.LEAF, Position.INTERMEDIATE, Position.INTERMEDIATE]
    assert info[2].issuer_cn == "Other Root"


def test_verdict_cache_ends_at_the_next_validity_boundary(test_pki):
    clock = Clock(ts(NOW))
    verifier = certs.ChainVerifier(clock=clock)
    chain = ders(test_pki.chains["valid"])
    assert _verify(verifier, chain, test_pki.ca_file).verified is True
    clock.now = ts(LEAF_NOT_AFTER) - 1  # last valid second (past the TTL, so verified afresh)
    assert _verify(verifier, chain, test_pki.ca_file).verified is True
    clock.now = ts(LEAF_NOT_AFTER) + 1  # one second past notAfter: the cached verdict must not be reused
    assert _verify(verifier, chain, test_pki.ca_file) == certs.Verdict(
        False, VerifyReason.EXPIRED,
        "certificate 0 (CN=localhost): certificate has expired (OpenSSL error 10 at depth 0)")


def test_verdict_cache_hits_within_ttl(test_pki):
    clock = Clock(ts(NOW))
    verifier = certs.ChainVerifier(clock=clock)
    chain = ders(test_pki.chains["valid"])
    first = _verify(verifier, chain, test_pki.ca_file)
    clock.now += certs.VERDICT_TTL - 1
    assert _verify(verifier, [bytes(d) for d in chain], test_pki.ca_file) is first


def test_trust_store_reloads_when_the_file_changes(test_pki, tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_bytes(pki.make_root("Unrelated Root", slot=31).cert_pem)
    ticks = Clock(0.0)
    verifier = certs.ChainVerifier(certs.TrustStores(recheck=1.0, monotonic=ticks))
    chain = ders(test_pki.chains["valid"])
    assert _verify(verifier, chain, ca).reason is VerifyReason.UNKNOWN_ISSUER
    ca.write_bytes(test_pki.root.cert_pem + test_pki.root.cert_pem)
    stat = ca.stat()
    os.utime(ca, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    ticks.now = 0.5  # within the recheck interval the file is not looked at
    assert _verify(verifier, chain, ca).reason is VerifyReason.UNKNOWN_ISSUER
    ticks.now = 1.0
    assert _verify(verifier, chain, ca).verified is True


def test_unreadable_ca_file_is_invalid_with_detail(test_pki, tmp_path):
    chain = ders(test_pki.chains["valid"])
    missing = _verify(certs.ChainVerifier(), chain, tmp_path / "missing.crt")
    assert (missing.verified, missing.reason) == (False, VerifyReason.INVALID)
    assert "missing.crt" in missing.detail
    (tmp_path / "empty.crt").write_text("not a certificate\n")
    empty = _verify(certs.ChainVerifier(), chain, tmp_path / "empty.crt")
    assert (empty.reason, "no PEM certificate" in empty.detail) == (VerifyReason.INVALID, True)


def test_system_store_loads(test_pki):
    store = certs.TrustStores().get(None)
    assert len(store.anchors) > 10  # Debian's ca-certificates


def test_expired_self_signed_reports_self_signed():
    leaf = pki.make_leaf(None, ("old.test",), not_before=pki.utcnow() - dt.timedelta(days=9),
                         not_after=pki.utcnow() - dt.timedelta(days=1))
    verdict = _verify(certs.ChainVerifier(), [leaf.der], None)
    assert verdict.reason is VerifyReason.SELF_SIGNED


def test_sha1_certificate_signature_really_verifies(test_pki):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    chain = test_pki.chains["sha1"]
    leaf, issuer = chain.leaf.cert, chain.intermediates[0].cert
    issuer.public_key().verify(leaf.signature, leaf.tbs_certificate_bytes, padding.PKCS1v15(), hashes.SHA1())


def test_cross_signed_keeps_subject_and_key(test_pki):
    other_root = pki.make_root("Other Root", slot=30)
    cross = pki.cross_sign(test_pki.intermediate, other_root)
    assert cross.cert.subject == test_pki.intermediate.cert.subject
    assert cross.cert.public_key() == test_pki.intermediate.cert.public_key()
    cross.cert.verify_directly_issued_by(other_root.cert)


def test_expired_trust_anchor_is_expired(tmp_path):
    now = pki.utcnow()
    root = pki.make_root("Expired Root", slot=32, not_before=now - dt.timedelta(days=30),
                         not_after=now - dt.timedelta(days=1))
    chain = pki.build_chain(("anchor.test",), root=root, intermediate=pki.make_intermediate(root, slot=33))
    files = chain.write(tmp_path)
    verdict = _verify(certs.ChainVerifier(), [c.der for c in chain.presented()], files.ca_file)
    assert (verdict.verified, verdict.reason) == (False, VerifyReason.EXPIRED)
    assert "trust anchor" in verdict.detail
