"""A fake PagerDuty Events API v2: a real aiohttp server on loopback, for tests and crash tests.

It answers as PagerDuty documents (developer-docs "Send an Alert Event", api-schema events-v2):

- ``POST /v2/enqueue`` and ``POST /v2/change/enqueue``: validation with the documented 400 body
  ``{"status": "invalid event", "message": "Event object is invalid", "errors": [...]}`` (and the
  "Unrecognized object" body for unparseable JSON); 202 ``{"status": "success", "message":
  "Event processed", "dedup_key": ...}``; 429 past 120 accepted events per routing key in a 60 s
  window looking back from now.
- incidents per (routing_key, dedup_key): trigger opens or dedups into the open alert, acknowledge
  and resolve apply to the open alert or are accepted and dropped, a trigger after resolve opens anew.
- fault injection: :meth:`FakePagerDuty.fail_next` (5xx, 429 with Retry-After, slow answers).
- the REST API ack sync uses (``Authorization: Token token=...``, ``From`` on writes, PagerDuty's error
  body ``{"error": {"message", "code", "errors"}}``): ``GET /incidents?incident_key=&statuses[]=``,
  ``GET /incidents/{id}``, ``GET /incidents/{id}/alerts`` (``alert_key`` = dedup_key), ``PUT
  /incidents/{id}`` (status, priority), ``POST /incidents/{id}/snooze`` (acknowledged incidents only,
  duration 1..604800), ``GET /priorities`` (most severe first), ``GET /services/{id}``
  (``acknowledgement_timeout``); 401 for a wrong token, 404 for an unknown id, 429 with ``ratelimit-*``
  headers past ``rest_rate_limit`` requests a minute, and :meth:`FakePagerDuty.fail_next_rest`.
  Every Events API incident is a REST incident too (one alert; :meth:`FakePagerDuty.group` merges
  incidents the way alert grouping does: one incident, several alerts, no incident_key).

Use it as ``async with run_fake_pagerduty() as fake: ... fake.url``, or standalone for subprocess
tests: ``python -m tests.fakes.pagerduty --port 0 --state-file F`` prints ``listening on <url>`` and
appends one JSON line per accepted event to F; ``POST /_fake/fail_next`` (``{"n", "status", "retry_after",
"delay"}``) and ``GET /_fake/state`` drive and read it from outside. It never imports the bridge: a fake that shared the
sink's validation would hide the sink's bugs.

Also here: PagerDuty Webhooks v3 signing (:func:`sign`, :func:`signature_header`) for inbound tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import signal
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

ROUTING_KEY_LENGTH = 32
ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")
SUMMARY_MAX = 1024
DEDUP_KEY_MAX = 255
BODY_MAX = 512 * 1024


PRIORITIES = [  # most severe first, as GET /priorities lists them
    {"id": "PP1", "type": "priority", "name": "P1", "order": 5},
    {"id": "PP2", "type": "priority", "name": "P2", "order": 4},
    {"id": "PP3", "type": "priority", "name": "P3", "order": 3},
]
SNOOZE_MAX = 604800


@dataclass
class Incident:
    """One PagerDuty alert opened by a trigger on one routing key (and the REST incident holding it)."""

    routing_key: str
    dedup_key: str
    status: str = "triggered"  # triggered | acknowledged | resolved
    summary: str = ""
    severity: str = ""
    triggers: int = 1
    log: list[str] = field(default_factory=lambda: ["trigger"])
    id: str = ""
    number: int = 0
    priority_id: str = ""
    snoozed_for: int = 0
    service_id: str = "PSVC001"
    alert_keys: list[str] = field(default_factory=list)  # more than one after alert grouping


@dataclass
class Accepted:
    """One event answered 202, in arrival order; ``outcome`` says what it did to the incidents."""

    path: str
    body: dict[str, Any]
    dedup_key: str
    outcome: str  # opened | deduplicated | acknowledged | resolved | dropped | change


@dataclass
class Fault:
    status: int | None  # None: answer normally, after the delay
    retry_after: str | None
    delay: float


def invalid(errors: list[str]) -> web.Response:
    """PagerDuty's documented 400 for an event that parses but breaks the rules."""
    return web.json_response(
        {"status": "invalid event", "message": "Event object is invalid", "errors": errors}, status=400
    )


