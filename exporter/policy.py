"""Certificate and connection policies: config ``policies:`` -> {policy name: violated}.

Only policies that are configured *and* apply to the result appear in the answer (exported as
``tls_cert_policy_violation{policy}``: 1 violated, 0 checked and fine). Semantics, exactly:

- ``min_rsa_bits``: violated when an RSA key of the leaf or of an intermediate is smaller. Roots are
  not checked: TLS clients do not check a trust anchor's own signature or key. Chains without RSA
  keys are checked and fine.
- ``min_ec_bits``: the same for EC keys (P-256 = 256 bits, P-384 = 384).
- ``forbidden_signature_algorithm``: violated when the signature algorithm name of the leaf or an
  intermediate contains one of the configured strings, case-insensitively, ignoring ``-``
  (``sha1`` matches sha1WithRSAEncryption and ecdsa-with-SHA1). The root's self-signature is not checked.
- ``min_tls_version``: violated when the negotiated version is older. Only for network probes
  (a result without a TLS version, e.g. a file, does not get this policy).
- ``max_validity_days``: violated when the leaf's notAfter - notBefore exceeds that many days
  (exactly N days is fine, one second more is not).
- ``self_signed``: violated when the leaf is self-signed; checked only for targets whose labels
  match one of the ``forbid_self_signed`` label sets (``[{}]`` matches every target).

A result without a chain gets no policy at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from exporter.config import Policies
from exporter.probes.base import CertificateInfo, Position

MIN_RSA_BITS = "min_rsa_bits"
MIN_EC_BITS = "min_ec_bits"
FORBIDDEN_SIGNATURE_ALGORITHM = "forbidden_signature_algorithm"
MIN_TLS_VERSION = "min_tls_version"
MAX_VALIDITY_DAYS = "max_validity_days"
SELF_SIGNED = "self_signed"

_VERSION_RANK = {"SSL2.0": 0, "SSL3.0": 1, "TLS1.0": 2, "TLS1.1": 3, "TLS1.2": 4, "TLS1.3": 5}


def tls_version_rank(version: str) -> int | None:
    """Order TLS versions in any of the spellings "TLS 1.2", "TLSv1.2", "TLS1.2", "SSLv3"."""
    text = version.replace(" ", "").replace("v", "").upper()
    if text in ("SSL3", "SSL2"):
        text += ".0"
    if text == "TLS1":
        text = "TLS1.0"
    return _VERSION_RANK.get(text)


def _checked(chain: Sequence[CertificateInfo]) -> list[CertificateInfo]:
    return [c for c in chain if c.position is not Position.ROOT]


def _min_bits(chain: Sequence[CertificateInfo], key_type: str, minimum: int) -> bool:
    return any(c.key_type == key_type and c.key_bits < minimum for c in _checked(chain))


def _forbidden_signature(chain: Sequence[CertificateInfo], forbidden: Sequence[str]) -> bool:
    needles = [f.lower().replace("-", "") for f in forbidden]
    for cert in _checked(chain):
        name = cert.signature_algorithm.lower().replace("-", "")
        if any(needle in name for needle in needles):
            return True
    return False


def _labels_match(labels: Mapping[str, str], groups: Sequence[Mapping[str, str]]) -> bool:
    return any(all(labels.get(k) == v for k, v in group.items()) for group in groups)


def evaluate(
    policies: Policies,
    chain: Sequence[CertificateInfo],
    tls_version: str | None,
    labels: Mapping[str, str],
) -> dict[str, bool]:
    """Evaluate every configured, applicable policy; the value is True when violated."""
    if not chain:
        return {}
    result: dict[str, bool] = {}
    leaf = chain[0] if chain[0].index == 0 else None  # None: the leaf could not be read
    if policies.min_rsa_bits is not None:
        result[MIN_RSA_BITS] = _min_bits(chain, "rsa", policies.min_rsa_bits)
    if policies.min_ec_bits is not None:
        result[MIN_EC_BITS] = _min_bits(chain, "ec", policies.min_ec_bits)
    if policies.forbidden_signature_algorithms:
        result[FORBIDDEN_SIGNATURE_ALGORITHM] = _forbidden_signature(chain, policies.forbidden_signature_algorithms)
    if policies.min_tls_version is not None and tls_version is not None:
        have, want = tls_version_rank(tls_version), tls_version_rank(policies.min_tls_version)
        result[MIN_TLS_VERSION] = have is None or want is None or have < want
    if policies.max_validity_days is not None and leaf is not None:
        result[MAX_VALIDITY_DAYS] = leaf.not_after - leaf.not_before > policies.max_validity_days * 86400
    if policies.forbid_self_signed and leaf is not None and _labels_match(labels, policies.forbid_self_signed):
        result[SELF_SIGNED] = leaf.self_signed
    return result
