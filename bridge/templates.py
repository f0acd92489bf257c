"""Plain-text templates for customer-facing messages (Statuspage incident names and updates).

A template is text with ``{{ NAME }}`` placeholders; the names are fixed (:data:`NAMES`) plus
``labels.X`` and ``annotations.X``, so a typo is a config error at ``--config.check`` instead of an
empty word on a public status page. Values are inserted as they are (no URL quoting: this is prose).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)\s*\}\}")
NAMES = frozenset({"services", "certificate", "environment", "severity", "class"})
DEFAULT_TEMPLATES = {
    "name": "Connection problems with {{ services }}",
    "body": "Some connections to {{ services }} are failing because of a certificate problem. "
    "We are working on a fix.",
    "update": "We are still working on the certificate problem. Affected now: {{ services }}.",
    "resolved": "The certificate problem is fixed and {{ services }} work normally again.",
}


def template_problem(template: str, names: frozenset[str] = NAMES) -> str | None:
    """Why ``template`` cannot be rendered (an unknown placeholder, stray braces), or None."""
    for match in PLACEHOLDER_RE.finditer(template):
        name = match.group(1)
        head, _, tail = name.partition(".")
        if tail and head in ("labels", "annotations"):
            continue
        if tail or name not in names:
            known = ", ".join(sorted(names)) + ", labels.NAME, annotations.NAME"
            return f"unknown placeholder {{{{ {name} }}}} (known: {known})"
    rest = PLACEHOLDER_RE.sub("", template)
    if "{{" in rest or "}}" in rest:
        return "unbalanced {{ or }}: a placeholder is written {{ name }}"
    if not template.strip():
        return "the template is empty"
    return None


def render(template: str, values: Mapping[str, str], labels: Mapping[str, str], annotations: Mapping[str, str]) -> str:
    """``template`` with every placeholder replaced (a missing label or annotation becomes empty)."""

    def value(match: re.Match[str]) -> str:
        head, _, tail = match.group(1).partition(".")
        if head == "labels" and tail:
            return labels.get(tail, "")
        if head == "annotations" and tail:
            return annotations.get(tail, "")
        return values.get(head, "")

    return PLACEHOLDER_RE.sub(value, template)
