"""Policies, each at its boundary, on real certificates parsed by exporter.certs."""

from __future__ import annotations

import datetime as dt

import pytest

from certpager import pki
from exporter import certs, policy
from exporter.config import Policies


@pytest.fixture(scope="module")
def rsa_root() -> pki.Issued:
    return pki.make_root("Policy RSA Root", key="rsa2048", slot=40)


def chain_of(*issued: pki.Issued):
    return certs.read_chain([i.der for i in issued]).infos


def leaf_under(root: pki.Issued, **kw):
    inter_key = kw.pop("inter_key", "ec256")
    inter = pki.make_intermediate(root, cn="Policy Intermediate", key=inter_key, slot=41)
    return chain_of(pki.make_leaf(inter, ("p.test",), **kw), inter, root)


@pytest.mark.parametrize(("key", "violated"), [("rsa2047", True), ("rsa2048", False), ("rsa3072", False)])
def test_min_rsa_bits_boundary(rsa_root, key, violated):
    chain = leaf_under(rsa_root, key=key)
    assert policy.evaluate(Policies(min_rsa_bits=2048), chain, "TLS 1.3", {}) == {"min_rsa_bits": violated}


def test_min_rsa_bits_checks_intermediates_but_not_the_root(rsa_root):
    weak_inter = leaf_under(rsa_root, inter_key="rsa2047")
    assert policy.evaluate(Policies(min_rsa_bits=2048), weak_inter, None, {}) == {"min_rsa_bits": True}
    weak_root = pki.make_root("Weak Root", key="rsa1024", slot=42)
    assert policy.evaluate(Policies(min_rsa_bits=2048), leaf_under(weak_root), None, {}) == {"min_rsa_bits": False}


def test_min_rsa_bits_on_ec_chain_is_checked_and_fine(rsa_root):
    chain = leaf_under(rsa_root, key="ec256")
    assert policy.evaluate(Policies(min_rsa_bits=4096), chain[:2], None, {}) == {"min_rsa_bits": False}


@pytest.mark.parametrize(("key", "minimum", "violated"),
                         [("ec256", 256, False), ("ec256", 257, True), ("ec384", 384, False), ("ec256", 384, True)])
def test_min_ec_bits_boundary(rsa_root, key, minimum, violated):
    chain = leaf_under(rsa_root, key=key, inter_key=key)
    assert policy.evaluate(Policies(min_ec_bits=minimum), chain, None, {}) == {"min_ec_bits": violated}


@pytest.mark.parametrize(
    ("hash_name", "forbidden", "violated"),
    [("sha1", ["sha1"], True), ("sha1", ["SHA-1"], True), ("sha256", ["sha1", "md5"], False),
     ("md5", ["md5"], True), ("sha256", ["sha256WithRSAEncryption"], True)],
)
def test_forbidden_signature_algorithm(rsa_root, hash_name, forbidden, violated):
    chain = leaf_under(rsa_root, inter_key="rsa2048", hash=hash_name)
    result = policy.evaluate(Policies(forbidden_signature_algorithms=forbidden), chain, None, {})
    assert result == {"forbidden_signature_algorithm": violated}


def test_forbidden_signature_ignores_the_roots_self_signature():
    sha1_root = pki.issue(pki.CertSpec(cn="SHA1 Root", key="rsa2048", hash="sha1", slot=43), None, ca=True)
    chain = leaf_under(sha1_root)
    assert chain[2].signature_algorithm == "sha1WithRSAEncryption"
    result = policy.evaluate(Policies(forbidden_signature_algorithms=["sha1"]), chain, None, {})
    assert result == {"forbidden_signature_algorithm": False}


@pytest.mark.parametrize(
    ("version", "minimum", "violated"),
    [("TLS 1.2", "TLS1.2", False), ("TLS 1.1", "TLS1.2", True), ("TLS 1.3", "TLS1.2", False),
     ("TLS 1.2", "TLS1.3", True), ("TLS 1.0", "TLS1.1", True)],
)
def test_min_tls_version_boundary(rsa_root, version, minimum, violated):
    chain = leaf_under(rsa_root)
    assert policy.evaluate(Policies(min_tls_version=minimum), chain, version, {}) == {"min_tls_version": violated}


def test_min_tls_version_not_checked_without_a_version(rsa_root):
    assert policy.evaluate(Policies(min_tls_version="TLS1.2"), leaf_under(rsa_root), None, {}) == {}


@pytest.mark.parametrize(("extra_seconds", "violated"), [(0, False), (1, True), (-1, False)])
def test_max_validity_days_boundary(rsa_root, extra_seconds, violated):
    start = pki.utcnow() - dt.timedelta(days=1)
    chain = leaf_under(rsa_root, not_before=start, not_after=start + dt.timedelta(days=398, seconds=extra_seconds))
    assert policy.evaluate(Policies(max_validity_days=398), chain, None, {}) == {"max_validity_days": violated}


def test_max_validity_applies_to_the_leaf_only(rsa_root):
    # The intermediate and root live ten years; only the 91-day leaf (pki's default) is judged.
    assert policy.evaluate(Policies(max_validity_days=91), leaf_under(rsa_root), None, {}) == {
        "max_validity_days": False}


def test_self_signed_scoped_by_labels():
    chain = chain_of(pki.make_leaf(None, ("self.test",)))
    scoped = Policies(forbid_self_signed=[{"environment": "production"}])
    assert policy.evaluate(scoped, chain, None, {"environment": "production"}) == {"self_signed": True}
    assert policy.evaluate(scoped, chain, None, {"environment": "staging"}) == {}
    everywhere = Policies(forbid_self_signed=[{}])
    assert policy.evaluate(everywhere, chain, None, {}) == {"self_signed": True}


def test_self_signed_policy_fine_for_ca_issued_leaf(rsa_root):
    assert policy.evaluate(Policies(forbid_self_signed=[{}]), leaf_under(rsa_root), None, {}) == {
        "self_signed": False}


def test_only_configured_policies_and_no_chain_gives_nothing(rsa_root):
    assert policy.evaluate(Policies(), leaf_under(rsa_root), "TLS 1.3", {}) == {}
    assert policy.evaluate(Policies(min_rsa_bits=2048), (), "TLS 1.3", {}) == {}


def test_all_policies_together(rsa_root):
    policies = Policies(min_rsa_bits=2048, min_ec_bits=256, forbidden_signature_algorithms=["sha1"],
                        min_tls_version="TLS1.2", max_validity_days=398, forbid_self_signed=[{}])
    result = policy.evaluate(policies, leaf_under(rsa_root), "TLS 1.3", {})
    assert result == {"min_rsa_bits": False, "min_ec_bits": False, "forbidden_signature_algorithm": False,
                      "min_tls_version": False, "max_validity_days": False, "self_signed": False}


@pytest.mark.parametrize(("text", "rank"), [("TLS 1.3", 5), ("TLSv1.2", 4), ("TLS1.0", 2), ("TLSv1", 2),
                                            ("SSLv3", 1), ("QUIC", None)])
def test_tls_version_rank(text, rank):
    assert policy.tls_version_rank(text) == rank
