"""The runbook actions sink: ``automation:`` runs named ``actions:`` when an incident (or group) opens or
resolves, each queued in the outbox as its own item of this sink.

One module, one contract per action type, like the other sinks: an action answers with the outbox's
outcomes (delivered, retry later, dead letter) and never raises for an upstream problem.

- ``http``: a JSON body whose strings are templates, sent with plain headers and headers read from files
  (secrets) to a renewal service (cert-manager's API, an ACME client's hook, a CI job).
- ``notify``: an incoming-webhook message, Slack's shape (``text`` plus a ``section`` block, mrkdwn) or
  Microsoft Teams' (a ``message`` with one Adaptive Card attachment).
- ``postmortem``: a Markdown document from a template, written to a directory (one file per incident key,
  written atomically, so a retry overwrites rather than duplicates) or POSTed as ``text/markdown``.
- ``pagerduty``: an Events v2 trigger (or resolve) to another routing key at the configured severity,
  keyed by the incident key and the action name, so a retry is deduplicated by PagerDuty.

Outcomes: 2xx delivered; 408, 429 (honouring Retry-After), 5xx, timeouts and network errors retry; any
other 4xx is a dead letter with the receiver's answer. The sink is separate from PagerDuty's and
Statuspage's, so a failing action never blocks or delays a page. Every attempt's outcome is a line of
the audit trail, written by the outbox like any sink's (side ``actions``), and counted in
``certpager_bridge_actions_total``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter

from bridge.config import ActionConfig, ActionSecrets
from bridge.events import IncidentEvent
from bridge.keys import slug
from bridge.metrics import NAMESPACE, Children
from bridge.sinks.base import DeadLetter, Delivered, DeliveryOutcome, OutboxItem, RetryLater
from bridge.sinks.pagerduty import parse_retry_after
from bridge.templates import render

log = logging.getLogger(__name__)

ERROR_TEXT_MAX = 300  # characters of a receiver's answer kept with a dead letter / audit
DEFAULT_POSTMORTEM = """# Postmortem: {{ summary }}

- Incident key: `{{ key }}`
- Class: {{ class }}
- Certificate: {{ certificate }}
- Environment: {{ environment }}
- Issuer: {{ issuer }}
- Affected services: {{ services }}
- Runbook: {{ runbook_url }}

## Timeline

## Root cause

## What went well / what went wrong

## Action items
"""


class ActionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Children(Counter(
            f"{NAMESPACE}_actions_total",
            "Runbook action attempts, by action name, type and result (delivered, retry, dead_letter).",
            ["action", "type", "result"], registry=registry,
        ))


def values_of(event: IncidentEvent, action: str, phase: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(fixed placeholders, labels, annotations) of an event, for the templates."""
    details = event.custom_details
    labels = details.get("labels") if isinstance(details.get("labels"), Mapping) else {}
    annotations = details.get("annotations") if isinstance(details.get("annotations"), Mapping) else {}
    services = details.get("affected_services") or []
    members = details.get("members") or []
    links = {link.text: link.href for link in event.links}
    fixed = {
        "key": event.key, "summary": event.summary, "status": "resolved" if phase == "resolve" else "firing",
        "severity": event.severity.value, "class": event.event_class, "certificate": event.component,
        "environment": event.group, "issuer": str(details.get("issuer", "")),
        "services": ", ".join(str(s) for s in services) if isinstance(services, list) else "",
        "action": action,
        "members": ", ".join(str(m.get("certificate", "")) for m in members if isinstance(m, Mapping))
        if isinstance(members, list) else "",
        "runbook_url": links.get("Runbook", ""), "dashboard_url": links.get("Dashboard", ""),
    }
    return fixed, {str(k): str(v) for k, v in (labels or {}).items()}, {str(k): str(v) for k, v in
                                                                        (annotations or {}).items()}


def render_value(value: object, fixed: Mapping[str, str], labels: Mapping[str, str],
                 annotations: Mapping[str, str]) -> object:
    """A JSON body template: every string rendered, the structure kept."""
    if isinstance(value, str):
        return render(value, fixed, labels, annotations)
    if isinstance(value, Mapping):
        return {str(k): render_value(v, fixed, labels, annotations) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, fixed, labels, annotations) for v in value]
    return value


def slack_escape(text: str) -> str:
    # Slack reads &, < and > as markup (<!channel> would notify everyone): escaped as Slack documents.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(text: str) -> dict[str, Any]:
    """A Slack incoming-webhook message: ``text`` (the notification fallback) and one mrkdwn section."""
    escaped = slack_escape(text)
    return {"text": escaped, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": escaped[:3000]}}]}


def teams_body(text: str, title: str) -> dict[str, Any]:
    """A Microsoft Teams incoming-webhook (or Workflows) message: one Adaptive Card attachment."""
    return {
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": None,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {"type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": True},
                    {"type": "TextBlock", "text": text, "wrap": True},
                ],
            },
        }],
    }


