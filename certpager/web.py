"""HTTP serving shared by the exporter and the bridge: a small ASGI app run by uvicorn.

Both services expose the same lifecycle endpoints (Prometheus conventions): ``/-/healthy``,
``/-/ready``, ``POST /-/reload`` (SIGHUP too) and ``/metrics``. :class:`App` routes exact paths to
handlers that take a :class:`Request` and return a :class:`Response`; :func:`serve` runs an app on
uvicorn (with httptools' C parser) until SIGTERM/SIGINT and wires SIGHUP to the same reload callback as
the HTTP endpoint.

Why uvicorn and not aiohttp's server: the exporter has a memory budget (100 MiB at 10,000 targets,
docs/performance.md). Importing aiohttp costs 11 MiB of RSS (its client, the SSL contexts it builds at
import, 110 modules); uvicorn with httptools costs under 3 MiB for the same CPU per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ReloadFn = Callable[[], Awaitable[None]]
ReadyFn = Callable[[], bool]
Lifespan = Callable[[], contextlib.AbstractAsyncContextManager[None]]

TEXT = "text/plain; charset=utf-8"
KEEP_ALIVE_SECONDS = 75  # an idle client connection is kept this long (aiohttp's and nginx's default)
SHUTDOWN_GRACE_SECONDS = 10  # requests still running at shutdown get this long to finish
MAX_REQUEST_HEAD_BYTES = 64 * 1024  # request line plus headers; Prometheus and Alertmanager send < 1 KB


class ClientDisconnect(Exception):
    """The client went away before its request body was read."""


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request: method, path, query (first value per name) and headers (lower-case names)."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    receive: Receive = field(repr=False)

    async def body(self, limit: int) -> bytes | None:
        """The whole body, or None when it is over ``limit`` bytes (reading stops there)."""
        declared = self.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return None
        body = bytearray()
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect("the client closed the connection before the body was read")
            body += message.get("body", b"")
            if len(body) > limit:
                return None
            if not message.get("more_body", False):
                return bytes(body)


@dataclass(frozen=True, slots=True)
class Response:
    """A response: ``body`` is bytes, or an iterable of chunks that is streamed (chunked encoding)."""

    status: int = 200
    body: bytes | Iterable[bytes] = b""
    content_type: str = TEXT
    headers: Sequence[tuple[str, str]] = ()


def text(body: str, status: int = 200, headers: Sequence[tuple[str, str]] = ()) -> Response:
    """A text/plain response."""
    return Response(status, body.encode(), TEXT, headers)


Handler = Callable[[Request], Awaitable[Response]]


class App:
    """An ASGI application: exact-path routes per method, plus contexts that live as long as the server."""

    def __init__(self) -> None:
        self._routes: dict[str, dict[str, Handler]] = {}
        self._lifespans: list[Lifespan] = []

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Serve ``method`` on ``path`` with ``handler`` (a GET route answers HEAD too)."""
        self._routes.setdefault(path, {})[method] = handler

    def on_lifespan(self, context: Lifespan) -> None:
        """Enter ``context()`` before the server accepts requests and leave it after it stopped."""
        self._lifespans.append(context)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The app's lifespan contexts, entered in order and left in reverse."""
        async with contextlib.AsyncExitStack() as stack:
            for context in self._lifespans:
                await stack.enter_async_context(context())
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off: serve() runs the contexts itself
            return
        method = scope["method"]
        response = await self._dispatch(method, scope, receive)
        await _send_response(response, send, head=method == "HEAD")

    async def _dispatch(self, method: str, scope: Scope, receive: Receive) -> Response:
        methods = self._routes.get(scope["path"])
        if methods is None:
            return text("404 page not found\n", 404)
        handler = methods.get(method) or (methods.get("GET") if method == "HEAD" else None)
        if handler is None:
            allowed = ", ".join(sorted({*methods, *(["HEAD"] if "GET" in methods else [])}))
            return text(f"method {method} not allowed\n", 405, [("Allow", allowed)])
        try:
            return await handler(_request(method, scope, receive))
        except ClientDisconnect:
            return text("client disconnected\n", 400)
        except Exception:
            log.exception("request failed", extra={"kv": {"method": method, "path": scope["path"]}})
            return text("internal server error\n", 500)


def _request(method: str, scope: Scope, receive: Receive) -> Request:
    query: dict[str, str] = {}
    for name, value in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True, errors="replace"):
        query.setdefault(name, value)
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return Request(method, scope["path"], query, headers, receive)


