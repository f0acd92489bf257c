"""Prometheus text rendering of probe results (the metric contract of docs/metrics.md).

Rendering is split so /metrics stays cheap at 10,000 targets: :func:`render_target` is a pure
function from one target's results to one pre-encoded block of sample lines per metric family; it
runs once when a result changes. At scrape time :func:`join_families` only concatenates, family by
family, so HELP/TYPE appear once and every family's samples are contiguous. /probe uses the same two
functions for its single result.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from exporter.config import MetricsSettings
from exporter.probes.base import CertificateInfo, ProbeResult

# (name, help); every family is a gauge. The order is the exposition order.
FAMILIES: tuple[tuple[str, str], ...] = (
    ("tls_probe_success", "1 if a handshake completed and a chain was read, else 0."),
    ("tls_probe_duration_seconds", "Duration of each probe phase in seconds."),
    ("tls_probe_error_info", "1 for the reason the probe failed."),
    ("tls_cert_not_after_timestamp_seconds", "NotAfter of every certificate the peer sent, unix seconds."),
    ("tls_cert_not_before_timestamp_seconds", "NotBefore of every certificate the peer sent, unix seconds."),
    ("tls_cert_info", "1 per certificate the peer sent, with descriptive labels."),
    ("tls_chain_earliest_expiry_timestamp_seconds", "Earliest NotAfter over the presented chain, unix seconds."),
    ("tls_chain_verified", "1 if the presented chain verifies against the trust store, else 0."),
    ("tls_verify_error_info", "1 for the reason the chain does not verify."),
    ("tls_hostname_verified", "1 if the leaf certificate matches the name asked for, else 0."),
    ("tls_connection_info", "1, with the negotiated TLS version and cipher."),
    ("tls_cert_expiry_threshold_seconds", "Configured expiry threshold per alert class, seconds."),
    ("tls_cert_policy_violation", "1 per violated policy, 0 per checked one."),
)
_INDEX = {name: i for i, (name, _) in enumerate(FAMILIES)}
(SUCCESS, DURATION, ERROR, NOT_AFTER, NOT_BEFORE, INFO, EARLIEST, VERIFIED, VERIFY_ERROR, HOSTNAME, CONNECTION,
 THRESHOLD, POLICY) = range(len(FAMILIES))
HEADERS: tuple[bytes, ...] = tuple(
    f"# HELP {name} {help_text}\n# TYPE {name} gauge\n".encode() for name, help_text in FAMILIES
)

Block = bytes | tuple[bytes, ...]
Blocks = tuple[Block, ...]
"""Per family (indexed like FAMILIES), the target's sample lines: one bytes object (b"" for none), or
for SHARED_FAMILIES a tuple of pieces to concatenate. One object per family, not a tuple of one: a
tuple costs 56 bytes, 500 KB per family at 10,000 targets."""


def escape(value: str) -> str:
    """Escape a label value for the text format (backslash, double quote, newline)."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def format_value(value: float) -> str:
    """Format a sample value as Prometheus expects (integers without a fraction, +Inf, NaN)."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def label_prefix(pairs: Iterable[tuple[str, str]]) -> str:
    """Render ``name="value"`` pairs joined by commas (values escaped)."""
    return ",".join(f'{k}="{escape(v)}"' for k, v in pairs)


@dataclass(frozen=True, slots=True)
class TargetView:
    """What the renderer needs of a target: identity labels, thresholds and metric switches."""

    target: str
    labels: Mapping[str, str]
    thresholds: Mapping[str, float]
    probe_all_ips: bool = False


Intern = Callable[[bytes], bytes]
"""Returns one shared object for equal byte strings (see ResultStore); identity by default."""


def _no_intern(piece: bytes) -> bytes:
    return piece


def render_target(
    view: TargetView,
    results: Sequence[ProbeResult],
    settings: MetricsSettings,
    fallback: Blocks | None = None,
    intern: Intern = _no_intern,
) -> Blocks:
    """Render one target's results into per-family blocks.

    Certificate, chain, trust and connection families come from ``results`` when any of them
    succeeded; otherwise they are taken from ``fallback`` (the blocks of the last probe that read a
    chain): an endpoint that is down keeps exporting the dates it last presented, so expiry alerts do
    not resolve and re-fire while it is down.
    """
    base = base_labels(view)
    out = _Lines()
    for result in results:
        _render_probe(out.text, _result_prefix(base, result, view), result)
    use_results = fallback is None or any(r.success for r in results)
    if use_results:
        for result in results:
            _render_chain(out, _result_prefix(base, result, view), result, settings, intern)
    out.pieces[THRESHOLD] = _threshold_pieces(base, view, intern)
    blocks = out.blocks()
    if not use_results and fallback is not None:
        for i in CHAIN_FAMILIES:
            blocks[i] = fallback[i]
    return tuple(blocks)


CHAIN_FAMILIES = (NOT_AFTER, NOT_BEFORE, INFO, EARLIEST, VERIFIED, VERIFY_ERROR, HOSTNAME, CONNECTION, POLICY)
"""The families that describe a chain (kept from the last good probe while a target fails)."""
SHARED_FAMILIES = (NOT_AFTER, NOT_BEFORE, INFO, THRESHOLD)
"""Families stored as (head, suffix) pieces, because their line ends are shared between targets
(certificates of a common intermediate or root, thresholds); every odd piece is a line end, interned
unless it is a leaf's."""
TEXT_FAMILIES = tuple(i for i in range(len(FAMILIES)) if i not in SHARED_FAMILIES)
"""Families stored as one bytes object per target."""


