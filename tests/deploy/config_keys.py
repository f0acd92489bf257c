"""Every key of a config schema (pydantic models), with its default as docs/configuration.md writes it.

Keys are dotted paths as written in YAML: ``modules.<name>.tls.ca_file`` for a map keyed by the user's
names, ``targets[].labels`` for a list of sections. A nested section's keys are listed, not the section.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from certpager.config import format_duration

PLACEHOLDERS = {"modules": "<name>", "automation": "<class>", "routing_keys": "<environment>"}


def _section(annotation: Any) -> tuple[type[BaseModel], str] | None:
    """(model, path suffix) when the annotation holds a section: Model, Model | None, dict[str, Model], list[Model]."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _section(args[0])
    if origin is dict and len(args) == 2 and isinstance(args[1], type) and issubclass(args[1], BaseModel):
        return args[1], "<key>"
    if origin is list and len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], "[]"
    return None


def _is_duration(field: FieldInfo) -> bool:
    """Whether the field is certpager.config.Duration (a float with the duration serializer)."""
    return any(type(m).__name__ == "PlainSerializer" for m in field.metadata) or any(
        type(m).__name__ == "PlainSerializer"
        for arg in typing.get_args(field.annotation)
        for m in getattr(arg, "__metadata__", ())
    )


def format_default(field: FieldInfo) -> str:
    """The default as the reference writes it: ``required``, ``unset`` (None), YAML-ish otherwise."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and _is_duration(field):
        return format_duration(value)
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, SecretStr | Path):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, dict):
        def plain(v: Any) -> str:
            return str(v.value) if isinstance(v, enum.Enum) else str(v)

        return "{" + ", ".join(f"{plain(k)}: {plain(v)}" for k, v in value.items()) + "}"
    if isinstance(value, BaseModel):
        return "{}"
    return str(value)


def keys(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(key path, default) of every leaf key of ``model``."""
    for name, field in model.model_fields.items():
        key = field.alias or name
        path = f"{prefix}.{key}" if prefix else key
        section = _section(field.annotation)
        if section is None:
            yield path, format_default(field)
            continue
        inner, suffix = section
        if suffix == "<key>":
            yield from keys(inner, f"{path}.{PLACEHOLDERS.get(key, '<name>')}")
        elif suffix == "[]":
            yield from keys(inner, f"{path}[]")
        else:
            yield from keys(inner, path)
