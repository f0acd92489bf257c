"""The PagerDuty Events API v2 sink: IncidentEvent -> ``POST {url}/v2/enqueue`` -> delivery outcome.

Three parts, one way each:

- :func:`build_body` translates an :class:`~bridge.events.IncidentEvent` into the Events v2 body (the
  dry-run sink uses it too), fitting PagerDuty's limits instead of letting it answer 400: summary cut
  to 1024 characters, dedup_key kept within 255, the body within 512 KB (custom_details replaced by a
  notice first; then over-long free-text fields cut and over-long URLs dropped, so a page always goes out).
- :func:`check_body` validates that body locally (required fields, enums, limits), so a bug costs a
  dead letter, not a request and a rate-limit slot.
- :class:`PagerDutySink` sends it and classifies the answer. Failure is a result, never an exception:
  httpx errors are mapped once, in :meth:`PagerDutySink._post`.

    202 (any 2xx)            Delivered
    400                      DeadLetter  PagerDuty's ``errors`` text
    429                      RetryLater  after Retry-After, else 30 s
    5xx, timeout, network    RetryLater  after=None (the worker's backoff)
    other status             DeadLetter  status and a body excerpt

Routing keys are secrets: they are looked up per event (a rotated key applies to queued events), never
logged, and the local rate limiter keys on a hash of them.
"""

from __future__ import annotations

import dataclasses
import email.utils
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import httpx

from bridge.events import Action, IncidentEvent, Severity
from bridge.ratelimit import SlidingWindowLimiter
from bridge.sinks.base import DeadLetter, Delivered, DeliveryOutcome, OutboxItem, RetryLater

log = logging.getLogger(__name__)

SUMMARY_MAX = 1024  # characters (code points), documented limit of payload.summary
DEDUP_KEY_MAX = 255  # characters, documented limit of dedup_key
BODY_MAX_BYTES = 512_000  # "512 KB"; Alertmanager reads it as 512,000 bytes, the safe reading
FIELD_MAX = 1024  # characters kept of source/component/group/class/client when an event is over the size limit
URL_MAX = 2048  # a link or client_url longer than this is dropped when an event is over the size limit
RETRY_AFTER_DEFAULT = 30.0  # seconds; PagerDuty suggests retrying 429s 30 s apart
# seconds; PagerDuty's window looks back 60 s from when an event ARRIVES, the local one from when it is
# sent: one second more keeps a send that arrives faster than the one it replaces in the window from
# being PagerDuty's 121st (a burst drew 100-180 429s with 60.0). 2% fewer events per minute at most.
RATE_WINDOW = 61.0
SEVERITIES = frozenset(s.value for s in Severity)
ACTIONS = frozenset(a.value for a in Action)
EXCERPT = 300  # characters of an unexpected answer kept in the dead letter


def encode_body(body: Mapping[str, Any]) -> bytes:
    """The exact bytes sent (compact JSON, UTF-8)."""
    # "replace": a lone surrogate (legal in Python strings, e.g. from a "\ud800" escape in an alert)
    # becomes "?" instead of an exception that would stall the item forever.
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8", errors="replace")


def fit_summary(summary: str) -> str:
    """``summary`` cut to 1024 characters, the last one an ellipsis when something was cut."""
    if len(summary) <= SUMMARY_MAX:
        return summary
    return summary[: SUMMARY_MAX - 1] + "…"


def fit_dedup_key(key: str) -> str:
    """``key`` if within 255 characters, else a stable 255-character prefix + sha256 of the whole key."""
    if len(key) <= DEDUP_KEY_MAX:
        return key
    # Stable: trigger and resolve of the same long key still meet at the same PagerDuty alert.
    digest = hashlib.sha256(key.encode()).hexdigest()
    return key[: DEDUP_KEY_MAX - len(digest) - 1] + "-" + digest


def _timestamp(value: str | None) -> str | None:
    # A malformed timestamp must not cost a page: PagerDuty stamps the event itself when it is absent.
    if not value:
        return None
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return None
    return value


def _trigger_payload(event: IncidentEvent) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "summary": fit_summary(event.summary),
        "source": event.source,
        "severity": str(event.severity),
    }
    optional = {
        "timestamp": _timestamp(event.timestamp),
        "component": event.component,
        "group": event.group,
        "class": event.event_class,
    }
    payload.update({k: v for k, v in optional.items() if v})
    details = dict(event.custom_details)
    if event.note:
        details.setdefault("note", event.note)
    if details:
        payload["custom_details"] = details
    return payload


