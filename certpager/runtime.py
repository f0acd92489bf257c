"""Process-wide runtime settings for the long-running services.

Only the CLIs (``certpager exporter``, ``certpager bridge``) call these, once, before serving: tests
and the demo run the apps with Python's defaults.
"""

from __future__ import annotations

import gc

GC_GEN0_THRESHOLD = 10_000
"""Allocations of container objects between young-generation collections (Python's default: 700)."""


def tune_gc() -> None:
    """Freeze what startup created and collect the young generation less often.

    A probe allocates a few hundred short-lived containers (frames, futures, results), nearly all
    freed by reference counting, yet the default threshold ran a young collection every couple of
    probes and a full one over every module's objects now and then: 3.5% of the exporter's CPU at
    10,000 probes (bench, docs/performance.md). The frozen startup objects (modules, classes, config
    models) are never scanned again; cyclic garbage waits at most 10,000 allocations to be freed.
    The bridge gets the same policy: measured within the noise there (483-511 against 511-551 µs of
    CPU per single-alert webhook, bench/bridge_ingest.py, two interleaved runs each).
    """
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