def unrecognized() -> web.Response:
    """PagerDuty's documented 400 for a body that is not a JSON object."""
    body = {
        "status": "Unrecognized object",
        "message": "Event object format is unrecognized",
        "errors": ["JSON parse error"],
    }
    return web.json_response(body, status=400)


def _check_common(body: dict[str, Any]) -> list[str]:
    errors = []
    routing_key = body.get("routing_key")
    if not isinstance(routing_key, str) or not routing_key:
        errors.append("'routing_key' is missing or blank")
    elif len(routing_key) != ROUTING_KEY_LENGTH:
        errors.append(f"'routing_key' must be {ROUTING_KEY_LENGTH} characters")
    for i, link in enumerate(body.get("links") or []):
        if not isinstance(link, dict) or not link.get("href"):
            errors.append(f"'links[{i}].href' is missing or blank")
    return errors


def check_alert_event(body: dict[str, Any]) -> list[str]:
    """Errors PagerDuty reports for an alert event (empty: valid)."""
    errors = _check_common(body)
    action = body.get("event_action")
    if action not in ACTIONS:
        errors.append("'event_action' must be one of trigger, acknowledge or resolve")
    dedup_key = body.get("dedup_key")
    if dedup_key is not None and not isinstance(dedup_key, str):
        errors.append("'dedup_key' must be a string")
    elif dedup_key is not None and len(dedup_key) > DEDUP_KEY_MAX:
        errors.append(f"'dedup_key' is too long (maximum is {DEDUP_KEY_MAX} characters)")
    if action in ("acknowledge", "resolve") and not dedup_key:
        errors.append("'dedup_key' is required for acknowledge and resolve events")
    for i, image in enumerate(body.get("images") or []):
        if not isinstance(image, dict) or not str(image.get("src", "")).startswith("https://"):
            errors.append(f"'images[{i}].src' must be an HTTPS URL")
    if action == "trigger":
        errors.extend(_check_payload(body.get("payload"), alert=True))
    return errors


def _check_payload(payload: Any, *, alert: bool) -> list[str]:
    # Alert events need summary, source and severity; change events only a summary.
    if not isinstance(payload, dict):
        return ["'payload' is missing or not an object"]
    errors = []
    summary = payload.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        errors.append("'summary' is missing or blank")
    elif len(summary) > SUMMARY_MAX:
        errors.append(f"'summary' is too long (maximum is {SUMMARY_MAX} characters)")
    source = payload.get("source")
    if alert and (not isinstance(source, str) or not source.strip()):
        errors.append("'source' is missing or blank")
    if alert and payload.get("severity") not in SEVERITIES:
        errors.append("'severity' must be one of critical, error, warning or info")
    details = payload.get("custom_details")
    if details is not None and not isinstance(details, dict):
        errors.append("'custom_details' must be an object")
    return errors


def check_change_event(body: dict[str, Any]) -> list[str]:
    """Errors PagerDuty reports for a change event (empty: valid).

    Documented (developer-docs "Send a Change Event", Events API v2 overview): ``routing_key`` and
    ``payload.summary`` (at most 1024 characters) are required; ``payload.source``, ``payload.timestamp``,
    ``payload.custom_details`` (an object) and ``links[]`` (``href`` required) are optional; there is no
    ``event_action`` or ``dedup_key``, and ruleset integration keys (they begin with ``R``) take no change events.
    """
    errors = _check_common(body) + _check_payload(body.get("payload"), alert=False)
    routing_key = body.get("routing_key")
    if isinstance(routing_key, str) and routing_key.startswith("R"):
        errors.append("change events cannot be sent to a ruleset integration key")
    source = (body.get("payload") or {}).get("source") if isinstance(body.get("payload"), dict) else None
    if source is not None and not isinstance(source, str):
        errors.append("'source' must be a string")
    return errors


