"""The probe registry: one ProbeFn per module kind, blackbox's ``Probers`` map.

A prober's module is imported on first use, not with this package: the modules it builds on (certs, trust,
policy) import ``exporter.probes.base``, which imports this package first, and an eager import of the
probers here would import them back half-made (``certpager probe`` died of that cycle). It also keeps
kind ``file`` (exporter/probes/file.py) out of the way of the network probes where it cannot be imported.
"""

from __future__ import annotations

import importlib

from exporter.config import ModuleKind
from exporter.probes.base import ProbeFn

PROBERS: dict[ModuleKind, str] = {  # kind -> the module whose ``probe`` it is
    "tls": "exporter.probes.tls",
    "starttls": "exporter.probes.tls",
    "file": "exporter.probes.file",
}


def get_probe(kind: ModuleKind) -> ProbeFn:
    """The probe function for a module kind; raises KeyError for an unknown kind."""
    fn: ProbeFn = importlib.import_module(PROBERS[kind]).probe
    return fn
