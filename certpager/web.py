"""aiohttp server scaffolding shared by the exporter and the bridge.

Both services expose the same lifecycle endpoints (Prometheus conventions): ``/-/healthy``,
``/-/ready``, ``POST /-/reload`` (SIGHUP too) and ``/metrics``. :func:`serve` runs an app until
SIGTERM/SIGINT and wires SIGHUP to the same reload callback as the HTTP endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

ReloadFn = Callable[[], Awaitable[None]]
ReadyFn = Callable[[], bool]


def add_lifecycle_routes(app: web.Application, *, ready: ReadyFn, reload: ReloadFn) -> None:
    """Register /-/healthy, /-/ready and POST /-/reload on ``app``."""

    async def healthy(_: web.Request) -> web.Response:
        return web.Response(text="Healthy.\n")

    async def is_ready(_: web.Request) -> web.Response:
        if ready():
            return web.Response(text="Ready.\n")
        return web.Response(status=503, text="Not ready.\n")

    async def do_reload(_: web.Request) -> web.Response:
        try:
            await reload()
        except Exception as exc:  # the reason goes back to the operator who asked
            return web.Response(status=500, text=f"failed to reload config: {exc}\n")
        return web.Response(text="Reloaded.\n")

    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", is_ready)
    app.router.add_post("/-/reload", do_reload)


def render_registry(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """Render ``registry`` in the format the scraper asked for (text 0.0.4 or OpenMetrics)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def metrics_handler(registry: CollectorRegistry) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A /metrics handler for a registry (content-negotiated)."""

    async def handler(request: web.Request) -> web.Response:
        body, content_type = render_registry(registry, request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    return handler


def listen_address_problem(address: str) -> str | None:
    """The error to print for a bad ``--web.listen-address`` (both CLIs exit 2 on it), or None."""
    try:
        split_listen_address(address)
    except ValueError as exc:
        return f"--web.listen-address: {exc}"
    return None


def split_listen_address(address: str) -> tuple[str | None, int]:
    """Split ``host:port`` / ``[::1]:port`` / ``:port`` into (host or None for all, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected a listen address like :9879 or 127.0.0.1:9879, got {address!r}")
    host = host.strip("[]")
    return (host or None), int(port)


async def serve(
    app: web.Application,
    address: str,
    *,
    reload: ReloadFn | None = None,
    stop: asyncio.Event | None = None,
    started: Callable[[int], None] | None = None,
) -> None:
    """Serve ``app`` on ``address`` until SIGTERM/SIGINT (or ``stop`` is set).

    ``started`` is called with the bound port (useful with port 0 in tests and the demo).
    """
    host, port = split_listen_address(address)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = port
    server = site._server  # aiohttp exposes no public accessor for the bound port
    # Any server with sockets: under uvloop it is uvloop's own Server class, not an asyncio one.
    sockets = getattr(server, "sockets", None)
    if port == 0 and sockets:
        bound = sockets[0].getsockname()[1]
    log.info("listening", extra={"kv": {"address": f"{host or ''}:{bound}"}})
    if started is not None:
        started(bound)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if reload is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_logged_reload(reload)))
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        await runner.cleanup()


async def _logged_reload(reload: ReloadFn) -> None:
    try:
        await reload()
    except Exception as exc:
        log.error("reload on SIGHUP failed", extra={"kv": {"err": str(exc)}})
