"""Resolved targets: static targets plus Prometheus file_sd files, watched for changes.

:func:`resolve_targets` turns a :class:`~exporter.config.Config` and the groups read from target files
into the flat list the scheduler probes. :class:`TargetFileWatcher` polls the files of every
``target_files`` entry (stat first, content hash only when the stat changed; globs are re-expanded on
every poll so new files are picked up). A file that stops parsing keeps its last good content and is
reported (log line, ``certpager_exporter_target_file_valid{file}`` = 0); a deleted file drops its
targets, as in Prometheus.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import Field, TypeAdapter, ValidationError, field_validator

from certpager.config import StrictModel, parse_yaml, validation_problems, yaml_problem
from exporter.config import Config, Module, TargetFile, _check_labels

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ResolvedTarget:
    """One target as probed: everything the scheduler and the renderer need, already merged."""

    target: str
    module_name: str
    module: Module
    labels: Mapping[str, str]
    interval: float
    thresholds: Mapping[str, float]
    address: str | None = None
    source: str = "config"  # "config" or the target file it came from

    @property
    def key(self) -> str:
        """Targets are unique by name: the ``target`` label must identify one series set."""
        return self.target


class SDGroup(StrictModel):
    """One entry of a Prometheus file_sd file."""

    targets: list[str]
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels", mode="before")
    @classmethod
    def _drop_internal(cls, value: Any) -> Any:
        # Prometheus drops "__"-prefixed labels after relabelling; file_sd files written for
        # Prometheus often carry __meta_* labels, so ignore them rather than reject the file.
        if isinstance(value, dict):
            return {k: v for k, v in value.items() if not (isinstance(k, str) and k.startswith("__"))}
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value)

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item.strip():
                raise ValueError("targets must be non-empty strings")
        return value


_GROUPS = TypeAdapter(list[SDGroup])


class TargetFileError(ValueError):
    """A target file cannot be read or parsed; the message names the file and the key path."""


def parse_sd_file(path: str, text: str) -> list[SDGroup]:
    """Parse file_sd content (JSON for ``.json``, else YAML); raises TargetFileError."""
    kind = "JSON" if path.endswith(".json") else "YAML"
    try:
        data = json.loads(text) if kind == "JSON" else parse_yaml(text)
    except RecursionError:
        # A file nested ~1,000 levels deep: both parsers recurse per level.
        raise TargetFileError(f"{path}: invalid {kind}: nested too deeply") from None
    except yaml.MarkedYAMLError as exc:
        raise TargetFileError(f"{path}: invalid YAML: {yaml_problem(exc)}") from None
    except (ValueError, yaml.YAMLError) as exc:
        raise TargetFileError(f"{path}: invalid {kind}: {exc}") from None
    if data is None:
        return []
    if not isinstance(data, list):
        raise TargetFileError(f"{path}: expected a list of {{targets: [...], labels: {{...}}}} groups")
    try:
        return _GROUPS.validate_python(data)
    except ValidationError as exc:
        # One line per problem, each naming the file (--config.check prints them as they are).
        problems = "\n".join(f"{path}: {key}: {msg}" if key else f"{path}: {msg}"
                             for key, msg in validation_problems(exc))
        raise TargetFileError(problems) from None
    except RecursionError:
        raise TargetFileError(f"{path}: nested too deeply") from None


def resolve_targets(
    config: Config, file_groups: Iterable[tuple[TargetFile, str, Sequence[SDGroup]]] = ()
) -> tuple[list[ResolvedTarget], list[str]]:
    """Static targets first, then file_sd targets; returns (targets, warnings about dropped duplicates)."""
    modules = config.all_modules
    default_interval = config.global_.scrape_interval
    share = _Sharer()
    out: dict[str, ResolvedTarget] = {}
    warnings: list[str] = []
    for t in config.targets:
        out[t.target] = ResolvedTarget(
            target=t.target, module_name=t.module, module=modules[t.module], labels=share(t.labels),
            interval=t.interval or default_interval,
            thresholds=share(config.thresholds_for(t.labels, t.thresholds)), address=t.address,
        )
    for tf, path, groups in file_groups:
        for group in groups:
            labels, thresholds = share(group.labels), share(config.thresholds_for(group.labels, None))
            for name in group.targets:
                if name in out:
                    warnings.append(f"{path}: target {name!r} is already defined by {out[name].source}; ignored")
                    continue
                out[name] = ResolvedTarget(
                    target=name, module_name=tf.module, module=modules[tf.module], labels=labels,
                    interval=tf.interval or default_interval, thresholds=thresholds, source=path,
                )
    return list(out.values()), warnings


class _Sharer:
    """Hands out one shared read-only mapping per distinct content: 10,000 targets, a few label sets."""

    def __init__(self) -> None:
        self._seen: dict[tuple[tuple[str, Any], ...], Mapping[str, Any]] = {}

    def __call__(self, mapping: Mapping[str, Any]) -> Mapping[str, Any]:
        key = tuple(sorted(mapping.items()))
        found = self._seen.get(key)
        if found is None:
            found = self._seen[key] = MappingProxyType(dict(mapping))
        return found


@dataclass(slots=True)
class _FileState:
    stat: tuple[int, int] | None = None  # (mtime_ns, size) of the last read
    digest: str = ""
    groups: list[SDGroup] = field(default_factory=list)  # last good content
    error: str | None = None


class TargetFileWatcher:
    """Polls the files of ``target_files`` entries; :meth:`poll` says whether the target set changed."""

    def __init__(
        self,
        entries: Sequence[TargetFile],
        *,
        base_dir: Path,
        clock: Callable[[], float],
        on_error: Callable[[str], None] | None = None,
        previous: TargetFileWatcher | None = None,
    ) -> None:
        """``previous`` (on reload) hands over each file's last good content, so a file that is
        broken at reload time keeps its targets instead of losing them."""
        self._entries = list(entries)
        self._on_error = on_error
        self._inherited: dict[str, _FileState] = {}
        if previous is not None:
            self._inherited = {path: state for files in previous._files for path, state in files.items()}
        self._base = base_dir
        self._clock = clock
        self._due = [float("-inf")] * len(self._entries)
        self._files: list[dict[str, _FileState]] = [{} for _ in self._entries]

    def next_due(self) -> float | None:
        """Monotonic time of the next poll, or None when there are no target files."""
        return min(self._due, default=None)

    def poll(self, *, force: bool = False) -> bool:
        """Poll every entry that is due (all with ``force``); True if any file's targets changed."""
        now = self._clock()
        changed = False
        for i, entry in enumerate(self._entries):
            if force or now >= self._due[i]:
                changed |= self._poll_entry(i, entry)
                self._due[i] = now + entry.refresh_interval
        return changed

    def groups(self) -> list[tuple[TargetFile, str, Sequence[SDGroup]]]:
        """The last good groups of every file, in a stable order."""
        return [
            (entry, path, state.groups)
            for entry, files in zip(self._entries, self._files, strict=True)
            for path, state in sorted(files.items())
        ]

    def file_status(self) -> dict[str, bool]:
        """File -> whether its last read parsed (for certpager_exporter_target_file_valid)."""
        return {path: state.error is None for files in self._files for path, state in files.items()}

    def _expand(self, entry: TargetFile) -> list[str]:
        found: set[str] = set()
        for pattern in entry.files:
            full = pattern if os.path.isabs(pattern) else str(self._base / pattern)
            found.update(p for p in glob.glob(full) if os.path.isfile(p))
        return sorted(found)

    def _poll_entry(self, i: int, entry: TargetFile) -> bool:
        files = self._files[i]
        present = self._expand(entry)
        changed = False
        for gone in set(files) - set(present):
            log.info("target file removed", extra={"kv": {"file": gone}})
            del files[gone]
            changed = True
        for path in present:
            if path not in files:
                inherited = self._inherited.get(path)
                files[path] = _FileState(groups=inherited.groups, error=inherited.error) if inherited else _FileState()
            changed |= self._read(files[path], path)
        return changed

    def _read(self, state: _FileState, path: str) -> bool:
        try:
            st = os.stat(path)
            if state.stat == (st.st_mtime_ns, st.st_size) and state.error is None:
                return False
            raw = Path(path).read_bytes()
        except OSError as exc:
            return self._fail(state, path, f"{path}: cannot read file: {exc.strerror or exc}")
        state.stat = (st.st_mtime_ns, st.st_size)
        digest = hashlib.sha256(raw).hexdigest()
        if digest == state.digest and state.error is None:
            return False
        try:
            groups = parse_sd_file(path, raw.decode("utf-8"))
        except (TargetFileError, UnicodeDecodeError) as exc:
            return self._fail(state, path, str(exc))
        except Exception as exc:
            # A parser bug on one file's content would otherwise fail the watcher at every poll (and the
            # exporter at every start): the file is invalid, its last good content stays, the bug is logged.
            log.exception("target file could not be parsed", extra={"kv": {"file": path}})
            return self._fail(state, path, f"{path}: cannot parse: {type(exc).__name__}")
        if state.error is not None:
            log.info("target file valid again", extra={"kv": {"file": path}})
        state.digest, state.groups, state.error = digest, groups, None
        return True

    def _fail(self, state: _FileState, path: str, message: str) -> bool:
        if state.error != message:
            log.error("target file invalid, keeping its last good content", extra={"kv": {"err": message}})
            if self._on_error is not None:
                self._on_error(message)
        state.error = message
        state.stat = None  # re-read on the next poll even if the stat does not change
        return False
