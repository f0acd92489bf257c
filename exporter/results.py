"""The results store and the immutable snapshot /metrics renders.

The scheduler writes one :class:`TargetEntry` per target as each probe finishes. An entry keeps the
target's config, a small summary of the latest probe and its pre-rendered blocks (see
exporter.render), not the ProbeResult objects: at 10,000 targets the rendered text is already most
of the exporter's memory, so results are rendered once and dropped. Readers get a :class:`Snapshot`:
an immutable mapping built lazily (only when something changed since the last one) and swapped in
one assignment, so a scrape sees either the old or the new set of targets, never half of each.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from exporter.config import MetricsSettings
from exporter.probes.base import ProbeResult, Reason
from exporter.render import (
    SHARED_FAMILIES,
    Blocks,
    TargetView,
    iter_families,
    join_target,
    relabel,
    render_target,
)
from exporter.targets import ResolvedTarget

_MIN_INTERN_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class TargetEntry:
    """One target: its config, a summary of its latest probe, and the rendered blocks."""

    target: ResolvedTarget
    success: bool  # any address/file of the latest probe succeeded
    reason: Reason | None  # the first failure reason of the latest probe
    probed_at: float  # unix seconds the latest probe started
    has_chain: bool  # the blocks hold a chain (from the latest probe or the last good one)
    blocks: Blocks


class Snapshot(Mapping[str, TargetEntry]):
    """Target key -> entry; immutable. ``chunks()`` streams the pre-rendered families."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Mapping[str, TargetEntry]) -> None:
        self._entries = MappingProxyType(dict(entries))

    def __getitem__(self, key: str) -> TargetEntry:
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def chunks(self) -> Iterator[bytes]:
        """The tls_* part of /metrics, one chunk per family."""
        return iter_families(entry.blocks for entry in self._entries.values())

    def render(self) -> bytes:
        """The tls_* part of /metrics in one piece."""
        return b"".join(self.chunks())


def view_of(target: ResolvedTarget) -> TargetView:
    """The renderer's view of a resolved target."""
    return TargetView(target=target.target, labels=target.labels, thresholds=target.thresholds,
                      probe_all_ips=target.module.probe_all_ips)


class ResultStore:
    """Mutable store owned by the scheduler; hands out immutable snapshots."""

    def __init__(self, settings: MetricsSettings | None = None) -> None:
        self._settings = settings or MetricsSettings()
        self._entries: dict[str, TargetEntry] = {}
        self._snapshot: Snapshot | None = Snapshot({})
        self._interned: dict[bytes, bytes] = {}
        self._intern_limit = _MIN_INTERN_LIMIT

    def set_settings(self, settings: MetricsSettings) -> None:
        """Change the label switches (reload); each target's series follow from its next probe."""
        self._settings = settings

    def record(self, target: ResolvedTarget, results: Sequence[ProbeResult]) -> None:
        """Store the latest results of ``target`` (replacing the previous ones), rendered."""
        previous = self._entries.get(target.key)
        fallback = previous.blocks if previous is not None and previous.has_chain else None
        success = any(r.success for r in results)
        blocks = render_target(view_of(target), results, self._settings, fallback, self._intern)
        reason = next((r.reason for r in results if r.reason is not None), None)
        probed_at = min((r.started_at for r in results), default=0.0)
        has_chain = any(r.chain for r in results) if success else fallback is not None
        self._put(TargetEntry(target, success, reason, probed_at, has_chain, blocks))

    def update_target(self, target: ResolvedTarget) -> None:
        """A target's labels or thresholds changed: re-render its cached series under the new config."""
        entry = self._entries.get(target.key)
        if entry is not None and entry.target != target:
            blocks = relabel(entry.blocks, view_of(entry.target), view_of(target), self._intern)
            self._put(TargetEntry(target, entry.success, entry.reason, entry.probed_at, entry.has_chain, blocks))

    def remove(self, key: str) -> None:
        """Drop a target and its results (it leaves no stale series)."""
        if self._entries.pop(key, None) is not None:
            self._snapshot = None

    def get(self, key: str) -> TargetEntry | None:
        return self._entries.get(key)

    def snapshot(self) -> Snapshot:
        """The current immutable snapshot (rebuilt only if something changed)."""
        if self._snapshot is None:
            self._snapshot = Snapshot(self._entries)
        return self._snapshot

    def _put(self, entry: TargetEntry) -> None:
        self._entries[entry.target.key] = entry
        self._snapshot = None
        if len(self._interned) > self._intern_limit:
            self._rebuild_interned()

    def _intern(self, piece: bytes) -> bytes:
        return self._interned.setdefault(piece, piece)

    def _rebuild_interned(self) -> None:
        """Forget suffixes no entry uses any more (rotated certificates); amortised O(1) per record."""
        table: dict[bytes, bytes] = {}
        interned = self._interned
        for entry in self._entries.values():
            for family in SHARED_FAMILIES:
                pieces = entry.blocks[family]
                assert isinstance(pieces, tuple)
                for piece in pieces[1::2]:
                    if piece in interned:  # a leaf's line ends are not interned (exporter/render.py)
                        table[piece] = piece
        self._interned = table
        self._intern_limit = max(_MIN_INTERN_LIMIT, 2 * len(table))


def render_single(target: ResolvedTarget, results: Sequence[ProbeResult], settings: MetricsSettings) -> bytes:
    """Render one on-demand probe (/probe) with the same renderer."""
    return join_target(render_target(view_of(target), results, settings))