def build_body(event: IncidentEvent, routing_key: str) -> dict[str, Any]:
    """The Events v2 body for ``event``: trigger carries payload/links/client; ack and resolve only keys."""
    return _build(event, routing_key)[0]


def _build(event: IncidentEvent, routing_key: str) -> tuple[dict[str, Any], bytes]:
    body: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": str(event.action),
        "dedup_key": fit_dedup_key(event.key),
    }
    if event.action is not Action.TRIGGER:
        return body, encode_body(body)
    body["payload"] = _trigger_payload(event)
    links = [{"href": link.href, **({"text": link.text} if link.text else {})} for link in event.links if link.href]
    if links:
        body["links"] = links
    if event.client:
        body["client"] = event.client
    if event.client_url:
        body["client_url"] = event.client_url
    return _fit_size(body)


def _fit_size(body: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    # Returns the bytes too, so a body is encoded once on its way out (encoding was a third of a send).
    encoded = encode_body(body)
    size = len(encoded)
    if size <= BODY_MAX_BYTES:
        return body, encoded
    # As Alertmanager does: the page matters more than its details; say what was dropped and why.
    notes = [f"the event was {size} bytes, over PagerDuty's limit of {BODY_MAX_BYTES} bytes"]
    payload = dict(body["payload"])
    if "custom_details" in payload:
        notes[0] = "custom_details removed: " + notes[0]
        payload["custom_details"] = {"error": notes[0]}
        body = {**body, "payload": payload}
        encoded = encode_body(body)
        if len(encoded) <= BODY_MAX_BYTES:
            return body, encoded
    # Still over: a huge label (certificate, class, environment) or URL. PagerDuty documents no limit of
    # its own for these fields, only the body's: cut the text ones, drop the URLs (a cut URL is a broken
    # one). Every field is then bounded, so the page always goes out.
    for name in ("source", "component", "group", "class"):
        value = payload.get(name)
        if isinstance(value, str) and len(value) > FIELD_MAX:
            payload[name] = value[: FIELD_MAX - 1] + "…"
            notes.append(f"payload.{name} cut to {FIELD_MAX} characters")
    fitted = {**body, "payload": payload}
    links = [link for link in body.get("links", ()) if len(str(link.get("href", ""))) <= URL_MAX]
    for link in body.get("links", ()):
        if len(str(link.get("href", ""))) > URL_MAX:
            notes.append(f"link {str(link.get('text', ''))[:64]!r} dropped: URL over {URL_MAX} characters")
    fitted.pop("links", None)
    if links:
        fitted["links"] = [{**link, "text": str(link.get("text", ""))[:FIELD_MAX]} if "text" in link else link
                           for link in links]
    for name, limit in (("client", FIELD_MAX), ("client_url", URL_MAX)):
        if len(str(fitted.get(name, ""))) > limit:
            del fitted[name]
            notes.append(f"{name} dropped: over {limit} characters")
    payload["custom_details"] = {"error": "; ".join(notes)}
    return fitted, encode_body(fitted)


def check_body(body: Mapping[str, Any], *, encoded: bytes | None = None) -> list[str]:
    """What PagerDuty would reject in ``body`` (empty: send it); ``encoded``: its bytes, if already known."""
    problems: list[str] = []
    if not body.get("routing_key"):
        problems.append("routing_key is empty")
    action = body.get("event_action")
    if action not in ACTIONS:
        problems.append(f"event_action {action!r} is not one of {sorted(ACTIONS)}")
    dedup_key = body.get("dedup_key")
    if not dedup_key:
        problems.append("dedup_key is empty: acknowledge and resolve could never find the alert")
    elif len(dedup_key) > DEDUP_KEY_MAX:
        problems.append(f"dedup_key is {len(dedup_key)} characters, over {DEDUP_KEY_MAX}")
    if action == "trigger":
        problems.extend(_check_payload(body.get("payload")))
        if any(not link.get("href") for link in body.get("links", ())):
            problems.append("a link has no href")
    size = len(encode_body(body) if encoded is None else encoded)
    if size > BODY_MAX_BYTES:
        problems.append(f"event is {size} bytes, over PagerDuty's limit of {BODY_MAX_BYTES}")
    return problems


def _check_payload(payload: Any) -> list[str]:
    if not isinstance(payload, Mapping):
        return ["payload is required for trigger"]
    problems = [f"payload.{name} is empty" for name in ("summary", "source") if not str(payload.get(name, "")).strip()]
    if len(str(payload.get("summary", ""))) > SUMMARY_MAX:
        problems.append(f"payload.summary is over {SUMMARY_MAX} characters")
    if payload.get("severity") not in SEVERITIES:
        problems.append(f"payload.severity {payload.get('severity')!r} is not one of {sorted(SEVERITIES)}")
    if "custom_details" in payload and not isinstance(payload["custom_details"], Mapping):
        problems.append("payload.custom_details is not an object")
    return problems


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), or None if absent/unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(when.timestamp() - current, 0.0)


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT else text[: EXCERPT - 1] + "…"