class _Lines:
    """Per-family output: plain text lines, or (head, suffix) pieces for SHARED_FAMILIES."""

    __slots__ = ("pieces", "text")

    def __init__(self) -> None:
        self.text: list[list[str]] = [[] for _ in FAMILIES]
        self.pieces: list[list[bytes]] = [[] for _ in FAMILIES]

    def blocks(self) -> list[Block]:
        out: list[Block] = [b""] * len(FAMILIES)
        for i in TEXT_FAMILIES:
            if text := self.text[i]:
                out[i] = "".join(text).encode()
        for i in SHARED_FAMILIES:
            out[i] = tuple(self.pieces[i])
        return out


def base_labels(view: TargetView) -> str:
    """``target`` then the configured labels, sorted: the start of every series of the target."""
    return label_prefix([("target", view.target), *sorted(view.labels.items())])


def _threshold_pieces(base: str, view: TargetView, intern: Intern) -> list[bytes]:
    head = f"tls_cert_expiry_threshold_seconds{{{base}".encode()
    pieces: list[bytes] = []
    for cls, seconds in sorted(view.thresholds.items()):
        pieces += [head, intern(f',class="{cls}"}} {format_value(seconds)}\n'.encode())]
    return pieces


def relabel(blocks: Blocks, old: TargetView, new: TargetView, intern: Intern = _no_intern) -> Blocks:
    """Re-render blocks for a target whose labels or thresholds changed, without its results.

    Every series of a target starts with ``{`` and its base labels, and label values escape their
    quotes, so replacing that exact prefix cannot touch anything else.
    """
    before, after = ("{" + base_labels(old)).encode(), ("{" + base_labels(new)).encode()
    done: dict[bytes, bytes] = {}  # a head shared by several lines stays shared

    def swap(piece: bytes) -> bytes:
        if piece not in done:
            done[piece] = piece.replace(before, after)  # every line of a text block starts that way
        return done[piece]

    def swap_block(block: Block) -> Block:
        return swap(block) if isinstance(block, bytes) else tuple(swap(p) for p in block)

    out = [swap_block(block) if before != after else block for block in blocks]
    out[THRESHOLD] = tuple(_threshold_pieces(base_labels(new), new, intern))
    return tuple(out)


def _result_prefix(base: str, result: ProbeResult, view: TargetView) -> str:
    prefix = base
    if view.probe_all_ips and result.ip is not None:
        prefix += f',ip="{escape(result.ip)}"'
    if result.path is not None:
        prefix += f',path="{escape(result.path)}"'
    return prefix


def _render_probe(lines: list[list[str]], p: str, r: ProbeResult) -> None:
    lines[SUCCESS].append(f"tls_probe_success{{{p}}} {1 if r.success else 0}\n")
    for phase, seconds in sorted(r.durations.items()):
        # Microseconds are plenty for a phase, and 0.0029999999997016857 costs 10,000 targets' memory.
        lines[DURATION].append(f'tls_probe_duration_seconds{{{p},phase="{phase}"}} {format_value(round(seconds, 6))}\n')
    if r.reason is not None:
        lines[ERROR].append(f'tls_probe_error_info{{{p},reason="{r.reason}"}} 1\n')


def _render_chain(out: _Lines, p: str, r: ProbeResult, settings: MetricsSettings, intern: Intern) -> None:
    _render_certs(out.pieces, p, r.chain, settings, intern)
    lines = out.text
    earliest = r.earliest_expiry
    if earliest is not None:
        lines[EARLIEST].append(f"tls_chain_earliest_expiry_timestamp_seconds{{{p}}} {format_value(earliest)}\n")
    if r.chain_verified is not None:
        lines[VERIFIED].append(f"tls_chain_verified{{{p}}} {1 if r.chain_verified else 0}\n")
    if r.verify_reason is not None:
        lines[VERIFY_ERROR].append(f'tls_verify_error_info{{{p},reason="{r.verify_reason}"}} 1\n')
    if r.hostname_verified is not None:
        lines[HOSTNAME].append(f"tls_hostname_verified{{{p}}} {1 if r.hostname_verified else 0}\n")
    if r.tls_version is not None:
        conn = label_prefix([("version", r.tls_version), ("cipher", r.cipher or "")])
        lines[CONNECTION].append(f"tls_connection_info{{{p},{conn}}} 1\n")
    for policy, violated in sorted(r.policy_violations.items()):
        lines[POLICY].append(f'tls_cert_policy_violation{{{p},policy="{escape(policy)}"}} {1 if violated else 0}\n')


