"""A fake Atlassian Statuspage REST API (v1): a real aiohttp server on loopback, for tests and benchmarks.

It answers as Statuspage documents (developer.statuspage.io; the SDKs generated from its OpenAPI spec):

- auth: ``Authorization: OAuth <key>`` (or ``?api_key=``); anything else is 401
  ``{"error": "Could not authenticate"}``. A page id the token does not own is 404
  ``{"error": "The requested resource could not be found."}``, as is an unknown incident or component.
- rate limit: 1 request per second per token measured on a 60 s rolling window (60 in any 60 s); over it
  the answer is 429 (or 420, the pre-2021 code, with ``limit_status=420``) with ``Retry-After``.
- ``GET /v1/pages/{page}/components`` (paginated), ``PATCH .../components/{id}`` ``{"component": {"status"}}``.
- incidents: ``POST .../incidents`` and ``PATCH .../incidents/{id}`` with ``{"incident": {...}}``: ``name``
  (required to create, <= 255), ``status`` (realtime investigating|identified|monitoring|resolved, scheduled
  scheduled|in_progress|verifying|completed), ``body`` (<= 25000, becomes an incident update),
  ``components`` ``{id: status}`` (sets the component), ``component_ids``, ``metadata`` (every top-level
  value must be an object), ``deliver_notifications``. Invalid input is 422 ``{"error": [...]}``.
  ``GET .../incidents/unresolved``, ``/active_maintenance``, ``/scheduled``, ``/{id}``, paginated with
  ``per_page`` (max 100) and ``page``.
- helpers for tests: :meth:`FakeStatuspage.open_human_incident` (what a person does in the UI: no
  metadata), :meth:`FakeStatuspage.start_maintenance` (an in-progress scheduled maintenance, components
  ``under_maintenance``), :meth:`FakeStatuspage.fail_next` (5xx, 420/429, slow answers, and
  ``apply=True`` to apply a write and then fail or stall, as a lost answer does).

``python -m tests.fakes.statuspage --port 0 --token T --page P --component ID=NAME ...`` runs it standalone
(``listening on <url>``); ``POST /_fake/fail_next`` and ``GET /_fake/state`` drive and read it. It never
imports the bridge.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

REALTIME = ("investigating", "identified", "monitoring", "resolved")
SCHEDULED = ("scheduled", "in_progress", "verifying", "completed")
COMPONENT_STATUSES = ("operational", "under_maintenance", "degraded_performance", "partial_outage", "major_outage")
IMPACT = {"operational": 0, "under_maintenance": 0, "degraded_performance": 1, "partial_outage": 2, "major_outage": 3}
IMPACT_NAMES = ("none", "minor", "major", "critical")
NAME_MAX, BODY_MAX = 255, 25_000
NOT_FOUND = "The requested resource could not be found."


@dataclass
class Component:
    id: str
    name: str
    status: str = "operational"
    history: list[str] = field(default_factory=list)  # every status it was set to, in order
    changed_at: list[float] = field(default_factory=list)  # when its status actually changed (the fake's clock)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "status": self.status, "description": None, "group_id": None}


@dataclass
class Incident:
    id: str
    name: str
    status: str
    metadata: dict[str, Any]
    component_ids: list[str]
    created_at: float
    updates: list[dict[str, Any]] = field(default_factory=list)
    by: str = "api"  # api | person

    @property
    def resolved(self) -> bool:
        return self.status in ("resolved", "completed", "postmortem")

    @property
    def scheduled(self) -> bool:
        return self.status in SCHEDULED


@dataclass
class Fault:
    status: int | None  # None: answer normally after the delay
    retry_after: str | None
    delay: float
    apply: bool  # apply the request first, then answer the fault (a write whose answer was lost)


@dataclass
class Logged:
    at: float
    method: str
    path: str
    status: int
    body: Any


class FakeStatuspage:
    """The fake's state and handlers; ``url`` is set once it listens."""

    def __init__(
        self,
        *,
        token: str = "sp-token",
        page_id: str = "page01",
        components: dict[str, str] | None = None,
        rate_limit: int = 60,
        window: float = 60.0,
        limit_status: int = 429,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = ""
        self.token = token
        self.page_id = page_id
        self.components = {cid: Component(cid, name) for cid, name in (components or {}).items()}
        self.incidents: dict[str, Incident] = {}
        self.rate_limit, self.window, self.limit_status = rate_limit, window, limit_status
        self._clock = clock
        self.log: list[Logged] = []  # every request that reached the fake, in order
        self._faults: deque[Fault] = deque()
        self._hits: deque[float] = deque()
        self._ids = itertools.count(1)

    # --- test helpers ---------------------------------------------------------------------------------

    def fail_next(
        self, n: int, status: int | None = 500, retry_after: float | str | None = None, delay: float = 0.0,
        apply: bool = False,
    ) -> None:
        """The next ``n`` requests wait ``delay`` s, then answer ``status`` (None: normally); ``apply``: do it first."""
        header = None if retry_after is None else str(retry_after)
        self._faults.extend(Fault(status, header, delay, apply) for _ in range(n))

    def open_human_incident(self, name: str, components: dict[str, str]) -> Incident:
        """An incident a person opened in the UI: no metadata, components set."""
        incident = self._new(name, "investigating", {}, list(components), by="person")
        self._set_components(components)
        incident.updates.append({"status": "investigating", "body": "opened by a person", "components": components})
        return incident

    def start_maintenance(self, name: str, component_ids: list[str]) -> Incident:
        """A scheduled maintenance now in progress (auto_transition_to_maintenance_state)."""
        incident = self._new(name, "in_progress", {}, component_ids, by="person")
        self._set_components({c: "under_maintenance" for c in component_ids})
        return incident

    def resolve_by_hand(self, incident_id: str) -> None:
        self.incidents[incident_id].status = "resolved"

    def own_incidents(self) -> list[Incident]:
        """Incidents carrying the bridge's metadata tag."""
        return [i for i in self.incidents.values() if "certpager" in i.metadata]

    def writes(self) -> list[Logged]:
        """Every answered write (POST/PATCH/PUT), in order."""
        return [entry for entry in self.log if entry.method != "GET"]

    def statuses(self) -> dict[str, str]:
        return {c.id: c.status for c in self.components.values()}

    # --- the API ----------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        base = "/v1/pages/{page_id}"
        app.router.add_get(base + "/components", self._list_components)
        app.router.add_patch(base + "/components/{component_id}", self._patch_component)
        app.router.add_put(base + "/components/{component_id}", self._patch_component)
        app.router.add_post(base + "/incidents", self._create)
        app.router.add_get(base + "/incidents", self._list_all)
        app.router.add_get(base + "/incidents/unresolved", self._list_unresolved)
        app.router.add_get(base + "/incidents/active_maintenance", self._list_maintenance)
        app.router.add_get(base + "/incidents/scheduled", self._list_scheduled)
        app.router.add_get(base + "/incidents/{incident_id}", self._get_incident)
        app.router.add_patch(base + "/incidents/{incident_id}", self._update)
        app.router.add_put(base + "/incidents/{incident_id}", self._update)
        app.router.add_post("/_fake/fail_next", self._control_fail_next)
        app.router.add_get("/_fake/state", self._control_state)
        return app

    async def _guarded(
        self, request: web.Request, apply: Callable[[Any], tuple[int, Any]], *, write: bool
    ) -> web.Response:
        """Auth, rate limit, faults and JSON parsing around one API call; the call returns (status, body)."""
        now = self._clock()
        body: Any = None
        if write:
            try:
                body = await request.json()
            except (ValueError, UnicodeDecodeError):
                return self._answer(request, now, 400, {"error": "Invalid JSON"})
        if not self._authorized(request):
            return self._answer(request, now, 401, {"error": "Could not authenticate"})
        if self._throttled(now):
            headers = {"Retry-After": str(max(int(self._hits[0] + self.window - now) + 1, 1))}
            return self._answer(request, now, self.limit_status, {"error": "Rate limited"}, headers)
        if request.match_info["page_id"] != self.page_id:
            return self._answer(request, now, 404, {"error": NOT_FOUND})
        fault = self._faults.popleft() if self._faults else None
        if fault is not None and fault.apply:
            status, data = apply(body)
            self._log(request, now, status, body)
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status is None:
                return web.json_response(data, status=status)
            return self._fault_answer(fault)
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status is not None:
                self._log(request, now, fault.status, body)
                return self._fault_answer(fault)
        status, data = apply(body)
        return self._answer(request, now, status, data, body=body)

    def _fault_answer(self, fault: Fault) -> web.Response:
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
        text = {420: "Rate limited", 429: "Rate limited"}.get(fault.status or 0, "Internal server error")
        return web.json_response({"error": text}, status=fault.status or 500, headers=headers)

    def _answer(
        self, request: web.Request, now: float, status: int, data: Any, headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> web.Response:
        self._log(request, now, status, body)
        return web.json_response(data, status=status, headers=headers)

    def _log(self, request: web.Request, now: float, status: int, body: Any) -> None:
        self.log.append(Logged(now, request.method, request.path_qs, status, body))

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme == "OAuth" and value == self.token:
            return True
        return request.query.get("api_key") == self.token

    def _throttled(self, now: float) -> bool:
        while self._hits and self._hits[0] <= now - self.window:
            self._hits.popleft()
        if len(self._hits) >= self.rate_limit:
            return True
        self._hits.append(now)
        return False

    # --- handlers ---------------------------------------------------------------------------------------

    async def _list_components(self, request: web.Request) -> web.Response:
        return await self._guarded(request, lambda _: (200, self._paginate(request, [
            c.to_json() for c in self.components.values()])), write=False)

    async def _patch_component(self, request: web.Request) -> web.Response:
        def apply(body: Any) -> tuple[int, Any]:
            component = self.components.get(request.match_info["component_id"])
            if component is None:
                return 404, {"error": NOT_FOUND}
            status = (body.get("component") or {}).get("status") if isinstance(body, dict) else None
            if status not in COMPONENT_STATUSES:
                return 422, {"error": [f"Status is not included in the list: {status!r}"]}
            self._set_components({component.id: status})
            return 200, component.to_json()

        return await self._guarded(request, apply, write=True)

    async def _list_all(self, request: web.Request) -> web.Response:
        return await self._listing(request, lambda i: True)

    async def _list_unresolved(self, request: web.Request) -> web.Response:
        return await self._listing(request, lambda i: not i.resolved and not i.scheduled)

    async def _list_maintenance(self, request: web.Request) -> web.Response:
        return await self._listing(request, lambda i: i.status in ("in_progress", "verifying"))

    async def _list_scheduled(self, request: web.Request) -> web.Response:
        return await self._listing(request, lambda i: i.status == "scheduled")

    async def _listing(self, request: web.Request, keep: Callable[[Incident], bool]) -> web.Response:
        def apply(_: Any) -> tuple[int, Any]:
            items = [self._json(i) for i in sorted(self.incidents.values(), key=lambda i: -i.created_at) if keep(i)]
            return 200, self._paginate(request, items)

        return await self._guarded(request, apply, write=False)

    def _paginate(self, request: web.Request, items: list[Any]) -> list[Any]:
        per_page = min(max(int(request.query.get("per_page", "100")), 1), 100)
        page = max(int(request.query.get("page", "1")), 1)
        return items[(page - 1) * per_page : page * per_page]

    async def _get_incident(self, request: web.Request) -> web.Response:
        def apply(_: Any) -> tuple[int, Any]:
            incident = self.incidents.get(request.match_info["incident_id"])
            return (200, self._json(incident)) if incident else (404, {"error": NOT_FOUND})

        return await self._guarded(request, apply, write=False)

    async def _create(self, request: web.Request) -> web.Response:
        def apply(body: Any) -> tuple[int, Any]:
            spec = body.get("incident") if isinstance(body, dict) else None
            if not isinstance(spec, dict):
                return 422, {"error": ["incident is missing"]}
            errors = self._check(spec, creating=True)
            if errors:
                return 422, {"error": errors}
            status = spec.get("status", "investigating")
            components = dict(spec.get("components") or {})
            ids = list(dict.fromkeys([*(spec.get("component_ids") or []), *components]))
            incident = self._new(spec["name"], status, dict(spec.get("metadata") or {}), ids)
            self._set_components(components)
            incident.updates.append({"status": status, "body": spec.get("body", ""), "components": components})
            return 201, self._json(incident)

        return await self._guarded(request, apply, write=True)

    async def _update(self, request: web.Request) -> web.Response:
        def apply(body: Any) -> tuple[int, Any]:
            incident = self.incidents.get(request.match_info["incident_id"])
            if incident is None:
                return 404, {"error": NOT_FOUND}
            spec = body.get("incident") if isinstance(body, dict) else None
            if not isinstance(spec, dict):
                return 422, {"error": ["incident is missing"]}
            errors = self._check(spec, creating=False, scheduled=incident.scheduled)
            if errors:
                return 422, {"error": errors}
            if "name" in spec:
                incident.name = spec["name"]
            if "metadata" in spec:
                incident.metadata = dict(spec["metadata"] or {})
            components = dict(spec.get("components") or {})
            if "component_ids" in spec:
                incident.component_ids = list(dict.fromkeys([*spec["component_ids"], *components]))
            else:
                incident.component_ids = list(dict.fromkeys([*incident.component_ids, *components]))
            self._set_components(components)
            status = spec.get("status", incident.status)
            if status != incident.status or "body" in spec:
                incident.updates.append({"status": status, "body": spec.get("body", ""), "components": components})
            incident.status = status
            return 200, self._json(incident)

        return await self._guarded(request, apply, write=True)

    def _check(self, spec: dict[str, Any], *, creating: bool, scheduled: bool = False) -> list[str]:
        errors: list[str] = []
        name = spec.get("name")
        if creating or "name" in spec:
            if not isinstance(name, str) or not name.strip():
                errors.append("Name can't be blank")
            elif len(name) > NAME_MAX:
                errors.append(f"Name is too long (maximum is {NAME_MAX} characters)")
        status = spec.get("status")
        allowed = SCHEDULED if scheduled or (creating and status in SCHEDULED) else REALTIME
        if status is not None and status not in allowed:
            errors.append(f"Status is not included in the list: {status!r}")
        body = spec.get("body")
        if body is not None and (not isinstance(body, str) or len(body) > BODY_MAX):
            errors.append(f"Body is too long (maximum is {BODY_MAX} characters)")
        components = spec.get("components") or {}
        if not isinstance(components, dict):
            errors.append("Components must be an object of component id to status")
            components = {}
        for cid, value in components.items():
            if cid not in self.components:
                errors.append(f"Component {cid} could not be found")
            elif value not in COMPONENT_STATUSES:
                errors.append(f"Component status {value!r} is not valid")
        for cid in spec.get("component_ids") or []:
            if cid not in self.components:
                errors.append(f"Component {cid} could not be found")
        metadata = spec.get("metadata")
        if metadata is not None and (
            not isinstance(metadata, dict) or any(not isinstance(v, dict) for v in metadata.values())
        ):
            errors.append("Metadata top level values must be objects")
        return errors

    def _new(self, name: str, status: str, metadata: dict[str, Any], ids: list[str], by: str = "api") -> Incident:
        incident = Incident(f"inc{next(self._ids):09d}", name, status, metadata, ids, self._clock(), by=by)
        self.incidents[incident.id] = incident
        return incident

    def _set_components(self, statuses: dict[str, str]) -> None:
        for cid, status in statuses.items():
            component = self.components[cid]
            if status != component.status:
                component.changed_at.append(self._clock())
            component.status = status
            component.history.append(status)

    def _json(self, incident: Incident) -> dict[str, Any]:
        components = [self.components[c].to_json() for c in incident.component_ids if c in self.components]
        worst = max((IMPACT[c["status"]] for c in components), default=0)
        return {
            "id": incident.id, "page_id": self.page_id, "name": incident.name, "status": incident.status,
            "impact": "maintenance" if incident.scheduled else IMPACT_NAMES[worst],
            "metadata": incident.metadata, "components": components,
            "incident_updates": [
                {"status": u["status"], "body": u["body"],
                 "affected_components": [{"code": c, "new_status": s} for c, s in u["components"].items()]}
                for u in reversed(incident.updates)
            ],
            "created_at": incident.created_at,
        }

    # --- standalone controls ----------------------------------------------------------------------------

    async def _control_fail_next(self, request: web.Request) -> web.Response:
        spec = await request.json()
        self.fail_next(int(spec["n"]), spec.get("status", 500), spec.get("retry_after"),
                       float(spec.get("delay", 0)), bool(spec.get("apply", False)))
        return web.json_response({"pending_faults": len(self._faults)})

    async def _control_state(self, request: web.Request) -> web.Response:
        return web.json_response({
            "incidents": [self._json(i) | {"by": i.by} for i in self.incidents.values()],
            "components": self.statuses(),
            "history": {c.id: c.history for c in self.components.values()},
            "log": [{"at": e.at, "method": e.method, "path": e.path, "status": e.status} for e in self.log],
        })


@contextlib.asynccontextmanager
async def run_fake_statuspage(host: str = "127.0.0.1", port: int = 0, **options: Any) -> AsyncIterator[FakeStatuspage]:
    """Serve a :class:`FakeStatuspage` on ``host:port`` (0: a free port) for the duration of the block."""
    fake = FakeStatuspage(**options)
    runner = web.AppRunner(fake.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        fake.url = f"http://{bound[0]}:{bound[1]}"
        yield fake
    finally:
        await runner.cleanup()


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    components = dict(spec.split("=", 1) for spec in args.component)
    async with run_fake_statuspage(args.host, args.port, token=args.token, page_id=args.page,
                                   components=components, rate_limit=args.rate_limit) as fake:
        print(f"listening on {fake.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """Standalone mode for tests and benchmarks that run the bridge as a subprocess."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.statuspage", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default="sp-token")
    parser.add_argument("--page", default="page01")
    parser.add_argument("--component", action="append", default=[], help="ID=NAME, repeatable")
    parser.add_argument("--rate-limit", type=int, default=60, help="requests per token per 60 s")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
