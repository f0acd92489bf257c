"""YAML config loading shared by the exporter and the bridge.

One path for every config file: read YAML (duplicate keys are errors), expand ``$VAR`` / ``${VAR}``
in string values from an injected environment (``$$`` is a literal dollar), validate against a strict
pydantic model, and turn every problem into a :class:`ConfigError` that names the file, the key path
and what was expected. Secrets are never echoed back in errors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, ValidationError

from certpager.errors import ConfigError

T = TypeVar("T", bound=BaseModel)

_ENV_RE = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|y|w|d|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


class StrictModel(BaseModel):
    """Base for config models: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_duration(value: object) -> float:
    """Parse a Prometheus-style duration (``1h30m``, ``30d``, ``500ms``, ``0``) or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 5m, 7d")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("expected a non-negative duration")
        return float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if not isinstance(value, str):
        raise ValueError("expected a duration like 30s, 5m, 7d")
    text = value.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        # Never the value itself: it may be a secret put on the wrong line ($VAR expanded, or a typo).
        raise ValueError("expected a duration like 30s, 5m, 7d")
    return total


def format_duration(seconds: float) -> str:
    """Render seconds back in the shortest Prometheus duration form (for docs and --config.check)."""
    if seconds == 0:
        return "0s"
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds}s"


Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration)]
"""A duration in seconds, written in config as ``30s``, ``5m``, ``7d`` or a plain number of seconds."""


def expand_env(value: str, env: Mapping[str, str], *, where: str) -> str:
    """Expand ``$VAR`` and ``${VAR}``; an unset variable is an error naming it (never its value)."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(2)
        if name not in env:
            raise _EnvError(where, f"environment variable ${name} is not set")
        return env[name]

    return _ENV_RE.sub(substitute, value)


class _EnvError(Exception):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


_TOKEN_RUN_RE = re.compile(r"[A-Za-z0-9]{16,}")


def shown_key(key: object) -> str:
    """A mapping key as an error may print it; one that looks like a token is hidden.

    Map keys are user data, and a secret pasted where a name belongs (``routing_keys: {<key>: prod}``)
    would otherwise be printed in the key path of its own error. Hidden: over 64 characters, a run of 24
    letters and digits, or a run of 16 that mixes both. Names like ``certificate_expiring_30_days`` or
    ``production`` are shown.
    """
    text = str(key)
    if len(text) > 64:
        return "<hidden key>"
    for run in _TOKEN_RUN_RE.findall(text):
        if len(run) >= 24 or (any(c.isdigit() for c in run) and any(c.isalpha() for c in run)):
            return "<hidden key>"
    return text


def _expand_tree(node: Any, env: Mapping[str, str], path: str) -> Any:
    if isinstance(node, str):
        return expand_env(node, env, where=path)
    if isinstance(node, dict):
        return {k: _expand_tree(v, env, f"{path}.{shown_key(k)}" if path else shown_key(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_tree(v, env, f"{path}[{i}]") for i, v in enumerate(node)]
    return node


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys instead of silently keeping the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path | str) -> Any:
    """Read one YAML document; unreadable files and syntax errors become ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, [("", f"cannot read file: {exc.strerror or exc}")]) from exc
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(path, [("", f"invalid YAML: {exc}")]) from exc


def _error_key(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(f".{shown_key(item)}" if parts else shown_key(item))
    return "".join(parts)


def _error_message(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    msg = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg


def validation_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """Turn pydantic errors into (key path, expectation) pairs; input values are never echoed."""
    return [(_error_key(tuple(err["loc"])), _error_message(err)) for err in exc.errors(include_input=False)]


def validate(model: type[T], data: Any, *, path: Path | str, context: Any = None) -> T:
    """Validate already-loaded data against a model, raising ConfigError that names ``path``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, [("", "expected a mapping at the top level")])
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(path, validation_problems(exc)) from None


def load_config(
    model: type[T], path: Path | str, *, env: Mapping[str, str] | None = None, context: Any = None
) -> T:
    """Read ``path``, expand ``$VAR`` from ``env`` (when given) and validate it against ``model``."""
    data = read_yaml(path)
    if env is not None:
        try:
            data = _expand_tree(data, env, "")
        except _EnvError as exc:
            raise ConfigError(path, [(exc.key, exc.message)]) from None
    return validate(model, data, path=path, context=context)


def read_secret_file(path: Path | str, *, key: str, config_path: Path | str) -> str:
    """Read a secret from a file (trailing newline stripped); errors name the key, never the content."""
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(config_path, [(key, f"cannot read secret file {path}: {exc.strerror or exc}")]) from exc
    if not value:
        raise ConfigError(config_path, [(key, f"secret file {path} is empty")])
    return value