async def _send_response(response: Response, send: Send, *, head: bool) -> None:
    headers = [(b"content-type", response.content_type.encode("latin-1"))]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    body = response.body
    if isinstance(body, bytes):
        headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    if head:
        await send({"type": "http.response.body", "body": b""})
    elif isinstance(body, bytes):
        await send({"type": "http.response.body", "body": body})
    else:
        for chunk in body:  # uvicorn's send waits while the client's socket is full
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def add_lifecycle_routes(
    app: App, *, ready: ReadyFn, reload: ReloadFn, reload_guard: Callable[[Request], Response | None] | None = None
) -> None:
    """Register /-/healthy, /-/ready and POST /-/reload on ``app``.

    ``reload_guard`` sees each reload request first; the response it returns (401, 403) is the answer
    and nothing is reloaded, None lets the reload go ahead.
    """

    async def healthy(_: Request) -> Response:
        return text("Healthy.\n")

    async def is_ready(_: Request) -> Response:
        return text("Ready.\n") if ready() else text("Not ready.\n", 503)

    async def do_reload(request: Request) -> Response:
        refusal = reload_guard(request) if reload_guard is not None else None
        if refusal is not None:
            return refusal
        try:
            await reload()
        except Exception as exc:  # the reason goes back to the operator who asked
            return text(f"failed to reload config: {exc}\n", 500)
        return text("Reloaded.\n")

    app.route("GET", "/-/healthy", healthy)
    app.route("GET", "/-/ready", is_ready)
    app.route("POST", "/-/reload", do_reload)


def render_registry(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """Render ``registry`` in the format the scraper asked for (text 0.0.4 or OpenMetrics)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def metrics_handler(registry: CollectorRegistry) -> Handler:
    """A /metrics handler for a registry (content-negotiated)."""

    async def handler(request: Request) -> Response:
        body, content_type = render_registry(registry, request.headers.get("accept"))
        return Response(200, body, content_type)

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


def bind(address: str) -> socket.socket:
    """A listening socket for ``address``; all interfaces (IPv6 and IPv4 where possible) without a host."""
    host, port = split_listen_address(address)
    if host is None:
        if socket.has_dualstack_ipv6():
            return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
        return socket.create_server(("", port))
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family)


class _BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on the request head.

    llhttp buffers a header of any length (100 MB sent as one header grew the process by 170 MB), so
    the bytes received while a request's head is incomplete are counted here and a head over
    :data:`MAX_REQUEST_HEAD_BYTES` gets a 400 and a closed connection. Bodies are bounded elsewhere:
    uvicorn stops reading above 64 KB the app has not taken, and :meth:`Request.body` takes a limit.
    """

    _head_bytes: int | None = 0  # None while a request's body is being read (its head is complete)

    def data_received(self, data: bytes) -> None:
        if self._head_bytes is not None:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._head_bytes is not None and self._head_bytes > MAX_REQUEST_HEAD_BYTES:
            self._head_bytes = None
            if not self.transport.is_closing():
                self.send_400_response(f"request line and headers over {MAX_REQUEST_HEAD_BYTES} bytes")

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._head_bytes = 0  # what follows is the next request's head
        super().on_message_complete()


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling: :func:`serve` owns SIGTERM/SIGINT/SIGHUP."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn would replace the handlers and raise the signal again after shutdown; SIGHUP reloads here.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.listening.set()


def _uvicorn_config(app: App) -> uvicorn.Config:
    return uvicorn.Config(
        app, http=_BoundedHttpTools, ws="none", lifespan="off", log_config=None, access_log=False,
        proxy_headers=False, server_header=False, timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )


async def serve(
    app: App,
    address: str,
    *,
    reload: ReloadFn | None = None,
    stop: asyncio.Event | None = None,
    started: Callable[[int], None] | None = None,
) -> None:
    """Serve ``app`` on ``address`` until SIGTERM/SIGINT (or ``stop`` is set).

    ``started`` is called with the bound port (useful with port 0 in tests and the demo). A bad or
    busy address raises OSError before anything runs.
    """
    sock = bind(address)
    bound = sock.getsockname()[1]
    server = _Server(_uvicorn_config(app))
    stop = stop or asyncio.Event()
    # uvicorn closes the socket when it stops; `with` closes it also when a lifespan context fails first.
    with sock:
        async with app.running():
            task = asyncio.create_task(server.serve(sockets=[sock]), name="certpager-http")
            with _signals(stop, reload):
                if await _until(task, server.listening):
                    host = split_listen_address(address)[0] or ""
                    log.info("listening", extra={"kv": {"address": f"{host}:{bound}"}})
                    if started is not None:
                        started(bound)
                    await _until(task, stop)
                server.should_exit = True
                await task


async def _until(task: asyncio.Task[None], event: asyncio.Event) -> bool:
    """Wait for ``event`` or the end of ``task``, whichever comes first; True if the event is set."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    return event.is_set()


@contextlib.contextmanager
def _signals(stop: asyncio.Event, reload: ReloadFn | None) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if reload is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_logged_reload(reload)))
    try:
        yield
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


async def _logged_reload(reload: ReloadFn) -> None:
    try:
        await reload()
    except Exception as exc:
        log.error("reload on SIGHUP failed", extra={"kv": {"err": str(exc)}})
