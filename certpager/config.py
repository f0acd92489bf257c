"""YAML config loading shared by the exporter and the bridge.

One path for every config file: read YAML (duplicate keys are errors), expand ``$VAR`` / ``${VAR}``
in string values from an injected environment (``$$`` is a literal dollar), validate against a strict
pydantic model, and turn every problem into a :class:`ConfigError` that names the file, the key path
and what was expected. Secrets are never echoed back in errors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
)

from certpager.errors import ConfigError

T = TypeVar("T", bound=BaseModel)

_ENV_RE = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|y|w|d|h|m|s)")
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


class StrictModel(BaseModel):
    """Base for config models: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


MAX_DURATION = 100 * _UNIT_SECONDS["y"]
"""The longest duration any setting accepts (100y): beyond it a timer overflows the event loop."""
_DURATION_EXPECTED = "expected a duration like 30s, 5m, 7d"


def parse_duration(value: object) -> float:
    """Parse a Prometheus-style duration (``1h30m``, ``30d``, ``500ms``, ``0``) or a number of seconds.

    The one duration syntax of every config key and command-line flag. Raises ValueError for
    anything that is not a finite duration from 0 to :data:`MAX_DURATION`.
    """
    if isinstance(value, bool):
        raise ValueError(_DURATION_EXPECTED)
    if isinstance(value, timedelta):
        return _bounded(value.total_seconds())
    if isinstance(value, int):
        # float() of an int of 309 digits or more raises OverflowError: compare first.
        return _bounded(float(max(-1, min(value, MAX_DURATION + 1))))
    if isinstance(value, float):
        return _bounded(value)
    if not isinstance(value, str):
        raise ValueError(_DURATION_EXPECTED)
    text = value.strip()
    if text.startswith("-"):
        raise ValueError("expected a non-negative duration")
    if _NUMBER_RE.fullmatch(text):
        return _bounded(float(text))  # a plain number of seconds, as in YAML: "5" from a flag
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        # Never the value itself: it may be a secret put on the wrong line ($VAR expanded, or a typo).
        raise ValueError(_DURATION_EXPECTED)
    return _bounded(total)


def _bounded(seconds: float) -> float:
    if not math.isfinite(seconds):  # .inf, .nan in YAML; an int too large for a float
        raise ValueError("expected a finite duration" if seconds > 0 or math.isnan(seconds) else
                         "expected a non-negative duration")
    if seconds < 0:
        raise ValueError("expected a non-negative duration")
    if seconds > MAX_DURATION:
        raise ValueError("expected a duration of at most 100y")
    return seconds


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


CHECK_FILES = {"check_files": True}
"""Validation context under which :data:`ReadableFile` paths are opened (config loads and reloads)."""


def check_readable_file(path: Path, info: ValidationInfo) -> Path:
    """A file the service opens later must be readable now: a typo is a load error, not failed probes.

    Checked when validating with the :data:`CHECK_FILES` context (loading a config file, a command's
    flags); a model built in code describes files that may appear later, and the probe reports them.
    """
    if not (isinstance(info.context, Mapping) and info.context.get("check_files")):
        return path
    try:
        with open(path, "rb") as file:
            file.read(1)
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory, expected a file") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    return path


ReadableFile = Annotated[Path, AfterValidator(check_readable_file)]
"""A path to a file that must exist and be readable when the config is loaded or reloaded."""


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
                None, None, f"duplicate key {shown_key(key)!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _construct_int(loader: _UniqueKeyLoader, node: yaml.ScalarNode) -> Any:
    try:
        return yaml.constructor.SafeConstructor.construct_yaml_int(loader, node)
    except ValueError:  # Python refuses int() of more than 4,300 digits
        raise yaml.constructor.ConstructorError(
            None, None, "integer with too many digits", node.start_mark
        ) from None


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What a YAML error says, with its line and column, but never the text of the line.

    PyYAML's own message quotes the offending line, and that line may hold a password.
    """
    if not isinstance(exc, yaml.MarkedYAMLError):
        return "cannot parse"
    parts = [part for part in (exc.context, exc.problem) if part]
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + ("; ".join(parts) or "cannot parse")


def parse_yaml(text: str) -> Any:
    """One YAML document, as every config file is read: duplicate keys and over-long integers are
    errors (yaml.YAMLError with a line and column); deep nesting raises RecursionError."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def read_yaml(path: Path | str) -> Any:
    """Read one YAML document; unreadable files, bad encoding and syntax errors become ConfigError."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(path, [("", f"cannot read file: {exc.strerror or exc}")]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(path, [("", f"invalid YAML: line {line}: not valid UTF-8")]) from None
    try:
        return parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(path, [("", f"invalid YAML: {yaml_problem(exc)}")]) from None
    except RecursionError:
        raise ConfigError(path, [("", "invalid YAML: nested too deeply")]) from None


class Problems(ValueError):
    """Raised by a model validator to report several problems at once, each with its own key path.

    :func:`validation_problems` turns it into one line per problem (not only the first bad target).
    """

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{key}: {msg}" for key, msg in problems))
        self.problems = list(problems)


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
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_input=False):
        key = _error_key(tuple(err["loc"]))
        error = err.get("ctx", {}).get("error")
        if isinstance(error, Problems):
            out += [(f"{key}.{sub}" if key and sub else key or sub, msg) for sub, msg in error.problems]
        else:
            out.append((key, _error_message(err)))
    return out


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
    except RecursionError:
        raise ConfigError(path, [("", "nested too deeply")]) from None


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
        except RecursionError:
            raise ConfigError(path, [("", "nested too deeply")]) from None
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
