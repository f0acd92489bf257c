"""The probe registry: one ProbeFn per module kind, blackbox's ``Probers`` map.

Kind ``file`` lives in exporter/probes/file.py and is imported on first use, so the registry (and the
network probes) work even where that module cannot be imported.
"""

from __future__ import annotations

import importlib

from exporter.config import ModuleKind
from exporter.probes import tls
from exporter.probes.base import ProbeFn, ProbeRequest, ProbeResult


async def _file_probe(request: ProbeRequest) -> list[ProbeResult]:
    module = importlib.import_module("exporter.probes.file")
    fn: ProbeFn = module.probe
    return await fn(request)


PROBES: dict[ModuleKind, ProbeFn] = {
    "tls": tls.probe,
    "starttls": tls.probe,
    "file": _file_probe,
}


def get_probe(kind: ModuleKind) -> ProbeFn:
    """The probe function for a module kind; raises KeyError for an unknown kind."""
    return PROBES[kind]
