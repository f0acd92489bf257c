"""The parse cache: keyed by the certificate's SHA-256, positions of first sight, shared issuer names."""

from __future__ import annotations

import hashlib

from certpager import pki
from exporter import certs
from exporter.probes.base import Position


def test_same_der_from_different_objects_is_parsed_once(test_pki):
    der = test_pki.chains["valid"].leaf.der
    first = certs.cert_info(bytes(bytearray(der)), 0)
    again = certs.cert_info(bytes(bytearray(der)), 0)  # equal content, another bytes object
    assert again is first
    assert first.fingerprint_sha256 == hashlib.sha256(der).hexdigest()


def test_positions_follow_the_index_whatever_was_seen_first(test_pki):
    inter = pki.make_intermediate(test_pki.root, "cache-test Intermediate")
    leaf = pki.make_leaf(inter, ("cache-first.test",))
    as_leaf = certs.cert_info(leaf.der, 0)  # first sight at index 0: cached as the leaf
    as_second = certs.cert_info(leaf.der, 1)  # the same certificate later in another chain
    assert (as_leaf.index, as_leaf.position) == (0, Position.LEAF)
    assert (as_second.index, as_second.position) == (1, Position.INTERMEDIATE)
    assert certs.cert_info(leaf.der, 0) is as_leaf
    # Seen first behind a leaf, a CA keeps its own position and gets a leaf copy only when asked.
    assert (certs.cert_info(inter.der, 1).position, certs.cert_info(inter.der, 0).position) == (
        Position.INTERMEDIATE, Position.LEAF)


def test_leaves_of_one_issuer_share_the_issuer_name(test_pki):
    inter = test_pki.chains["valid"].intermediates[0]
    one = certs.cert_info(pki.make_leaf(inter, ("share-one.test",)).der, 0)
    two = certs.cert_info(pki.make_leaf(inter, ("share-two.test",)).der, 0)
    assert one.issuer_cn == two.issuer_cn
    assert one.issuer_cn is two.issuer_cn
