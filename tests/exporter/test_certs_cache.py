"""The parse cache: keyed by the certificate's SHA-256, positions of first sight, shared issuer names."""

from __future__ import annotations

import hashlib

from certpager import pki
from exporter import certs
from exporter.probes.base import CertificateInfo, Position


def at(der: bytes, index: int, before: bytes) -> CertificateInfo:
    """The info of ``der`` presented at ``index`` of a chain (``before`` fills the places ahead of it)."""
    return certs.read_chain([before] * index + [der]).infos[index]


def test_same_der_from_different_objects_is_parsed_once(test_pki):
    der = test_pki.chains["valid"].leaf.der
    first = certs.read_chain([bytes(bytearray(der))]).infos[0]
    again = certs.read_chain([bytes(bytearray(der))]).infos[0]  # equal content, another bytes object
    assert again is first
    assert first.fingerprint_sha256 == hashlib.sha256(der).hexdigest()


def test_positions_follow_the_index_whatever_was_seen_first(test_pki):
    inter = pki.make_intermediate(test_pki.root, "cache-test Intermediate")
    leaf = pki.make_leaf(inter, ("cache-first.test",))
    other = test_pki.chains["valid"].leaf.der
    as_leaf = at(leaf.der, 0, other)  # first sight at index 0: cached as the leaf
    as_second = at(leaf.der, 1, other)  # the same certificate later in another chain
    assert (as_leaf.index, as_leaf.position) == (0, Position.LEAF)
    assert (as_second.index, as_second.position) == (1, Position.INTERMEDIATE)
    assert at(leaf.der, 0, other) is as_leaf
    # Seen first behind a leaf, a CA keeps its own position and gets a leaf copy only when asked.
    assert (at(inter.der, 1, leaf.der).position, at(inter.der, 0, leaf.der).position) == (
        Position.INTERMEDIATE, Position.LEAF)


def test_leaves_of_one_issuer_share_the_issuer_name(test_pki):
    inter = test_pki.chains["valid"].intermediates[0]
    one = certs.read_chain([pki.make_leaf(inter, ("share-one.test",)).der]).infos[0]
    two = certs.read_chain([pki.make_leaf(inter, ("share-two.test",)).der]).infos[0]
    assert one.issuer_cn == two.issuer_cn
    assert one.issuer_cn is two.issuer_cn