def _message(response: httpx.Response) -> str:
    # 202 body: {"status": "success", "message": "Event processed", "dedup_key": "..."}.
    try:
        data = response.json()
    except ValueError:
        return _excerpt(response.text)
    return str(data.get("message", "")) if isinstance(data, dict) else _excerpt(response.text)


def _errors_text(response: httpx.Response) -> str:
    # PagerDuty's 400 body: {"status": "invalid event", "message": "...", "errors": ["..."]}.
    try:
        data = response.json()
    except ValueError:
        return _excerpt(response.text)
    if not isinstance(data, dict):
        return _excerpt(response.text)
    errors = data.get("errors")
    parts = [str(e) for e in errors] if isinstance(errors, list) and errors else []
    head = str(data.get("message") or data.get("status") or "bad request")
    return f"{head}: {'; '.join(parts)}" if parts else head


def classify(response: httpx.Response) -> DeliveryOutcome:
    """Map one Events v2 answer to the outbox's outcome."""
    status = response.status_code
    if 200 <= status < 300:
        return Delivered(status=status, info=_message(response))
    if status == 400:
        return DeadLetter(error=f"400 {_errors_text(response)}", status=status)
    if status == 429:
        after = parse_retry_after(response.headers.get("Retry-After"))
        return RetryLater(
            after=RETRY_AFTER_DEFAULT if after is None else after, error="429 rate limited", status=status
        )
    if status >= 500:
        return RetryLater(after=None, error=f"{status} {_excerpt(response.text)}".rstrip(), status=status)
    return DeadLetter(error=f"{status} {_excerpt(response.text)}".rstrip(), status=status)


@functools.lru_cache(maxsize=256)
def _key_id(routing_key: str) -> str:
    # The limiter remembers keys; it remembers a hash, so no secret lingers in one more place.
    return hashlib.sha256(routing_key.encode()).hexdigest()[:16]


def read_event(item: OutboxItem) -> IncidentEvent | DeadLetter:
    """The item's IncidentEvent, or a dead letter saying why its payload is not one."""
    try:
        return IncidentEvent.from_json(item.payload)
    except (KeyError, TypeError, ValueError) as exc:
        return DeadLetter(error=f"outbox item {item.id} is not a valid IncidentEvent: {type(exc).__name__}: {exc}")


def translate(event: IncidentEvent, routing_key: str) -> dict[str, Any] | DeadLetter:
    """The checked body to send for ``event``, or the dead letter saying why it must not be sent."""
    prepared = prepare(event, routing_key)
    return prepared if isinstance(prepared, DeadLetter) else prepared[0]


def prepare(event: IncidentEvent, routing_key: str) -> tuple[dict[str, Any], bytes] | DeadLetter:
    """Like :func:`translate`, with the exact bytes to send (encoded once)."""
    try:
        body, encoded = _build(event, routing_key)
    except (TypeError, ValueError) as exc:  # wrong types in a stored payload: a bug upstream, not retryable
        return DeadLetter(error=f"event cannot be translated, not sent: {type(exc).__name__}: {exc}")
    problems = check_body(body, encoded=encoded)
    if problems:
        return DeadLetter(error="event rejected locally, not sent: " + "; ".join(problems))
    return body, encoded


