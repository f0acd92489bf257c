"""PKI shapes private and public PKIs have every day, each a presented chain and its trust anchors.

Built once per session with keys made once (EC P-256 unless the shape needs another kind), for
tests/exporter/test_trust_corpus.py, which serves each shape on loopback and compares the verdicts.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.exporter import derkit

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)
_serials = itertools.count(0x5000)
_slots = itertools.count()

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@cache
def key(kind: str = "ec256", slot: int = 0) -> Key:
    """A key of ``kind``; EC keys are cheap, so every certificate gets its own unless it shares one."""
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    curve = {"ec256": ec.SECP256R1, "ec384": ec.SECP384R1, "ec521": ec.SECP521R1}[kind]
    return ec.generate_private_key(curve())


@dataclass
class Cert:
    """One certificate: its DER and private key, and its name (for the issuer field of what it signs)."""

    der: bytes
    key: Key
    name: x509.Name

    @property
    def pem(self) -> bytes:
        body = base64.b64encode(self.der)
        lines = b"\n".join(body[i:i + 64] for i in range(0, len(body), 64))
        return b"-----BEGIN CERTIFICATE-----\n" + lines + b"\n-----END CERTIFICATE-----\n"

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


_DEFAULT = object()


def make(
    cn: str, issuer: Cert | None, *, ca: bool, kind: str = "ec256", signing_key: Key | None = None,
    names: Sequence[str] | None = None, key_usage: object = _DEFAULT, eku: Sequence[x509.ObjectIdentifier] | None = (),
    path_length: int | None = None, basic_constraints: bool = True, ski: bool = True, aki: bool | bytes = True,
    not_before: dt.datetime | None = None, not_after: dt.datetime | None = None, serial: int | None = None,
    hash_name: str = "sha256", pss: bool = False, extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    edit: Callable[[list[bytes]], list[bytes]] | None = None, own_key: Key | None = None,
) -> Cert:
    """One certificate as the options describe; ``issuer=None`` makes it self-signed."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    private = own_key or key(kind, next(_slots))
    public = private.public_key()
    issuer_key = signing_key or (issuer.key if issuer else private)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer.name if issuer else subject)
               .public_key(public).serial_number(next(_serials) if serial is None else serial)
               .not_valid_before(not_before or NOW - DAY)
               .not_valid_after(not_after or NOW + (3650 if ca else 90) * DAY))
    if basic_constraints:
        builder = builder.add_extension(x509.BasicConstraints(ca, path_length if ca else None), critical=True)
    if ski:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    if aki is not False:
        identifier = aki if isinstance(aki, bytes) else \
            x509.SubjectKeyIdentifier.from_public_key(issuer_key.public_key()).digest
        builder = builder.add_extension(x509.AuthorityKeyIdentifier(identifier, None, None), critical=False)
    if key_usage is _DEFAULT:
        key_usage = _usage(ca)
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)  # type: ignore[arg-type]
    if eku == () and not ca:
        eku = [ExtendedKeyUsageOID.SERVER_AUTH]
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if names is None and not ca:
        names = [cn]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                                        critical=False)
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    if edit is not None or hash_name in ("sha1", "md5"):
        signed = builder.sign(issuer_key, hashes.SHA256()) if not isinstance(issuer_key, ed25519.Ed25519PrivateKey) \
            else builder.sign(issuer_key, None)
        der = derkit.edit(signed, issuer_key, edit or (lambda fields: fields), hash_name)
        return Cert(der, private, subject)
    if isinstance(issuer_key, ed25519.Ed25519PrivateKey):
        return Cert(builder.sign(issuer_key, None).public_bytes(serialization.Encoding.DER), private, subject)
    algorithm = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}[hash_name]()
    kwargs = {"rsa_padding": padding.PSS(padding.MGF1(algorithm), padding.PSS.DIGEST_LENGTH)} if pss else {}
    return Cert(builder.sign(issuer_key, algorithm, **kwargs).public_bytes(serialization.Encoding.DER), private,
                subject)


def _usage(ca: bool, **overrides: bool) -> x509.KeyUsage:
    flags = dict(digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                 key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False)
    flags.update(overrides)
    return x509.KeyUsage(**flags)


