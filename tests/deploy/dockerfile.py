"""A small Dockerfile reader for the tests: instructions per stage, ARG defaults substituted in FROM."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    value: str  # the rest of the (continued) line

    def exec_form(self) -> list[str]:
        """The JSON array form (``["certpager"]``); the shell form split like a shell would."""
        text = self.value.strip()
        return list(json.loads(text)) if text.startswith("[") else shlex.split(text)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def instructions(text: str) -> list[Instruction]:
    """Logical lines: comments dropped, backslash continuations joined."""
    result: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, value = full.partition(" ")
            result.append(Instruction(keyword.upper(), value.strip()))
    return result


def stages(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults (before the first FROM) and the stages in order."""
    args: dict[str, str] = {}
    result: list[Stage] = []
    for instruction in instructions(path.read_text()):
        if instruction.keyword == "FROM":
            words = instruction.value.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            result.append(Stage(base, name))
        elif result:
            result[-1].instructions.append(instruction)
        elif instruction.keyword == "ARG":
            key, _, default = instruction.value.partition("=")
            args[key] = default
    return args, result


def labels(stage: Stage) -> dict[str, str]:
    """LABEL key="value" pairs of a stage (quotes removed, ${ARG} left as written)."""
    found: dict[str, str] = {}
    for instruction in stage.all("LABEL"):
        for word in shlex.split(instruction.value):
            key, _, value = word.partition("=")
            found[key] = value
    return found


def arg_defaults(stage: Stage) -> dict[str, str]:
    return dict(i.value.partition("=")[::2] for i in stage.all("ARG"))  # type: ignore[misc]
