"""Errors shared by both services.

    CertpagerError
    └── ConfigError      a config file (or a file it names) is unreadable or invalid
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class CertpagerError(Exception):
    """Base of every error certpager raises on purpose."""


class ConfigError(CertpagerError):
    """A config file is invalid. ``str()`` names the file, the key path and what was expected."""

    def __init__(self, path: Path | str, problems: Sequence[tuple[str, str]]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        lines = [f"{self.path}: {key}: {msg}" if key else f"{self.path}: {msg}" for key, msg in problems]
        super().__init__("\n".join(lines))
