"""The Statuspage sink: IncidentEvents -> incidents and component status on an Atlassian Statuspage page.

What customers see is decided here, from the event and the page as it is now:

- **Which alerts.** A trigger at or above ``min_severity`` whose ``service`` label (configurable; several
  services comma-separated) names a service of ``component_map``. Others are skipped without a request
  (``certpager_bridge_statuspage_skipped_total{reason}``); unknown service names are counted
  (``certpager_bridge_statuspage_unknown_services_total{service}``), never an error.
- **One incident per group.** A bridge incident key is a *member* of one Statuspage incident. The group
  is the event's key (:func:`group_of`): with ``grouping`` on, the decisions already send a group of
  correlated certificates under one key, so a group is one Statuspage incident. A trigger opens the
  group's incident (``investigating``, templated name and body) or, when it is open, joins it with an
  update; a resolve leaves it with an update, and the last one resolves it.
- **Ownership.** Every incident the bridge opens carries ``metadata.certpager`` (group and members); only
  those are ever updated. A component that a person's open incident or an active scheduled maintenance
  holds is never set. Otherwise a component shows the worst status among the bridge's open incidents
  and goes back to ``operational`` when none holds it. Maintenance also keeps new incidents off its
  components.
- **State lives on the page.** The members are in the incident's metadata, so the sink keeps only a cache
  of the open incidents and active maintenances, read again when older than ``refresh_interval`` and
  after any write whose outcome is unknown (timeout, 5xx). A redelivery after a crash finds the incident
  it already opened (and the member it already added): nothing is opened twice.
- **Limits.** Every request (reads included) takes a slot of a local limiter, ``requests_per_second``
  (Statuspage allows 1 per second per token). 420 and 429 pause the whole sink for Retry-After (60 s
  without one); 5xx, timeouts and network errors are retried by the outbox; any other 4xx is a dead letter
  with Statuspage's error text.

Deliveries run one at a time (a lock): they share the page's component state, and the rate limit makes
parallel requests pointless. Failure is a result, never an exception; httpx errors are mapped in
:class:`HttpTransport` only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from bridge.events import Action, IncidentEvent, Severity
from bridge.metrics import StatuspageMetrics
from bridge.ratelimit import SlidingWindowLimiter
from bridge.sinks.base import DeadLetter, Delivered, DeliveryOutcome, OutboxItem, RetryLater
from bridge.sinks.pagerduty import parse_retry_after, read_event
from bridge.templates import DEFAULT_TEMPLATES, render

log = logging.getLogger(__name__)

METADATA_KEY = "certpager"  # metadata.certpager marks the incidents the bridge owns
NAME_MAX = 255  # characters, documented limit of incident.name
BODY_MAX = 25_000  # characters, documented limit of incident.body
RETRY_AFTER_DEFAULT = 60.0  # seconds, when a 420/429 has no Retry-After (Statuspage sends one)
PER_PAGE = 100  # Statuspage's maximum page size
MAX_PAGES = 20  # of open incidents read per refresh: 2,000 open incidents is far past any real page
EXCERPT = 300
# The local limiter spaces requests 2% wider than 1/rate: requests leave evenly spaced but arrive with
# network jitter, and Statuspage counts arrivals; at exactly 1.000 s one early arrival would be a 429.
SPACING_MARGIN = 1.02
SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2, Severity.CRITICAL: 3}
COMPONENT_RANK = {"operational": 0, "degraded_performance": 1, "partial_outage": 2, "major_outage": 3}


@dataclass(frozen=True, slots=True)
class StatuspageSettings:
    """What the sink reads from the config at each delivery (so a reload applies to queued events)."""

    page_id: str
    component_map: Mapping[str, str]
    service_label: str = "service"
    min_severity: Severity = Severity.CRITICAL
    component_status: Mapping[Severity, str] = field(default_factory=dict)
    templates: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TEMPLATES))
    refresh_interval: float = 60.0


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer, reduced to what the sink reads."""

    status: int
    data: Any = None  # parsed JSON, or None
    text: str = ""
    retry_after: str | None = None