@dataclass
class Shape:
    """A chain as a server presents it (leaf first), and what the client trusts."""

    name: str
    presented: list[Cert]
    anchors: list[Cert]
    note: str = ""
    host: str = field(default="")


def host(name: str) -> str:
    return f"{name.replace('_', '-')}.test"


def _chain(name: str, depth: int = 1, *, kind: str = "ec256", **leaf: object) -> tuple[list[Cert], Cert]:
    """root -> ``depth`` intermediates -> leaf; returns (presented leaf first, root)."""
    root = make(f"{name} root", None, ca=True, kind=kind)
    issuer = root
    inters = []
    for level in range(depth):
        issuer = make(f"{name} intermediate {level + 1}", issuer, ca=True, kind=kind)
        inters.append(issuer)
    leaf_cert = make(host(name), issuer, ca=False, kind=kind, **leaf)  # type: ignore[arg-type]
    return [leaf_cert, *reversed(inters)], root


def shapes() -> list[Shape]:
    """Every shape of the corpus (at least 50)."""
    found: list[Shape] = []

    def add(name: str, presented: list[Cert], anchors: list[Cert], note: str = "") -> None:
        found.append(Shape(name, presented, anchors, note, host(name)))

    def simple(name: str, depth: int = 1, note: str = "", **leaf: object) -> None:
        presented, root = _chain(name, depth, **leaf)  # type: ignore[arg-type]
        add(name, presented, [root], note)

    simple("valid")
    simple("leaf_under_root", depth=0)
    for depth in range(3, 10):  # chains of 5 to 11 certificates with the root
        simple(f"depth_{depth + 2}", depth=depth)
    presented, root = _chain("root_sent")
    add("root_sent", [*presented, root], [root])
    presented, root = _chain("missing_intermediate")
    add("missing_intermediate", presented[:1], [root])
    presented, root = _chain("unknown_root")
    add("unknown_root", presented, [make("other root", None, ca=True)])
    add("untrusted_root_sent", [*presented, root], [make("other root 2", None, ca=True)])
    simple("expired_leaf", not_before=NOW - 100 * DAY, not_after=NOW - 2 * DAY)
    simple("not_yet_valid_leaf", not_before=NOW + 2 * DAY, not_after=NOW + 100 * DAY)
    root = make("expired_intermediate root", None, ca=True)
    inter = make("expired_intermediate int", root, ca=True, not_before=NOW - 100 * DAY, not_after=NOW - DAY)
    add("expired_intermediate", [make(host("expired_intermediate"), inter, ca=False), inter], [root])
    old_root = make("expired root", None, ca=True, not_before=NOW - 900 * DAY, not_after=NOW - DAY)
    leaf_under_old = make(host("expired_root"), old_root, ca=False)
    add("expired_root", [leaf_under_old], [old_root])
    self_signed = make(host("self_signed"), None, ca=False)
    add("self_signed", [self_signed], [make("unrelated root", None, ca=True)])
    pinned = make(host("pinned_self_signed"), None, ca=False)
    add("pinned_self_signed", [pinned], [pinned])

    # What OpenSSL accepts and the Web PKI profile refuses.
    root = make("req-x509 root", None, ca=True, key_usage=None, ski=False, aki=False)
    inter = make("req-x509 intermediate", root, ca=True, key_usage=None)
    add("ca_without_key_usage", [make(host("ca_without_key_usage"), inter, ca=False), inter], [root])
    v1_root = make("v1 root", None, ca=True, edit=derkit.as_v1)
    add("v1_root", [make(host("v1_root"), v1_root, ca=False)], [v1_root])
    simple("leaf_without_aki", aki=False)
    root = make("ca leaf root", None, ca=True)
    add("leaf_ca_true", [make(host("leaf_ca_true"), root, ca=True, names=[host("leaf_ca_true")])], [root])
    negative = derkit.tlv(0x02, (-1234567).to_bytes(3, "big", signed=True))
    simple("negative_serial", edit=lambda fields: [fields[0], negative, *fields[2:]])
    root = make("underscore root", None, ca=True)
    add("underscore_san", [make("under_score.test", root, ca=False)], [root])
    simple("cn_without_san", names=[])
    presented, root = _chain("no_aki_no_ski", ski=False, aki=False)
    add("no_aki_no_ski", presented, [root])

    # What OpenSSL refuses and the Web PKI profile may accept.
    simple("rsa1024_leaf", kind="rsa2048", own_key=key("rsa1024"))
    root = make("rsa1024 int root", None, ca=True, kind="rsa2048")
    weak_inter = make("rsa1024 intermediate", root, ca=True, own_key=key("rsa1024"))
    add("rsa1024_intermediate", [make(host("rsa1024_intermediate"), weak_inter, ca=False), weak_inter], [root])
    weak_root = make("rsa1024 root", None, ca=True, own_key=key("rsa1024"))
    add("rsa1024_root", [make(host("rsa1024_root"), weak_root, ca=False)], [weak_root])
    root = make("aki mismatch root", None, ca=True)
    add("aki_mismatch", [make(host("aki_mismatch"), root, ca=False, aki=b"\x01" * 20)], [root])
    root = make("sha1 root", None, ca=True, kind="rsa2048")
    inter = make("sha1 int", root, ca=True, kind="rsa2048", own_key=key("rsa2048", 1))
    add("sha1_leaf", [make(host("sha1_leaf"), inter, ca=False, hash_name="sha1"), inter], [root])
    sha1_inter = make("sha1 signed int", root, ca=True, own_key=key("rsa2048", 2), hash_name="sha1")
    add("sha1_intermediate", [make(host("sha1_intermediate"), sha1_inter, ca=False), sha1_inter], [root])
    sha1_root = make("sha1 self-signed root", None, ca=True, own_key=key("rsa2048", 3), hash_name="sha1")
    add("sha1_root", [make(host("sha1_root"), sha1_root, ca=False)], [sha1_root])
    add("md5_leaf", [make(host("md5_leaf"), inter, ca=False, hash_name="md5"), inter], [root])
    ec_sha1 = make("ecdsa sha1 root", None, ca=True)
    add("ecdsa_sha1_leaf", [make(host("ecdsa_sha1_leaf"), ec_sha1, ca=False, hash_name="sha1")], [ec_sha1])
    pss_root = make("pss root", None, ca=True, own_key=key("rsa2048", 4), pss=True)
    add("rsa_pss", [make(host("rsa_pss"), pss_root, ca=False, own_key=key("rsa2048", 5), pss=True)], [pss_root])
    presented, root = _chain("ed25519", kind="ed25519")
    add("ed25519", presented, [root])
    presented, root = _chain("p521", kind="ec521", hash_name="sha512")
    add("p521", presented, [root])
    presented, root = _chain("p384", kind="ec384", hash_name="sha384")
    add("p384", presented, [root])
    root = make("rsa chain root", None, ca=True, own_key=key("rsa2048", 6))
    add("rsa2048", [make(host("rsa2048"), root, ca=False, own_key=key("rsa2048", 7))], [root])

    # Constraints.
    for name, permitted, excluded in (("name_constraints_ok", [".test"], None),
                                      ("name_constraints_violated", ["example.com"], None),
                                      ("name_constraints_excluded", None, [host("name_constraints_excluded")])):
        root = make(f"{name} root", None, ca=True)
        constraint = x509.NameConstraints([x509.DNSName(p) for p in permitted] if permitted else None,
                                          [x509.DNSName(e) for e in excluded] if excluded else None)
        inter = make(f"{name} int", root, ca=True, extensions=[(constraint, True)])
        add(name, [make(host(name), inter, ca=False), inter], [root])
    root = make("pathlen0 root", None, ca=True, path_length=0)
    inter = make("pathlen0 int", root, ca=True)
    add("path_length_exceeded", [make(host("path_length_exceeded"), inter, ca=False), inter], [root])
    root = make("pathlen ok root", None, ca=True, path_length=1)
    inter = make("pathlen ok int", root, ca=True, path_length=0)
    add("path_length_ok", [make(host("path_length_ok"), inter, ca=False), inter], [root])
    not_ca = make("not a ca", None, ca=False, names=[])
    add("issuer_not_ca", [make(host("issuer_not_ca"), not_ca, ca=False)], [not_ca])
    root = make("no certsign root", None, ca=True)
    inter = make("no certsign int", root, ca=True, key_usage=_usage(False))
    add("issuer_without_cert_sign", [make(host("issuer_without_cert_sign"), inter, ca=False), inter], [root])

    # Extended key usage and key usage.
    simple("eku_client_only", eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    simple("eku_any_only", eku=[ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE])
    simple("eku_absent", eku=None)
    simple("eku_server_and_client", eku=[ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH])
    simple("leaf_key_usage_cert_sign_only", key_usage=_usage(False, digital_signature=False, key_cert_sign=True))
    for name, usages in (("intermediate_eku_client", [ExtendedKeyUsageOID.CLIENT_AUTH]),
                         ("intermediate_eku_server", [ExtendedKeyUsageOID.SERVER_AUTH])):
        root = make(f"{name} root", None, ca=True)
        inter = make(f"{name} int", root, ca=True, extensions=[(x509.ExtendedKeyUsage(usages), False)])
        add(name, [make(host(name), inter, ca=False), inter], [root])

    # Path building: cross signatures, order, extras.
    old = make("old cross root", None, ca=True, not_before=NOW - 900 * DAY, not_after=NOW - DAY)
    new = make("new cross root", None, ca=True)
    new_by_old = make("new cross root", old, ca=True, own_key=new.key)
    inter = make("cross int", new, ca=True)
    leaf_cert = make(host("cross_signed_expired_root"), inter, ca=False)
    add("cross_signed_expired_root", [leaf_cert, inter, new_by_old], [new, old])
    leaf_cert = make(host("cross_signed_only_expired_root_trusted"), inter, ca=False)
    add("cross_signed_only_expired_root_trusted", [leaf_cert, inter, new_by_old], [old])
    other = make("other cross root", None, ca=True)
    inter_by_other = make("cross int", other, ca=True, own_key=inter.key)
    leaf_cert = make(host("cross_signed_second_sent"), inter, ca=False)
    add("cross_signed_second_sent", [leaf_cert, inter, inter_by_other], [other])
    leaf_cert = make(host("cross_signed_first_sent"), inter, ca=False)
    add("cross_signed_first_sent", [leaf_cert, inter_by_other, inter], [other])
    presented, root = _chain("out_of_order", depth=3)
    add("out_of_order", [presented[0], presented[3], presented[1], presented[2]], [root])
    presented, root = _chain("extra_unrelated")
    add("extra_unrelated", [*presented, make("unrelated ca", None, ca=True)], [root])

    # Odd encodings.
    root = make("dup root", None, ca=True)  # (an OpenSSL server refuses to load such a leaf)
    inter = make("dup int", root, ca=True, edit=derkit.with_duplicate_extension)
    add("duplicate_extension_intermediate", [make(host("duplicate_extension_intermediate"), inter, ca=False),
                                             inter], [root])
    root = make("v2 root", None, ca=True)
    add("v2_leaf", [make(host("v2_leaf"), root, ca=False, edit=derkit.as_v2)], [root])
    root = make("v4 root", None, ca=True)  # a version OpenSSL reads and exporter/der.py refuses
    inter = make("v4 int", root, ca=True, edit=lambda f: [derkit.tlv(0xA0, derkit.tlv(0x02, b"\x03")), *f[1:]])
    add("unknown_version_intermediate", [make(host("unknown_version_intermediate"), inter, ca=False), inter], [root])
    root = make("v1 leaf root", None, ca=True)
    add("v1_leaf", [make(host("v1_leaf"), root, ca=False, edit=derkit.as_v1)], [root])
    critical = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    simple("unknown_critical_extension", extensions=[(critical, True)])
    root = make("bad signature root", None, ca=True)
    good = make(host("bad_signature"), root, ca=False)
    add("bad_signature", [Cert(good.der[:-3] + bytes([good.der[-3] ^ 1]) + good.der[-2:], good.key, good.name)],
        [root])
    return found
