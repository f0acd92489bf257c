"""The exporter's HTTP app: /metrics (cached), /probe (on demand), lifecycle routes, a landing page.

:func:`create_app` takes a ready :class:`~exporter.app.Exporter`; with ``background=True`` the exporter's
scheduler and file watcher run for as long as the app is served (a lifespan context of the app).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import html
import math
from collections.abc import AsyncIterator

from aiohttp import web

from certpager.cli import plural
from certpager.web import add_lifecycle_routes, application, payload, stream, text
from exporter.app import Exporter, UnknownModuleError
from exporter.config import endpoint_problem

TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


def create_app(exporter: Exporter, *, background: bool = True) -> web.Application:
    """Build the app serving ``exporter``."""
    app = application()
    app.router.add_get("/", functools.partial(landing, exporter))
    app.router.add_get("/metrics", functools.partial(metrics, exporter))
    app.router.add_get("/probe", functools.partial(probe, exporter))
    add_lifecycle_routes(app, unready=exporter.tasks.unready, reload=exporter.reload,
                         reload_guard=functools.partial(_unauthorized, exporter))
    if background:
        app.cleanup_ctx.append(functools.partial(_run_background, exporter))
    return app


@contextlib.asynccontextmanager
async def _run_background(exporter: Exporter, _: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(exporter.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def metrics(exporter: Exporter, request: web.Request) -> web.StreamResponse:
    """Cached results of background probes plus self metrics; never probes.

    Streamed family by family: at 10,000 targets the body is tens of MB and must not be held twice.
    """
    return await stream(request, exporter.metrics_chunks(), TEXT_FORMAT)


async def probe(exporter: Exporter, request: web.Request) -> web.Response:
    """Probe ``target`` with ``module`` now, blackbox-style (with web.auth and probe.* checked first)."""
    if (refusal := _unauthorized(exporter, request)) is not None:
        exporter.metrics.probe_refused.labels("unauthorized").inc()
        return refusal
    target = request.query.get("target", "").strip()
    module_name = request.query.get("module", "tls")
    if not target:
        return _bad_request("missing parameter: target")
    module = exporter.config.all_modules.get(module_name)
    if module is None:
        return _bad_request(f"unknown module {module_name!r}")
    if module.kind != "file" and (problem := endpoint_problem(target)):
        return _bad_request(f"bad target: {problem}")
    if module.kind == "file" and exporter.scheduler.target(target) is None:
        # Reading any path the caller names would let anyone who reaches the port probe the host's files.
        return _bad_request(f"module {module_name!r} reads files: only configured targets can be probed")
    try:
        cap = _timeout_cap(request.headers.get("X-Prometheus-Scrape-Timeout-Seconds"),
                           exporter.config.global_.timeout_offset)
    except ValueError as exc:
        return _bad_request(str(exc))
    access = exporter.access
    if exporter.scheduler.target(target) is None and not access.allowed.allows(target):
        exporter.metrics.probe_refused.labels("not_allowed").inc()
        return text(f"target {target!r} is not allowed by probe.allowed_targets\n", 403)
    if not exporter.probe_slots.take(access.max_concurrent):
        exporter.metrics.probe_refused.labels("concurrency").inc()
        return text(f"{access.max_concurrent} probes are running already (probe.max_concurrent); retry later\n",
                    503, [("Retry-After", "1")])
    try:
        body = await exporter.probe_now(target, module_name, cap)
    except UnknownModuleError:  # the config was reloaded between the check and the probe
        return _bad_request(f"unknown module {module_name!r}")
    finally:
        exporter.probe_slots.release()
    return payload(body, TEXT_FORMAT)


def _unauthorized(exporter: Exporter, request: web.Request) -> web.Response | None:
    """A 401 with the challenges unless the request carries web.auth's credentials (or none are set)."""
    credentials = exporter.access.credentials
    if credentials.accepts(request.headers.get("Authorization", "")):
        return None
    return text("unauthorized\n", 401, credentials.challenges())


def _timeout_cap(header: str | None, offset: float) -> float | None:
    """Scrape timeout minus the offset, or None without the header (the module timeout applies)."""
    if header is None:
        return None
    try:
        seconds = float(header)
    except ValueError:
        raise ValueError(f"X-Prometheus-Scrape-Timeout-Seconds: expected seconds, got {header!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"X-Prometheus-Scrape-Timeout-Seconds: expected a positive number, got {header!r}")
    # A scrape timeout shorter than the offset still gets a (tiny) probe rather than none.
    return max(seconds - offset, seconds / 2 if seconds <= offset else 0.0)


def _bad_request(reason: str) -> web.Response:
    return text(reason + "\n", 400)


async def landing(exporter: Exporter, _: web.Request) -> web.Response:
    """A small page linking the endpoints."""
    modules = "".join(f"<li>{html.escape(name)}</li>" for name in sorted(exporter.config.all_modules))
    page = (
        "<html><head><title>certpager exporter</title></head><body><h1>certpager exporter</h1>"
        '<ul><li><a href="/metrics">/metrics</a></li>'
        '<li><a href="/probe?target=example.com:443&amp;module=tls">/probe?target=HOST:PORT&amp;module=NAME</a></li>'
        '<li><a href="/-/healthy">/-/healthy</a></li><li><a href="/-/ready">/-/ready</a></li></ul>'
        f"<p>{plural(len(exporter.scheduler), 'target')}; modules:</p><ul>{modules}</ul></body></html>"
    )
    return web.Response(text=page, content_type="text/html")