class FakePagerDuty:
    """The fake's state and handlers; ``url`` is set once it listens."""

    def __init__(
        self,
        *,
        rate_limit: int = 120,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        state_file: Path | None = None,
        api_token: str = "fake-rest-token",
        rest_rate_limit: int = 960,
        ack_timeout: int | None = 1800,
    ) -> None:
        self.url = ""
        self.api_token = api_token
        self.rest_rate_limit = rest_rate_limit
        self.ack_timeout = ack_timeout
        self.rest_requests: list[tuple[str, str, dict[str, Any] | None]] = []  # (method, path, body)
        self._rest_faults: deque[Fault] = deque()
        self._rest_hits: deque[float] = deque()
        self.rate_limit = rate_limit
        self.window = window
        self._clock = clock
        self._state_file = state_file
        self.accepted: list[Accepted] = []
        self.incidents: list[Incident] = []
        self.requests = 0  # every POST that reached the fake, faults and rejections included
        self.rejected: list[dict[str, Any]] = []  # 400 bodies sent back, in order
        self._faults: deque[Fault] = deque()
        self._hits: dict[str, deque[float]] = {}

    def fail_next(
        self, n: int, status: int | None = 500, retry_after: float | str | None = None, delay: float = 0.0
    ) -> None:
        """Make the next ``n`` requests wait ``delay`` s, then answer ``status`` (None: answer normally)."""
        header = None if retry_after is None else str(retry_after)
        self._faults.extend(Fault(status, header, delay) for _ in range(n))

    def heal(self) -> int:
        """Drop the faults not yet used (an outage ends now); answers how many were dropped."""
        dropped = len(self._faults)
        self._faults.clear()
        return dropped

    def fail_next_rest(self, n: int, status: int = 500, retry_after: float | None = None) -> None:
        """Make the next ``n`` REST requests answer ``status`` (429 with ``ratelimit-reset``)."""
        header = None if retry_after is None else str(retry_after)
        self._rest_faults.extend(Fault(status, header, 0.0) for _ in range(n))

    def by_id(self, incident_id: str) -> Incident | None:
        return next((i for i in self.incidents if i.id == incident_id), None)

    def group(self, into: Incident, other: Incident) -> None:
        """Alert grouping: ``other``'s alert joins ``into``, which then has no single incident_key."""
        into.alert_keys.extend(other.alert_keys)
        self.incidents.remove(other)

    def open_incident(self, routing_key: str, dedup_key: str) -> Incident | None:
        """The open (triggered or acknowledged) alert for the key on that routing key, if any."""
        for incident in reversed(self.incidents):
            if incident.routing_key == routing_key and incident.dedup_key == dedup_key:
                return incident if incident.status != "resolved" else None
        return None

    def changes(self) -> list[dict[str, Any]]:
        """The body of every accepted change event, in order (they never touch an incident)."""
        return [a.body for a in self.accepted if a.path == "/v2/change/enqueue"]

    def stories(self) -> dict[str, str]:
        """Per dedup_key, what each accepted event did, in order, one letter each: O opened, R resolved,
        D dropped (a resolve with nothing open), C a change event naming the key in its custom_details (a
        late trigger, late_resolved); resends absorbed by the dedup_key and acknowledgements left out."""
        letters = {"opened": "O", "resolved": "R", "dropped": "D", "change": "C"}
        per_key: dict[str, str] = {}
        for a in self.accepted:
            key = a.body["payload"]["custom_details"].get("dedup_key", "") if a.outcome == "change" else a.dedup_key
            per_key[key] = per_key.get(key, "") + letters.get(a.outcome, "")
        return per_key

    def actions(self) -> list[tuple[str, str]]:
        """(event_action, dedup_key) of every accepted alert event, in order: the usual assertion."""
        return [(a.body["event_action"], a.dedup_key) for a in self.accepted if a.path == "/v2/enqueue"]

    def app(self) -> web.Application:
        """The aiohttp application (body limit above 512 KB so oversize events get PagerDuty's answer)."""
        app = web.Application(client_max_size=4 * BODY_MAX)
        app.router.add_post("/v2/enqueue", self._enqueue)
        app.router.add_post("/v2/change/enqueue", self._change)
        app.router.add_get("/incidents", self._rest_list)
        app.router.add_get("/incidents/{id}", self._rest_get)
        app.router.add_put("/incidents/{id}", self._rest_update)
        app.router.add_get("/incidents/{id}/alerts", self._rest_alerts)
        app.router.add_post("/incidents/{id}/snooze", self._rest_snooze)
        app.router.add_get("/priorities", self._rest_priorities)
        app.router.add_get("/services/{id}", self._rest_service)
        # Test controls for standalone mode (a subprocess test cannot call fail_next directly).
        app.router.add_post("/_fake/fail_next", self._control_fail_next)
        app.router.add_get("/_fake/state", self._control_state)
        return app

    async def _control_fail_next(self, request: web.Request) -> web.Response:
        spec = await request.json()
        self.fail_next(int(spec["n"]), spec.get("status", 500), spec.get("retry_after"), float(spec.get("delay", 0)))
        return web.json_response({"pending_faults": len(self._faults)})

    async def _control_state(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": self.requests,
                "accepted": [{"path": a.path, "dedup_key": a.dedup_key, "outcome": a.outcome} for a in self.accepted],
                "incidents": [{"dedup_key": i.dedup_key, "status": i.status, "log": i.log} for i in self.incidents],
            }
        )

    async def _enqueue(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, check_alert_event, self._apply_alert)

    async def _change(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, check_change_event, lambda body: ("", "change"))

    async def _handle(
        self,
        request: web.Request,
        check: Callable[[dict[str, Any]], list[str]],
        apply: Callable[[dict[str, Any]], tuple[str, str]],
    ) -> web.StreamResponse:
        self.requests += 1
        raw = await request.read()
        fault = await self._fault()
        if fault is not None:
            return fault
        if len(raw) > BODY_MAX:
            return self._reject([f"Event is too large (maximum is {BODY_MAX // 1024} KB)"])
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            return unrecognized()
        if not isinstance(body, dict):
            return unrecognized()
        errors = check(body)
        if errors:
            return self._reject(errors)
        if self._throttled(body["routing_key"]):
            return web.json_response(
                {"status": "throttle event", "message": "Requests for this service are arriving too quickly."},
                status=429,
            )
        dedup_key, outcome = apply(body)
        self._record(Accepted(request.path, body, dedup_key, outcome))
        answer: dict[str, Any] = {"status": "success", "message": "Event processed"}
        if dedup_key:
            answer["dedup_key"] = dedup_key
        return web.json_response(answer, status=202)

    async def _fault(self) -> web.Response | None:
        if not self._faults:
            return None
        fault = self._faults.popleft()
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.status is None:
            return None
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
        return web.json_response(
            {"status": "fault", "message": "injected by the test"}, status=fault.status, headers=headers
        )

    def _reject(self, errors: list[str]) -> web.Response:
        self.rejected.append({"errors": errors})
        return invalid(errors)

    def _throttled(self, routing_key: str) -> bool:
        now = self._clock()
        hits = self._hits.setdefault(routing_key, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.rate_limit:
            return True
        hits.append(now)
        return False

    def _apply_alert(self, body: dict[str, Any]) -> tuple[str, str]:
        routing_key, action = body["routing_key"], body["event_action"]
        dedup_key = body.get("dedup_key") or uuid.uuid4().hex
        incident = self.open_incident(routing_key, dedup_key)
        if action == "trigger":
            if incident is None:
                payload = body["payload"]
                number = len(self.incidents) + 1
                self.incidents.append(Incident(
                    routing_key, dedup_key, summary=payload["summary"], severity=payload["severity"],
                    id=f"Q{number:06d}", number=number, alert_keys=[dedup_key],
                ))
                return dedup_key, "opened"
            incident.triggers += 1
            incident.log.append("trigger")
            return dedup_key, "deduplicated"
        if incident is None:
            return dedup_key, "dropped"  # PagerDuty accepts it and drops it: no open alert on this key
        incident.status = "acknowledged" if action == "acknowledge" else "resolved"
        incident.log.append(action)
        return dedup_key, incident.status

    def _record(self, accepted: Accepted) -> None:
        self.accepted.append(accepted)
        if self._state_file is not None:
            line = {
                "path": accepted.path,
                "dedup_key": accepted.dedup_key,
                "outcome": accepted.outcome,
                "body": accepted.body,
            }
            with self._state_file.open("a", encoding="utf-8") as f:
                f.write(json.dumps(line, sort_keys=True) + "\n")
                f.flush()


    # --- REST API ------------------------------------------------------------------------------------

    def incident_json(self, incident: Incident) -> dict[str, Any]:
        """The REST ``incident`` object (the fields ack sync reads; webhook ``data`` has the same shape)."""
        priority = next((p for p in PRIORITIES if p["id"] == incident.priority_id), None)
        return {
            "id": incident.id, "type": "incident", "self": f"{self.url}/incidents/{incident.id}",
            "html_url": f"https://acme.pagerduty.com/incidents/{incident.id}", "number": incident.number,
            "status": incident.status, "title": incident.summary,
            # "incidents with child alerts do not have an incident key": after grouping there is none.
            "incident_key": incident.dedup_key if len(incident.alert_keys) == 1 else None,
            "service": {"id": incident.service_id, "type": "service_reference", "summary": "certificates"},
            "priority": None if priority is None else {
                "id": priority["id"], "type": "priority_reference", "summary": priority["name"],
            },
            "urgency": "high",
            "pending_actions": [{"type": "unacknowledge", "at": "later"}] if incident.snoozed_for else [],
        }

    async def _rest_gate(self, request: web.Request, *, write: bool) -> web.Response | None:
        """Auth, From, faults and the rate limit; None when the request may proceed."""
        body = await request.json() if request.can_read_body else None
        self.rest_requests.append((request.method, request.path, body))
        if self._rest_faults:
            fault = self._rest_faults.popleft()
            headers = {"ratelimit-reset": fault.retry_after} if fault.retry_after is not None else None
            return rest_error(fault.status or 500, "Injected by the test", 2000, headers=headers)
        if request.headers.get("Authorization") != f"Token token={self.api_token}":
            return rest_error(401, "Unauthorized", 2006)
        now = self._clock()
        while self._rest_hits and self._rest_hits[0] <= now - 60:
            self._rest_hits.popleft()
        if len(self._rest_hits) >= self.rest_rate_limit:
            reset = int(self._rest_hits[0] + 60 - now) + 1
            return rest_error(429, "Rate Limit Exceeded", 2020, headers={
                "ratelimit-limit": str(self.rest_rate_limit), "ratelimit-remaining": "0", "ratelimit-reset": str(reset),
            })
        self._rest_hits.append(now)
        if write and not request.headers.get("From"):
            return rest_error(400, "Invalid Input Provided", 2001, ["You must specify a From header"])
        return None

    def _incident_or_404(self, request: web.Request) -> Incident | web.Response:
        incident = self.by_id(request.match_info["id"])
        return incident if incident is not None else rest_error(404, "Not Found", 2100)

    async def _rest_list(self, request: web.Request) -> web.Response:
        if (refused := await self._rest_gate(request, write=False)) is not None:
            return refused
        key = request.query.get("incident_key")
        statuses = request.query.getall("statuses[]", [])
        found = [i for i in self.incidents if (key is None or key in i.alert_keys)
                 and (not statuses or i.status in statuses)]
        return web.json_response({"incidents": [self.incident_json(i) for i in found], "limit": 25, "offset": 0,
                                  "more": False, "total": None})

    async def _rest_get(self, request: web.Request) -> web.Response:
        if (refused := await self._rest_gate(request, write=False)) is not None:
            return refused
        incident = self._incident_or_404(request)
        if isinstance(incident, web.Response):
            return incident
        return web.json_response({"incident": self.incident_json(incident)})

    async def _rest_alerts(self, request: web.Request) -> web.Response:
        if (refused := await self._rest_gate(request, write=False)) is not None:
            return refused
        incident = self._incident_or_404(request)
        if isinstance(incident, web.Response):
            return incident
        alerts = [{"id": f"A{n}{incident.id}", "type": "alert", "alert_key": key, "status": incident.status}
                  for n, key in enumerate(incident.alert_keys)]
        return web.json_response({"alerts": alerts, "limit": 100, "offset": 0, "more": False})

    async def _rest_update(self, request: web.Request) -> web.Response:
        if (refused := await self._rest_gate(request, write=True)) is not None:
            return refused
        incident = self._incident_or_404(request)
        if isinstance(incident, web.Response):
            return incident
        fields = (self.rest_requests[-1][2] or {}).get("incident")
        if not isinstance(fields, dict) or fields.get("type") not in ("incident", "incident_reference"):
            return rest_error(400, "Invalid Input Provided", 2001, ["incident.type must be incident_reference"])
        status, priority = fields.get("status"), fields.get("priority")
        if status is not None and status not in ("acknowledged", "resolved"):
            return rest_error(400, "Invalid Input Provided", 2001, [f"Invalid status {status!r}"])
        if priority is not None and not any(p["id"] == (priority or {}).get("id") for p in PRIORITIES):
            return rest_error(400, "Invalid Input Provided", 2001, ["Priority not found"])
        if status is not None and incident.status != "resolved":
            incident.status = status
            incident.log.append(f"rest:{status}")
        if priority is not None:
            incident.priority_id = priority["id"]
            incident.log.append(f"rest:priority:{priority['id']}")
        return web.json_response({"incident": self.incident_json(incident)})

    async def _rest_snooze(self, request: web.Request) -> web.Response:
        if (refused := await self._rest_gate(request, write=True)) is not None:
            return refused
        incident = self._incident_or_404(request)
        if isinstance(incident, web.Response):
            return incident
        duration = (self.rest_requests[-1][2] or {}).get("duration")
        if not isinstance(duration, int) or not 1 <= duration <= SNOOZE_MAX:
            return rest_error(400, "Invalid Input Provided", 2001, [f"Duration must be 1..{SNOOZE_MAX} seconds"])
        if incident.status != "acknowledged":
            return rest_error(400, "Invalid Input Provided", 2001, ["Incident must be acknowledged to snooze"])
        incident.snoozed_for = duration
        incident.log.append(f"rest:snooze:{duration}")
        return web.json_response({"incident": self.incident_json(incident)}, status=201)

    async def _rest_priorities(self, request: web.Request) -> web.Response:
        if (refused := await self._rest_gate(request, write=False)) is not None:
            return refused
        return web.json_response({"priorities": PRIORITIES, "limit": 25, "offset": 0, "more": False})

    async def _rest_service(self, request: web.Request) -> web.Response:
        if (refused := await self._rest_gate(request, write=False)) is not None:
            return refused
        service = {"id": request.match_info["id"], "type": "service", "acknowledgement_timeout": self.ack_timeout}
        return web.json_response({"service": service})

    # --- Webhooks v3 the test sends ------------------------------------------------------------------

    def webhook(
        self, event_type: str, incident: Incident, *, agent: str | None = "Alice Oncall",
        occurred_at: str = "2026-11-20T10:05:00.000Z", event_id: str | None = None,
    ) -> dict[str, Any]:
        """A Webhooks v3 payload for ``incident`` as PagerDuty sends it (``agent=None``: no agent)."""
        return {"event": {
            "id": event_id or uuid.uuid4().hex, "event_type": event_type, "resource_type": "incident",
            "occurred_at": occurred_at,
            "agent": None if agent is None else {
                "id": "PUSER01", "type": "user_reference", "summary": agent,
                "html_url": "https://acme.pagerduty.com/users/PUSER01",
            },
            "client": None, "data": self.incident_json(incident),
        }}


def rest_error(
    status: int, message: str, code: int, errors: list[str] | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """PagerDuty's REST error body."""
    error: dict[str, Any] = {"message": message, "code": code}
    if errors:
        error["errors"] = errors
    return web.json_response({"error": error}, status=status, headers=headers)


@contextlib.asynccontextmanager
async def run_fake_pagerduty(host: str = "127.0.0.1", port: int = 0, **options: Any) -> AsyncIterator[FakePagerDuty]:
    """Serve a :class:`FakePagerDuty` on ``host:port`` (0: a free port) for the duration of the block."""
    fake = FakePagerDuty(**options)
    # A short shutdown timeout: a test that injected a slow answer must not wait for it at cleanup.
    runner = web.AppRunner(fake.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        fake.url = f"http://{shown}:{bound[1]}"
        yield fake
    finally:
        await runner.cleanup()


def sign(body: bytes, secret: str | bytes) -> str:
    """PagerDuty Webhooks v3 signature of a raw body: ``v1=<hex HMAC-SHA256>``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "v1=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def signature_header(body: bytes, *secrets: str | bytes) -> str:
    """The ``X-PagerDuty-Signature`` value: one ``v1=`` per active secret, comma-separated (rotation)."""
    return ",".join(sign(body, secret) for secret in secrets)


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    state = Path(args.state_file) if args.state_file else None
    async with run_fake_pagerduty(args.host, args.port, rate_limit=args.rate_limit, state_file=state) as fake:
        print(f"listening on {fake.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """Standalone mode for tests that run the bridge as a subprocess."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.pagerduty", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed on stdout)")
    parser.add_argument("--state-file", help="append one JSON line per accepted event")
    parser.add_argument("--rate-limit", type=int, default=120, help="accepted events per routing key per 60 s")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