class Transport(Protocol):
    """Sends one request to the Statuspage API (``path`` below the base URL, e.g. ``/v1/pages/x/incidents``)."""

    async def send(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Answer | RetryLater: ...

    async def aclose(self) -> None: ...


class HttpTransport:
    """The real API over httpx: ``Authorization: OAuth <token>``, the token looked up per request."""

    def __init__(self, client: httpx.AsyncClient, *, url: str, token: Callable[[], str | None]) -> None:
        self._client = client
        self._url = url.rstrip("/")
        self._token = token

    async def send(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Answer | RetryLater:
        token = self._token()
        if not token:
            return Answer(401, None, "no Statuspage API token configured")
        headers = {"Authorization": f"OAuth {token}", "Accept": "application/json"}
        content = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8", errors="replace")
        try:
            response = await self._client.request(method, self._url + path, content=content, headers=headers)
        except httpx.TimeoutException as exc:
            return RetryLater(after=None, error=f"timeout: {type(exc).__name__}")
        except httpx.HTTPError as exc:
            return RetryLater(after=None, error=f"network error: {type(exc).__name__}: {exc}")
        try:
            data = response.json()
        except ValueError:
            data = None
        return Answer(response.status_code, data, response.text, response.headers.get("Retry-After"))

    async def aclose(self) -> None:
        await self._client.aclose()


@dataclass(frozen=True, slots=True)
class Member:
    """One bridge incident key inside a Statuspage incident: its services and the status it asks for."""

    services: tuple[str, ...]
    components: Mapping[str, str]  # component id -> wanted status

    def to_json(self) -> dict[str, Any]:
        return {"services": list(self.services), "components": dict(self.components)}

    @classmethod
    def from_json(cls, data: Any) -> Member | None:
        if not isinstance(data, Mapping):
            return None
        services, components = data.get("services"), data.get("components")
        if not isinstance(services, list) or not isinstance(components, Mapping):
            return None
        return cls(tuple(str(s) for s in services), {str(c): str(s) for c, s in components.items()})


@dataclass(slots=True)
class OpenIncident:
    """An unresolved incident on the page; ``group`` is None when a person opened it."""

    id: str
    components: frozenset[str]  # component ids it lists
    group: str | None = None
    members: dict[str, Member] = field(default_factory=dict)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> OpenIncident:
        components = frozenset(
            str(c.get("id")) for c in data.get("components") or () if isinstance(c, Mapping) and c.get("id")
        )
        metadata = data.get("metadata")
        mine = metadata.get(METADATA_KEY) if isinstance(metadata, Mapping) else None
        if not isinstance(mine, Mapping) or not isinstance(mine.get("group"), str):
            return cls(str(data["id"]), components)
        raw = mine.get("members")
        if isinstance(raw, str):  # written as a JSON string: replaced whole whether PATCH merges metadata or not
            try:
                raw = json.loads(raw)
            except ValueError:
                raw = None
        members = {}
        for key, value in (raw.items() if isinstance(raw, Mapping) else ()):
            member = Member.from_json(value)
            if member is not None:
                members[str(key)] = member
        return cls(str(data["id"]), components, mine["group"], members)


@dataclass(slots=True)
class PageView:
    """The bridge's cache of the page: unresolved incidents and components under active maintenance."""

    incidents: dict[str, OpenIncident] = field(default_factory=dict)
    maintenance: frozenset[str] = frozenset()
    fetched_at: float | None = None  # None: must be read before the next write

    def own(self) -> list[OpenIncident]:
        return [i for i in self.incidents.values() if i.group is not None]

    def by_group(self, group: str) -> OpenIncident | None:
        return next((i for i in self.own() if i.group == group), None)

    def with_member(self, key: str) -> OpenIncident | None:
        return next((i for i in self.own() if key in i.members), None)

    def held(self) -> frozenset[str]:
        """Components the bridge must not set: a person's open incident or an active maintenance holds them."""
        people = (i.components for i in self.incidents.values() if i.group is None)
        return self.maintenance.union(*people)

    def apply(self, data: Any) -> None:
        """Take a written incident (the API's answer) into the cache."""
        if not isinstance(data, Mapping) or not data.get("id"):
            self.fetched_at = None  # an answer we cannot read: read the page again before the next write
            return
        if data.get("status") in ("resolved", "completed", "postmortem"):
            self.incidents.pop(str(data["id"]), None)
        else:
            incident = OpenIncident.from_api(data)
            self.incidents[incident.id] = incident


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Skip:
    reason: str  # below_severity | no_component | maintenance


def group_of(event: IncidentEvent) -> str:
    """The Statuspage incident an event belongs to: its incident key until grouping (#19) supplies a group key."""
    return event.key


def worst(statuses: Iterable[str]) -> str:
    """The worst component status of ``statuses``; ``operational`` when there is none."""
    return max(statuses, key=lambda s: COMPONENT_RANK.get(s, 0), default="operational")


def services_of(event: IncidentEvent, label: str) -> list[str]:
    """The services an event names: ``affected_services`` (every alert of the incident so far, read from
    ``label`` by the decisions), else the alert's ``label`` itself (comma-separated); in order, once each."""
    affected = event.custom_details.get("affected_services")
    if isinstance(affected, list) and affected:
        return list(dict.fromkeys(str(s) for s in affected))
    labels = event.custom_details.get("labels")
    raw = labels.get(label, "") if isinstance(labels, Mapping) else ""
    names = [s.strip() for s in str(raw).split(",") if s.strip()]
    return list(dict.fromkeys(names))


def member_for(event: IncidentEvent, settings: StatuspageSettings) -> tuple[Member | Skip, list[str]]:
    """The member a trigger would add (or why it is skipped), and the service names the map does not know."""
    if SEVERITY_RANK[event.severity] < SEVERITY_RANK[settings.min_severity]:
        return Skip("below_severity"), []
    names = services_of(event, settings.service_label)
    known = [n for n in names if n in settings.component_map]
    unknown = [n for n in names if n not in settings.component_map]
    if not known:
        return Skip("no_component"), unknown
    status = settings.component_status.get(event.severity, "major_outage")
    return Member(tuple(known), {settings.component_map[n]: status for n in known}), unknown


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text(template: str, services: Iterable[str], event: IncidentEvent) -> str:
    details = event.custom_details
    labels = details.get("labels") if isinstance(details.get("labels"), Mapping) else {}
    annotations = details.get("annotations") if isinstance(details.get("annotations"), Mapping) else {}
    values = {
        "services": ", ".join(dict.fromkeys(services)),
        "certificate": event.component,
        "environment": event.group,
        "severity": event.severity.value,
        "class": event.event_class,
    }
    return render(template, values, labels or {}, annotations or {})


def _component_changes(
    view: PageView, incident_id: str | None, before: Iterable[str], after: Mapping[str, Member]
) -> dict[str, str]:
    """The status each touched component should show: the worst among the bridge's open incidents."""
    held = view.held()
    wanted: dict[str, list[str]] = {}
    for other in view.own():
        if other.id != incident_id:
            for member in other.members.values():
                for component, status in member.components.items():
                    wanted.setdefault(component, []).append(status)
    for member in after.values():
        for component, status in member.components.items():
            wanted.setdefault(component, []).append(status)
    touched = set(before) | {c for m in after.values() for c in m.components}
    return {c: worst(wanted.get(c, ())) for c in sorted(touched - held)}


def _metadata(group: str, members: Mapping[str, Member]) -> dict[str, Any]:
    # Members as one JSON string: a PATCH replaces it whole, so a member that left never lingers even if
    # Statuspage deep-merged metadata objects.
    encoded = json.dumps({k: m.to_json() for k, m in sorted(members.items())}, separators=(",", ":"))
    return {METADATA_KEY: {"group": group, "members": encoded}}


def plan(
    view: PageView, event: IncidentEvent, member: Member | None, settings: StatuspageSettings
) -> Request | Skip | None:
    """The one request that makes the page reflect ``event`` (None: it already does)."""
    incidents = f"/v1/pages/{settings.page_id}/incidents"
    templates = settings.templates
    if event.action is Action.TRIGGER and member is not None:
        group = group_of(event)
        own = view.by_group(group)
        # Components under maintenance are left out (and, when that is all of them, no incident is opened).
        components = {c: s for c, s in member.components.items() if c not in view.maintenance}
        member = Member(member.services, components)
        if own is None:
            if not components:
                return Skip("maintenance")
            members = {event.key: member}
            changes = _component_changes(view, None, (), members)
            body = {
                "name": _cut(_text(templates["name"], member.services, event), NAME_MAX),
                "status": "investigating",
                "body": _cut(_text(templates["body"], member.services, event), BODY_MAX),
                "component_ids": sorted(c for c in components if c in changes),
                "components": changes,
                "metadata": _metadata(group, members),
                "deliver_notifications": True,
            }
            return Request("POST", incidents, {"incident": body})
        if own.members.get(event.key) == member:
            return None  # already a member with this status: a redelivery or a re-trigger
        members = {**own.members, event.key: member}
        return _update(view, own, members, event, settings)
    own = view.with_member(event.key)
    if own is None:
        return None  # never on the page (skipped, suppressed) or already gone
    members = {k: m for k, m in own.members.items() if k != event.key}
    if members:
        return _update(view, own, members, event, settings)
    before = {c for m in own.members.values() for c in m.components}
    services = [s for m in own.members.values() for s in m.services]
    body = {
        "status": "resolved",
        "body": _cut(_text(templates["resolved"], services, event), BODY_MAX),
        "components": _component_changes(view, own.id, before, {}),
        "metadata": _metadata(own.group or group_of(event), {}),
    }
    return Request("PATCH", f"{incidents}/{own.id}", {"incident": body})


def _update(
    view: PageView, own: OpenIncident, members: Mapping[str, Member], event: IncidentEvent,
    settings: StatuspageSettings,
) -> Request:
    """An incident update: an alert joined or left ``own``, which stays open."""
    before = {c for m in own.members.values() for c in m.components}
    changes = _component_changes(view, own.id, before, members)
    services = [s for m in members.values() for s in m.services]
    body = {
        "body": _cut(_text(settings.templates["update"], services, event), BODY_MAX),
        "component_ids": sorted({c for m in members.values() for c in m.components if c in changes}),
        "components": changes,
        "metadata": _metadata(own.group or group_of(event), members),
    }
    return Request("PATCH", f"/v1/pages/{settings.page_id}/incidents/{own.id}", {"incident": body})


def error_text(answer: Answer) -> str:
    """Statuspage's error text: ``{"error": "..."}`` or ``{"error": [...]}`` (or ``message``), else an excerpt."""
    data = answer.data
    if isinstance(data, Mapping):
        for name in ("error", "errors", "message"):
            value = data.get(name)
            if isinstance(value, list) and value:
                return "; ".join(str(v) for v in value)
            if isinstance(value, str) and value:
                return value
    text = " ".join(answer.text.split())
    return text if len(text) <= EXCERPT else text[: EXCERPT - 1] + "…"


def classify(answer: Answer) -> DeliveryOutcome:
    """Map one Statuspage answer to the outbox's outcome."""
    status = answer.status
    if 200 <= status < 300:
        return Delivered(status=status)
    if status in (420, 429):
        after = parse_retry_after(answer.retry_after)
        return RetryLater(after=RETRY_AFTER_DEFAULT if after is None else after, error=f"{status} rate limited",
                          status=status)
    if status >= 500:
        return RetryLater(after=None, error=f"{status} {error_text(answer)}".rstrip(), status=status)
    return DeadLetter(error=f"{status} {error_text(answer)}".rstrip(), status=status)


def _token_id(token: str | None) -> str:
    # The limiter keys on the token (the limit is per token); it remembers a hash, not the secret.
    return hashlib.sha256((token or "").encode()).hexdigest()[:16]


class StatuspageSink:
    """Delivers IncidentEvents to one Statuspage page (see the module docstring).

    >>> sink = StatuspageSink(HttpTransport(client, url=..., token=...), settings=lambda: settings)
    >>> outcome = await sink.deliver(item)  # Delivered | RetryLater | DeadLetter, never raises
    """

    name = "statuspage"
    one_replica = True  # its rate limiter and its view of the page are this process's: one replica delivers

    def __init__(
        self,
        transport: Transport,
        *,
        settings: Callable[[], StatuspageSettings],
        token: Callable[[], str | None] = lambda: None,
        requests_per_second: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        metrics: StatuspageMetrics | None = None,
    ) -> None:
        self._transport = transport
        self._settings = settings
        self._token = token
        self._limiter = SlidingWindowLimiter(1, SPACING_MARGIN / requests_per_second, clock=clock)
        self._clock = clock
        self._sleep = sleep
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self._paused_until = 0.0
        self.view = PageView()

    def held_back(self, item: OutboxItem) -> RetryLater | None:
        """While Statuspage asked to wait (420/429), every item waits, without a request."""
        wait = self._paused_until - self._clock()
        if wait <= 0:
            return None
        return RetryLater(after=wait, error="rate limited by Statuspage (Retry-After)", local=True)

    async def deliver(self, item: OutboxItem) -> DeliveryOutcome:
        """Make the page reflect one event; answer what the outbox should do with it."""
        held = self.held_back(item)
        if held is not None:
            return held
        event = read_event(item)
        if isinstance(event, DeadLetter):
            return event
        settings = self._settings()
        member: Member | None = None
        if event.action is Action.TRIGGER:
            wanted, unknown = member_for(event, settings)
            for service in unknown:
                self._count_unknown(service)
            if isinstance(wanted, Skip):
                return self._skipped(item, wanted)
            member = wanted
        elif SEVERITY_RANK[event.severity] < SEVERITY_RANK[settings.min_severity]:
            return self._skipped(item, Skip("below_severity"))  # its trigger never reached the page
        async with self._lock:
            held = self.held_back(item)  # a 420/429 may have come while this one waited for the lock
            if held is not None:
                return held
            return await self._deliver(item, event, member, settings)

    async def _deliver(
        self, item: OutboxItem, event: IncidentEvent, member: Member | None, settings: StatuspageSettings
    ) -> DeliveryOutcome:
        failure = await self._refresh(settings)
        if failure is not None:
            return failure
        request = plan(self.view, event, member, settings)
        if request is None:
            return Delivered(info="the page already shows it")
        if isinstance(request, Skip):
            return self._skipped(item, request)
        answer = await self._send(request.method, request.path, request.body)
        outcome = answer if isinstance(answer, RetryLater) else classify(answer)
        if isinstance(outcome, Delivered) and isinstance(answer, Answer):
            incident = answer.data.get("incident", answer.data) if isinstance(answer.data, Mapping) else None
            self.view.apply(incident)
        elif not isinstance(outcome, DeadLetter) or outcome.status == 404:
            self.view.fetched_at = None  # the write may have happened (or the page changed): read it again
        self._log(item, event, request, outcome)
        return outcome

    async def _refresh(self, settings: StatuspageSettings) -> DeliveryOutcome | None:
        """Read the open incidents and active maintenances when the cache is too old; a failure is the outcome."""
        now = self._clock()
        if self.view.fetched_at is not None and now - self.view.fetched_at < settings.refresh_interval:
            return None
        base = f"/v1/pages/{settings.page_id}/incidents"
        unresolved = await self._list(f"{base}/unresolved")
        if not isinstance(unresolved, list):
            return unresolved
        maintenances = await self._list(f"{base}/active_maintenance")
        if not isinstance(maintenances, list):
            return maintenances
        held: set[str] = set()
        for maintenance in maintenances:
            held.update(OpenIncident.from_api(maintenance).components)
        incidents = {}
        for data in unresolved:
            incident = OpenIncident.from_api(data)
            incidents[incident.id] = incident
        self.view = PageView(incidents, frozenset(held), fetched_at=now)
        return None

    async def _list(self, path: str) -> list[Mapping[str, Any]] | DeliveryOutcome:
        """Every item of a paginated list (at most MAX_PAGES pages of PER_PAGE)."""
        items: list[Mapping[str, Any]] = []
        for number in range(1, MAX_PAGES + 1):
            answer = await self._send("GET", f"{path}?per_page={PER_PAGE}&page={number}", None)
            if isinstance(answer, RetryLater):
                return answer
            outcome = classify(answer)
            if not isinstance(outcome, Delivered):
                return outcome
            if not isinstance(answer.data, list):
                return RetryLater(after=None, error=f"GET {path}: expected a JSON list, got {error_text(answer)}")
            items.extend(i for i in answer.data if isinstance(i, Mapping) and i.get("id"))
            if len(answer.data) < PER_PAGE:
                break
        return items

    async def _send(self, method: str, path: str, body: Mapping[str, Any] | None) -> Answer | RetryLater:
        """One request, after a slot of the local rate limit; a 420/429 pauses every request."""
        key = _token_id(self._token())
        while True:
            wait = max(self._paused_until - self._clock(), 0.0) or self._limiter.try_acquire(key)
            if wait <= 0:
                break
            await self._sleep(wait)
        answer = await self._transport.send(method, path, body)
        code = "error" if isinstance(answer, RetryLater) else str(answer.status)
        if self._metrics is not None:
            self._metrics.request(method, code).inc()
        if isinstance(answer, Answer) and answer.status in (420, 429):
            after = parse_retry_after(answer.retry_after)
            self._paused_until = self._clock() + (RETRY_AFTER_DEFAULT if after is None else after)
        return answer

    def _skipped(self, item: OutboxItem, skip: Skip) -> Delivered:
        if self._metrics is not None:
            self._metrics.skip(skip.reason).inc()
        log.debug("statuspage: not for the status page", extra={"kv": {"item": item.id, "reason": skip.reason}})
        return Delivered(info=f"skipped: {skip.reason}")

    def _count_unknown(self, service: str) -> None:
        if self._metrics is not None:
            self._metrics.unknown(service).inc()

    def _log(self, item: OutboxItem, event: IncidentEvent, request: Request, outcome: DeliveryOutcome) -> None:
        kv: dict[str, Any] = {
            "item": item.id, "key": event.key, "action": str(event.action),
            "request": f"{request.method} {request.path}", "result": type(outcome).__name__, "status": outcome.status,
        }
        if isinstance(outcome, Delivered):
            log.info("statuspage updated", extra={"kv": kv})
        elif isinstance(outcome, RetryLater):
            log.info("statuspage request to retry", extra={"kv": {**kv, "error": outcome.error}})
        else:
            log.warning("statuspage request dead-lettered", extra={"kv": {**kv, "error": outcome.error}})

    async def aclose(self) -> None:
        """Close the transport (the sink owns it once constructed)."""
        await self._transport.aclose()
