"""HTTP serving shared by the exporter and the bridge, on aiohttp's server.

Both services expose the same lifecycle endpoints (Prometheus conventions): ``/-/healthy``,
``/-/ready``, ``POST /-/reload`` (SIGHUP too) and ``/metrics``. Each builds an ``aiohttp.web``
application with :func:`application` (aiohttp's router: 404, 405 with ``Allow``, HEAD for GET routes)
and runs it with :func:`serve` until SIGTERM/SIGINT, SIGHUP calling the same reload as the endpoint.

What aiohttp does not do, :func:`serve` adds through public APIs only (asyncio's ``sock_accept`` and
``connect_accepted_socket``, aiohttp's ``AppRunner.server`` protocol factory and a middleware):

- a connection cap (``--web.max-connections``): the listener accepts only while fewer connections are
  open; the others wait in the kernel's backlog, as Prometheus's listener makes them;
- a read deadline (``--web.read-timeout``): a request's head and body must arrive within it from their
  first byte, and an idle keep-alive connection is closed after it;
- a bound on the request head (:data:`MAX_REQUEST_HEAD_BYTES`), answered with 400.

Each connection's asyncio protocol is :class:`_Connection`, which holds aiohttp's protocol and passes
every call on to it; it sees each byte first, and the middleware tells it when aiohttp has handed a
complete request head to a handler and when the handler is done.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import errno
import logging
import math
import signal
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from certpager.config import format_duration, parse_duration

log = logging.getLogger(__name__)

ReloadFn = Callable[[], Awaitable[None]]
UnreadyFn = Callable[[], Sequence[str]]  # why the service is not ready (empty: it is)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Headers = Sequence[tuple[str, str]]  # a name may repeat (one WWW-Authenticate per scheme)

TEXT = "text/plain; charset=utf-8"
SHUTDOWN_GRACE_SECONDS = 10  # requests still running at shutdown get this long to finish
MAX_REQUEST_HEAD_BYTES = 64 * 1024  # request line plus headers; Prometheus and Alertmanager send < 1 KB
LISTEN_BACKLOG = 2048  # connections waiting beyond the cap (the kernel caps it at net.core.somaxconn)
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_MAX_CONNECTIONS = 512  # Prometheus's --web.max-connections default


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """How long a client may take to send a request, and how many connections are served at once."""

    read_timeout: float = DEFAULT_READ_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """``--web.read-timeout`` and ``--web.max-connections`` (Prometheus's names), for both services."""
    parser.add_argument(
        "--web.read-timeout", dest="web_read_timeout", type=_timeout_flag, default=DEFAULT_READ_TIMEOUT,
        metavar="DURATION",
        help=f"a request's head and body must arrive within this from its first byte (else 408), and an idle "
             f"connection is closed after it (default: {format_duration(DEFAULT_READ_TIMEOUT)})")
    parser.add_argument(
        "--web.max-connections", dest="web_max_connections", type=_count_flag, default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help=f"connections served at once; more wait to be accepted (default: {DEFAULT_MAX_CONNECTIONS})")


def server_limits(args: argparse.Namespace) -> ServerLimits:
    """The limits :func:`add_server_flags` parsed."""
    return ServerLimits(read_timeout=args.web_read_timeout, max_connections=args.web_max_connections)


def _timeout_flag(value: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive duration like 30s, got {value!r}")
    return seconds


def _count_flag(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value!r}")
    return int(value)


class ReadTimeout(Exception):
    """A request body did not arrive within the read deadline."""


# --- building an application and its responses ------------------------------------------------------


SERVER_HEADER = "certpager"


def application() -> web.Application:
    """A new aiohttp application with certpager's middleware (connection state, 500 without details)."""
    app = web.Application(middlewares=[_request])
    app.on_response_prepare.append(_server_header)
    return app


async def _server_header(_: web.Request, response: web.StreamResponse) -> None:
    # aiohttp would send "Python/3.11 aiohttp/3.x": the versions an attacker looks up first.
    response.headers["Server"] = SERVER_HEADER


def text(body: str, status: int = 200, headers: Headers = ()) -> web.Response:
    """A text/plain response."""
    return payload(body.encode(), TEXT, status, headers)


def payload(body: bytes, content_type: str, status: int = 200, headers: Headers = ()) -> web.Response:
    """A response of ``body`` with a full Content-Type (parameters such as ``version=0.0.4`` kept)."""
    return web.Response(status=status, body=body, headers=[("Content-Type", content_type), *headers])


async def stream(request: web.Request, chunks: Iterable[bytes], content_type: str) -> web.StreamResponse:
    """Send ``chunks`` one after the other (chunked encoding); each write waits while the client is behind."""
    response = web.StreamResponse(headers={"Content-Type": content_type})
    response.enable_chunked_encoding()
    await response.prepare(request)
    if request.method != "HEAD":
        for chunk in chunks:
            await response.write(chunk)
    await response.write_eof()
    return response


async def read_body(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None when it is over ``limit`` bytes (reading stops there).

    Reading ends at the connection's read deadline (:class:`ReadTimeout`, answered 408 by the middleware).
    """
    if request.content_length is not None and request.content_length > limit:
        return None
    connection = _connection_of(request)
    deadline = connection.read_deadline if connection is not None else None
    body = bytearray()
    timeout = asyncio.timeout_at(deadline)
    try:
        async with timeout:
            while chunk := await request.content.readany():
                body += chunk
                if len(body) > limit:
                    return None
    except TimeoutError:
        if timeout.expired():
            raise ReadTimeout("request body not received within the read timeout") from None
        raise
    return bytes(body)


def add_lifecycle_routes(
    app: web.Application, *, unready: UnreadyFn, reload: ReloadFn,
    reload_guard: Callable[[web.Request], web.Response | None] | None = None,
) -> None:
    """Register /-/healthy, /-/ready and POST /-/reload on ``app``.

    ``reload_guard`` sees each reload request first; the response it returns (401, 403) is the answer
    and nothing is reloaded, None lets the reload go ahead.
    """

    async def healthy(_: web.Request) -> web.Response:
        return text("Healthy.\n")

    async def is_ready(_: web.Request) -> web.Response:
        reasons = unready()
        return text(f"Not ready: {'; '.join(reasons)}.\n", 503) if reasons else text("Ready.\n")

    async def do_reload(request: web.Request) -> web.Response:
        refusal = reload_guard(request) if reload_guard is not None else None
        if refusal is not None:
            return refusal
        try:
            await reload()
        except Exception as exc:  # the reason goes back to the operator who asked
            return text(f"failed to reload config: {exc}\n", 500)
        return text("Reloaded.\n")

    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", is_ready)
    app.router.add_post("/-/reload", do_reload)


def render_registry(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """Render ``registry`` in the format the scraper asked for (text 0.0.4 or OpenMetrics)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def metrics_handler(registry: CollectorRegistry) -> Handler:
    """A /metrics handler for a registry (content-negotiated)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        body, content_type = render_registry(registry, request.headers.get("Accept"))
        return payload(body, content_type)

    return handler


@web.middleware
async def _request(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Around every handler: tell the connection its request's head is complete, then that the handler
    is done; a handler that raises answers 500 without details (they are logged), 408 past the read
    deadline."""
    connection = _connection_of(request)  # None when served by something else (aiohttp's test server)
    if connection is not None:
        connection.request_started()
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except ReadTimeout as exc:
        response = text(f"{exc}\n", 408)
        response.force_close()  # the rest of the body is still on its way
        return response
    except ConnectionResetError:  # the client went away mid-body: nobody reads this, and nothing to log
        return text("client disconnected\n", 400)
    except Exception:
        log.exception("request failed", extra={"kv": {"method": request.method, "path": request.path}})
        return text("internal server error\n", 500)
    finally:
        if connection is not None:
            connection.request_done(body_read=request.content.is_eof())


def _connection_of(request: web.Request) -> _Connection | None:
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, _Connection) else None


# --- connections: deadlines and the head bound --------------------------------------------------------


class _State(enum.Enum):
    IDLE = "idle"  # waiting for a request's first byte
    HEAD = "head"  # a request's head is arriving
    BUSY = "busy"  # a handler has the request (it reads the body itself, under the same deadline)
    DRAINING = "draining"  # answered with its body unread: aiohttp discards the rest (lingering_time), then idle


_HEAD_END = b"\r\n\r\n"


class _Connection(asyncio.Protocol):
    """One client connection: aiohttp's protocol behind a read deadline and a head bound.

    Deadlines: idle, the connection is closed ``read_timeout`` after the last response; from a
    request's first byte, its head must be complete within ``read_timeout`` (else 408 and close), and
    :func:`read_body` reads its body up to the same deadline. One timer per connection, moved lazily
    (deadlines only ever move later): a request arms and cancels none.
    """

    def __init__(self, inner: asyncio.Protocol, read_timeout: float, on_lost: Callable[[], None]) -> None:
        self._inner = inner
        self._read_timeout = read_timeout
        self._on_lost = on_lost
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._state = _State.IDLE
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = math.inf  # when the state's deadline passes (inf while a handler has the request)
        self._head_bytes = 0
        self._head_tail = b""  # the last bytes seen, in case the head's end is split between reads
        self.read_deadline = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is one without subclassing it
        self._inner.connection_made(transport)
        self._idle()

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        if self._state is _State.IDLE and data:
            self._state, self._head_bytes, self._head_tail = _State.HEAD, 0, b""
            self.read_deadline = self._loop.time() + self._read_timeout
            self._set_deadline(self.read_deadline)
        if self._state is _State.HEAD and self._head_bytes >= 0:
            self._count_head(data)
            if self._head_bytes > MAX_REQUEST_HEAD_BYTES:
                self._refuse(400, "Bad Request", f"request line and headers over {MAX_REQUEST_HEAD_BYTES} bytes")
                return
        self._inner.data_received(data)

    def _count_head(self, data: bytes) -> None:
        """Count the head's bytes up to its blank line; -1 once it is seen (the rest is body)."""
        seen = self._head_tail + data
        end = seen.find(_HEAD_END)
        if end < 0:
            self._head_bytes += len(data)
            self._head_tail = seen[-3:]
        else:
            self._head_bytes += end + len(_HEAD_END) - len(self._head_tail)
            if self._head_bytes <= MAX_REQUEST_HEAD_BYTES:
                self._head_bytes = -1

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._transport = None
        try:
            self._inner.connection_lost(exc)
        finally:
            self._on_lost()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def request_started(self) -> None:
        """aiohttp handed a complete head to a handler: the head deadline is met."""
        if self._state is _State.IDLE:  # pipelined: its head arrived during the previous request
            self.read_deadline = self._loop.time() + self._read_timeout
        self._state = _State.BUSY
        self._deadline = math.inf

    def request_done(self, *, body_read: bool) -> None:
        """The handler returned: the connection is idle again, once what is left of the body is discarded.

        Bytes of a body the handler did not read (a 413, a 408) are not the head of a next request.
        """
        self._idle(_State.IDLE if body_read else _State.DRAINING)

    def _idle(self, state: _State = _State.IDLE) -> None:
        self._state = state
        self._set_deadline(self._loop.time() + self._read_timeout)

    def _set_deadline(self, when: float) -> None:
        self._deadline = when
        if self._timer is None:
            self._timer = self._loop.call_at(when, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self._transport is None or self._deadline == math.inf:
            return  # closed, or a handler has the request: request_done sets the next deadline
        if self._loop.time() < self._deadline:  # the deadline moved since the timer was set
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
        elif self._state is _State.HEAD:
            self._refuse(408, "Request Timeout", "request head not received within the read timeout")
        else:  # idle, or draining a body nobody read
            self._transport.close()

    def _refuse(self, status: int, phrase: str, reason: str) -> None:
        """Answer ``status`` and close: aiohttp never sees the request."""
        self._cancel_timer()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        body = f"{reason}\n".encode()
        transport.write(
            f"HTTP/1.1 {status} {phrase}\r\nContent-Type: {TEXT}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n".encode() + body
        )
        transport.close()


# --- the listener -----------------------------------------------------------------------------------


class _Listener:
    """Accepts connections while fewer than ``max_connections`` are open (Go's netutil.LimitListener)."""

    def __init__(self, sock: socket.socket, factory: Callable[[], asyncio.Protocol], limits: ServerLimits) -> None:
        self._sock = sock
        self._factory = factory
        self._limits = limits
        self._slots = asyncio.Semaphore(limits.max_connections)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._sock.setblocking(False)
        backoff = 0.0
        while True:
            await self._slots.acquire()
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as exc:
                self._slots.release()
                if exc.errno not in _TEMPORARY_ACCEPT_ERRORS:
                    raise
                # Out of descriptors (or a connection reset before it was accepted): wait, as Go's server does.
                backoff = min(1.0, max(0.005, backoff * 2))
                log.warning("accept failed, retrying", extra={"kv": {"err": str(exc), "retry_in": backoff}})
                await asyncio.sleep(backoff)
                continue
            backoff = 0.0
            try:
                await loop.connect_accepted_socket(self._protocol, conn)
            except OSError:
                conn.close()
                self._slots.release()

    def _protocol(self) -> asyncio.Protocol:
        return _Connection(self._factory(), self._limits.read_timeout, self._slots.release)


_TEMPORARY_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED,
                            errno.EAGAIN, errno.EPROTO, errno.EPERM, errno.EINTR}


# --- addresses and serve() --------------------------------------------------------------------------


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
            return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True,
                                        backlog=LISTEN_BACKLOG)
        return socket.create_server(("", port), backlog=LISTEN_BACKLOG)
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)