def build_change_body(event: IncidentEvent, routing_key: str) -> dict[str, Any]:
    """The Change Events body (``POST /v2/change/enqueue``) recording a problem that was resolved before it
    could page: on the service's timeline, never notifying anyone."""
    details = {**event.custom_details, "dedup_key": fit_dedup_key(event.key), "severity": str(event.severity),
               "class": event.event_class, "started_at": event.timestamp or "",
               "note": "resolved before PagerDuty could be told; recorded as a change, nobody was paged"}
    payload: dict[str, Any] = {
        "summary": fit_summary(f"RESOLVED before it paged: {event.summary}"),
        "source": event.source,
        "custom_details": details,
    }
    if _timestamp(event.timestamp):
        payload["timestamp"] = event.timestamp
    body: dict[str, Any] = {"routing_key": routing_key, "payload": payload}
    links = [{"href": link.href, **({"text": link.text} if link.text else {})} for link in event.links if link.href]
    if links:
        body["links"] = links
    return body


def prepare_change(event: IncidentEvent, routing_key: str) -> tuple[dict[str, Any], bytes] | DeadLetter:
    """The checked change event body and its bytes, or why it cannot be sent."""
    try:
        body, encoded = _fit_size(build_change_body(event, routing_key))
    except (TypeError, ValueError) as exc:
        return DeadLetter(error=f"change event cannot be translated, not sent: {type(exc).__name__}: {exc}")
    problems = [p for p in _check_payload({**body["payload"], "severity": "info"}) if "severity" not in p]
    if not routing_key:
        problems.append("routing_key is empty")
    if any(not link.get("href") for link in body.get("links", ())):
        problems.append("a link has no href")
    if len(encoded) > BODY_MAX_BYTES:
        problems.append(f"event is {len(encoded)} bytes, over PagerDuty's limit of {BODY_MAX_BYTES}")
    if problems:
        return DeadLetter(error="change event rejected locally, not sent: " + "; ".join(problems))
    return body, encoded


def takes_change_events(routing_key: str) -> bool:
    """PagerDuty: "change events cannot be sent to ruleset integration keys (these keys begin with R)"."""
    return not routing_key.startswith("R")