class ActionsSink:
    """Runs one queued action per item (see module docstring)."""

    name = "actions"

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        actions: Callable[[], Mapping[str, ActionConfig]],
        secrets: Callable[[], Mapping[str, ActionSecrets]],
        metrics: ActionMetrics,
    ) -> None:
        self._client = client
        self._actions, self._secrets, self._metrics = actions, secrets, metrics

    async def aclose(self) -> None:
        await self._client.aclose()

    async def deliver(self, item: OutboxItem) -> DeliveryOutcome:
        try:
            name, phase = str(item.payload["action"]), str(item.payload["phase"])
            event = IncidentEvent.from_json(item.payload["event"])
        except (KeyError, TypeError, ValueError) as exc:
            return DeadLetter(f"unreadable action item: {type(exc).__name__}: {exc}")
        action = self._actions().get(name)
        secrets = self._secrets().get(name, ActionSecrets())
        if action is None:
            outcome: DeliveryOutcome = DeadLetter(f"action {name!r} is no longer configured (actions:)")
            kind = "unknown"
        else:
            kind = action.type
            outcome = await self._run(action, secrets, name, phase, event)
        self._record(name, kind, event.key, outcome)
        return outcome

    def _record(self, name: str, kind: str, key: str, outcome: DeliveryOutcome) -> None:
        result = {Delivered: "delivered", RetryLater: "retry", DeadLetter: "dead_letter"}[type(outcome)]
        detail = outcome.info if isinstance(outcome, Delivered) else outcome.error
        self._metrics.runs(name, kind, result).inc()
        log.info("runbook action", extra={"kv": {"action": name, "type": kind, "key": key, "result": result,
                                                 "status": outcome.status, "detail": detail}})

    async def _run(self, action: ActionConfig, secrets: ActionSecrets, name: str, phase: str,
                   event: IncidentEvent) -> DeliveryOutcome:
        fixed, labels, annotations = values_of(event, name, phase)
        if action.type == "http":
            body = render_value(action.body, fixed, labels, annotations)
            return await self._send(action, secrets, json=body, headers=dict(secrets.headers))
        if action.type == "notify":
            text = render(action.text, fixed, labels, annotations)
            message = slack_body(text) if action.format == "slack" else teams_body(text, event.summary or text)
            return await self._send(action, secrets, json=message, headers={})
        if action.type == "postmortem":
            document = render(action.template or DEFAULT_POSTMORTEM, fixed, labels, annotations)
            if action.directory is not None:
                return write_document(action.directory, event.key, document)
            return await self._send(action, secrets, content=document.encode(),
                                    headers={"Content-Type": "text/markdown; charset=utf-8"})
        return await self._page(action, secrets, name, phase, event)

    async def _page(self, action: ActionConfig, secrets: ActionSecrets, name: str, phase: str,
                    event: IncidentEvent) -> DeliveryOutcome:
        body: dict[str, Any] = {
            "routing_key": secrets.routing_key or "",
            "event_action": "resolve" if phase == "resolve" else "trigger",
            "dedup_key": f"{event.key}-{slug(name)}"[:255],
        }
        if phase != "resolve":
            body["payload"] = {
                "summary": (event.summary or event.key)[:1024], "source": event.source or "certpager",
                "severity": action.severity.value, "component": event.component or None,
                "group": event.group or None, "class": event.event_class or None,
                "custom_details": {"incident_key": event.key, "action": name, **dict(event.custom_details)},
            }
            body["payload"] = {k: v for k, v in body["payload"].items() if v is not None}
        url = action.events_url.rstrip("/") + "/v2/enqueue"
        return await self._post(url, action.timeout, "POST", json=body, headers={})

    async def _send(self, action: ActionConfig, secrets: ActionSecrets, *, headers: dict[str, str],
                    json: object = None, content: bytes | None = None) -> DeliveryOutcome:
        if not secrets.url:
            return DeadLetter("no url configured")
        return await self._post(secrets.url, action.timeout, action.method, json=json, content=content,
                                headers=headers)

    async def _post(self, url: str, timeout: float, method: str, *, headers: dict[str, str], json: object = None,
                    content: bytes | None = None) -> DeliveryOutcome:
        # The one place httpx exceptions become outcomes. The URL is never logged or kept: it may be a secret.
        try:
            if content is not None:
                response = await self._client.request(method, url, content=content, headers=headers,
                                                      timeout=timeout)
            else:
                response = await self._client.request(method, url, json=json, headers=headers, timeout=timeout)
        except httpx.TimeoutException:
            return RetryLater(None, f"timeout after {timeout:g} s")
        except httpx.HTTPError as exc:
            return RetryLater(None, f"network error: {type(exc).__name__}")
        code, text = response.status_code, response.text[:ERROR_TEXT_MAX]
        if 200 <= code < 300:
            return Delivered(code, f"{code}")
        if code in (408, 429) or code >= 500:
            return RetryLater(parse_retry_after(response.headers.get("Retry-After")), f"{code}: {text}", code)
        return DeadLetter(f"{code}: {text}", code)


def write_document(directory: Path, key: str, document: str) -> DeliveryOutcome:
    """Write ``<directory>/<key>.md`` atomically (a retry replaces it); a failure to write is retried."""
    target = directory / f"{key}.md"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{key[:64]}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(document)
        os.replace(tmp, target)
    except OSError as exc:
        return RetryLater(None, f"cannot write {target}: {exc.strerror or exc}")
    return Delivered(0, f"written to {target}")