def _runner(app: web.Application, limits: ServerLimits) -> web.AppRunner:
    if _request not in app.middlewares:
        raise ValueError("serve() needs an app built with certpager.web.application()")
    return web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
        # _Connection closes idle connections after the read timeout; aiohttp's own timer is a backstop.
        keepalive_timeout=2 * limits.read_timeout,
        # Whatever is left of a body no handler read is drained for at most this long, then the connection closes.
        lingering_time=min(10.0, limits.read_timeout),
        # One bound on the whole head (_Connection); aiohttp's per-line bounds no tighter than it.
        max_line_size=MAX_REQUEST_HEAD_BYTES, max_field_size=MAX_REQUEST_HEAD_BYTES,
    )


async def serve(
    app: web.Application,
    address: str,
    *,
    limits: ServerLimits | None = None,
    reload: ReloadFn | None = None,
    stop: asyncio.Event | None = None,
    started: Callable[[int], None] | None = None,
) -> None:
    """Serve ``app`` (from :func:`application`) on ``address`` until SIGTERM/SIGINT (or ``stop`` is set).

    The app's startup and cleanup contexts (``app.cleanup_ctx``) run before the first connection is
    accepted and after the last request finished. ``started`` is called with the bound port (useful
    with port 0 in tests and the demo). A bad or busy address raises OSError before anything runs.
    """
    limits = limits or ServerLimits()
    runner = _runner(app, limits)
    stop = stop or asyncio.Event()
    with bind(address) as sock:
        try:
            await runner.setup()
            assert runner.server is not None
            listener = asyncio.create_task(_Listener(sock, runner.server, limits).run(), name="certpager-http")
            with _signals(stop, reload):
                host = split_listen_address(address)[0] or ""
                bound = sock.getsockname()[1]
                log.info("listening", extra={"kv": {"address": f"{host}:{bound}"}})
                if started is not None:
                    started(bound)
                await _until(listener, stop)
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
        finally:
            sock.close()  # no more connections; then the open ones finish (SHUTDOWN_GRACE_SECONDS)
            await runner.cleanup()


async def _until(task: asyncio.Task[None], event: asyncio.Event) -> None:
    """Wait for ``event`` or the end of ``task`` (raising what ended it), whichever comes first."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        task.result()


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