class PagerDutySink:
    """Delivers IncidentEvents to the PagerDuty Events API v2.

    >>> sink = PagerDutySink(client, url="https://events.pagerduty.com", routing_key_for=keys.get)
    >>> outcome = await sink.deliver(item)  # Delivered | RetryLater | DeadLetter, never raises
    """

    name = "pagerduty"

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        url: str,
        routing_key_for: Callable[[str], str | None],
        clock: Callable[[], float] = time.monotonic,
        rate_limit_per_minute: int = 120,
        late_resolved: Callable[[], str] = lambda: "change_event",
    ) -> None:
        self._client = client
        self._endpoint = url.rstrip("/") + "/v2/enqueue"
        self._change_endpoint = url.rstrip("/") + "/v2/change/enqueue"
        self._routing_key_for = routing_key_for
        self._limiter = SlidingWindowLimiter(rate_limit_per_minute, RATE_WINDOW, clock=clock)
        self._late_resolved = late_resolved  # read per event: a reload applies to queued triggers

    async def deliver(self, item: OutboxItem) -> DeliveryOutcome:
        """Send one item; answer what the outbox should do with it."""
        held = self.held_back(item)
        if held is not None:
            return held
        event = read_event(item)
        if isinstance(event, DeadLetter):
            log.warning("pagerduty event dead-lettered", extra={"kv": {"item": item.id, "error": event.error}})
            return event
        if event.action is Action.TRIGGER and item.superseded:
            outcome = await self._deliver_late(item, event)
        else:
            outcome = await self._deliver(event)
        self._log(item, event, outcome)
        return outcome

    async def _deliver_late(self, item: OutboxItem, event: IncidentEvent) -> DeliveryOutcome:
        # The trigger's resolve is queued behind it: the problem is over, and paging now would wake someone
        # for something fixed (late_resolved). The resolve still follows, so an alert that an earlier,
        # timed-out attempt of this trigger may have opened is closed all the same.
        mode = self._late_resolved()
        routing_key = self._routing_key_for(event.route)
        if mode == "change_event" and routing_key and not takes_change_events(routing_key):
            log.warning("late-resolved trigger paged: a ruleset routing key (R...) takes no change events",
                        extra={"kv": {"item": item.id, "route": event.route}})
            mode = "page"
        if mode == "drop":
            log.info("late-resolved trigger dropped (late_resolved: drop)",
                     extra={"kv": {"item": item.id, "dedup_key": fit_dedup_key(event.key)}})
            return Delivered(info="late resolved: dropped", late="drop")
        if mode == "page" or not routing_key:
            outcome = await self._deliver(event)
            return dataclasses.replace(outcome, late="page") if isinstance(outcome, Delivered) else outcome
        prepared = prepare_change(event, routing_key)
        if isinstance(prepared, DeadLetter):
            return prepared
        outcome = await self._send(routing_key, prepared[1], self._change_endpoint)
        return dataclasses.replace(outcome, late="change_event") if isinstance(outcome, Delivered) else outcome

    def held_back(self, item: OutboxItem) -> RetryLater | None:
        """The local rate limit's hold for ``item``, or None; no decoding or encoding (the outbox asks first)."""
        route = item.payload.get("route")
        routing_key = self._routing_key_for(route) if isinstance(route, str) else None
        if not routing_key:
            return None  # the full path says why (dead letter)
        wait = self._limiter.wait_time(_key_id(routing_key))
        if wait <= 0:
            return None
        if log.isEnabledFor(logging.DEBUG):
            kv = {"item": item.id, "route": route, "after": wait}
            log.debug("pagerduty event held back by the local rate limit", extra={"kv": kv})
        return RetryLater(after=wait, error="rate limit (local)", local=True)

    async def _deliver(self, event: IncidentEvent) -> DeliveryOutcome:
        routing_key = self._routing_key_for(event.route)
        if not routing_key:
            return DeadLetter(
                error=f"no PagerDuty routing key for route {event.route!r}: set "
                f"integrations.pagerduty.routing_keys.{event.route} or integrations.pagerduty.routing_key"
            )
        prepared = prepare(event, routing_key)
        if isinstance(prepared, DeadLetter):
            return prepared
        return await self._send(routing_key, prepared[1], self._endpoint)

    async def _send(self, routing_key: str, content: bytes, endpoint: str) -> DeliveryOutcome:
        key_id = _key_id(routing_key)
        wait, stamp = self._limiter.acquire(key_id)
        if wait > 0:
            return RetryLater(after=wait, error="rate limit (local)", local=True)
        outcome = await self._post(content, endpoint)
        if not isinstance(outcome, Delivered):
            # PagerDuty counts the events it accepted: a 429, 5xx, 400 or timeout leaves the slot free.
            self._limiter.release(key_id, stamp)
        return outcome

    async def _post(self, content: bytes, endpoint: str) -> DeliveryOutcome:
        # The one place httpx exceptions become outcomes. A timeout may still have reached PagerDuty;
        # retrying is safe because the dedup_key makes a repeated event land on the same alert.
        try:
            response = await self._client.post(endpoint, content=content, headers={"Content-Type": "application/json"})
        except httpx.TimeoutException as exc:
            return RetryLater(after=None, error=f"timeout: {type(exc).__name__}")
        except httpx.HTTPError as exc:
            return RetryLater(after=None, error=f"network error: {type(exc).__name__}: {exc}")
        return classify(response)

    def _log(self, item: OutboxItem, event: IncidentEvent, outcome: DeliveryOutcome) -> None:
        level = logging.DEBUG if isinstance(outcome, Delivered) or getattr(outcome, "local", False) else logging.INFO
        if not log.isEnabledFor(level):
            return  # the common case (delivered, level info): build nothing
        kv: dict[str, Any] = {
            "item": item.id,
            "dedup_key": fit_dedup_key(str(event.key)),
            "action": str(event.action),
            "route": event.route,
            "result": type(outcome).__name__,
            "status": outcome.status,
        }
        if isinstance(outcome, Delivered):
            log.debug("pagerduty event delivered", extra={"kv": kv})
        elif isinstance(outcome, RetryLater) and outcome.local:
            log.debug("pagerduty event held back by the local rate limit", extra={"kv": {**kv, "after": outcome.after}})
        elif isinstance(outcome, RetryLater):
            log.info("pagerduty event to retry", extra={"kv": {**kv, "error": outcome.error}})
        else:
            log.warning("pagerduty event dead-lettered", extra={"kv": {**kv, "error": outcome.error}})

    async def aclose(self) -> None:
        """Close the HTTP client (the sink owns it once constructed)."""
        await self._client.aclose()