def _render_certs(pieces: list[list[bytes]], p: str, chain: Sequence[CertificateInfo], settings: MetricsSettings,
                  intern: Intern) -> None:
    # The part after the target's labels is the same for every target presenting the same
    # certificate (a shared intermediate or root, a wildcard leaf): it is interned, not repeated.
    if not chain:
        return
    heads = {i: f"{FAMILIES[i][0]}{{{p}".encode() for i in (NOT_AFTER, NOT_BEFORE, INFO)}
    for cert in chain:
        not_after, not_before, info = _cert_suffixes(cert, settings.cert_info_sans, settings.cert_info_fingerprint)
        if cert.index:
            # An intermediate or root recurs behind many targets: one copy of its line ends. A leaf
            # is not interned: most are one target's own (10,000 of them made a 1.25 MiB table); a
            # leaf many targets present (a wildcard) is shared through _cert_suffixes' cache while
            # it is among the 256 certificates rendered last, which a frequently probed one is.
            not_after, not_before, info = intern(not_after), intern(not_before), intern(info)
        pieces[NOT_AFTER] += [heads[NOT_AFTER], not_after]
        pieces[NOT_BEFORE] += [heads[NOT_BEFORE], not_before]
        pieces[INFO] += [heads[INFO], info]


@functools.lru_cache(maxsize=256)
def _cert_suffixes(cert: CertificateInfo, sans: bool, fingerprint: bool) -> tuple[bytes, bytes, bytes]:
    """The three line ends of a certificate. Cached (a few hundred: the intermediates and roots, which
    recur on every probe of every target behind them; leaves pass through)."""
    c = _cert_labels(cert)
    info = _info_labels(cert, sans, fingerprint)
    return (f"{c}}} {format_value(cert.not_after)}\n".encode(), f"{c}}} {format_value(cert.not_before)}\n".encode(),
            f"{c},{info}}} 1\n".encode())


def _cert_labels(cert: CertificateInfo) -> str:
    return "," + label_prefix(
        [("position", str(cert.position)), ("index", str(cert.index)), ("subject_cn", cert.subject_cn),
         ("issuer_cn", cert.issuer_cn), ("serial", cert.serial)]
    )


def _info_labels(cert: CertificateInfo, sans: bool, fingerprint: bool) -> str:
    pairs = []
    if sans:
        pairs.append(("sans", ",".join(cert.sans)))
    pairs += [("key_type", cert.key_type), ("key_bits", str(cert.key_bits)),
              ("signature_algorithm", cert.signature_algorithm)]
    if fingerprint:
        pairs.append(("fingerprint_sha256", cert.fingerprint_sha256))
    return label_prefix(pairs)


CHUNK_PIECES = 1024
"""At most this many pieces per chunk (~128 KB): a scrape never holds a whole 10 MB family at once.
Chunks of ~1 MB made each scrape at 10,000 targets lift the peak RSS by 5-6 MiB (the chunk, the
server's chunked-encoding copy and the socket's backlog, in glibc's heap until trimmed); at 128 KB
it is under 1.5 MiB, for the same /metrics time."""


def iter_families(blocks: Iterable[Blocks]) -> Iterator[bytes]:
    """Yield the exposition in bounded chunks: per non-empty family, HELP/TYPE then every target's samples."""
    entries = list(blocks)
    for i, header in enumerate(HEADERS):
        # itemgetter/chain keep the per-piece loop in C: ~100,000s of pieces at 10,000 targets.
        column = map(operator.itemgetter(i), entries)
        pieces: list[bytes] = (list(itertools.chain.from_iterable(cast(Iterator[tuple[bytes, ...]], column)))
                               if i in SHARED_FAMILIES else list(filter(None, cast(Iterator[bytes], column))))
        if not pieces:
            continue
        pieces.insert(0, header)
        for start in range(0, len(pieces), CHUNK_PIECES):
            yield b"".join(pieces[start:start + CHUNK_PIECES])


def join_target(blocks: Blocks) -> bytes:
    """One target's exposition (/probe): its non-empty families, each after its HELP/TYPE."""
    out: list[bytes] = []
    for header, block in zip(HEADERS, blocks, strict=True):
        if block:
            out.append(header)
            if isinstance(block, bytes):
                out.append(block)
            else:
                out += block
    return b"".join(out)


def join_families(blocks: Iterable[Blocks]) -> bytes:
    """Concatenate many targets' blocks family by family, with HELP/TYPE once per non-empty family."""
    return b"".join(iter_families(blocks))


def family_index(name: str) -> int:
    """Index of a family in FAMILIES (for tests and tools)."""
    return _INDEX[name]
