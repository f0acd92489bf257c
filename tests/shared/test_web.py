"""certpager.web: aiohttp apps served by serve(): routing, streamed responses, body limits, lifecycle routes,
the request head bound, read deadlines and the connection cap."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from certpager.cli import build_parser
from certpager.web import (
    MAX_REQUEST_HEAD_BYTES,
    ServerLimits,
    add_lifecycle_routes,
    application,
    metrics_handler,
    read_body,
    serve,
    server_limits,
    split_listen_address,
    stream,
    text,
)
from tests.webclient import listening


def echo_app() -> web.Application:
    app = application()

    async def echo(request: web.Request) -> web.Response:
        query = sorted((name, request.query[name]) for name in request.query)
        return text(f"{request.method} {request.path} {query} {request.headers.getall('X-A', None)}\n")

    async def chunks(request: web.Request) -> web.StreamResponse:
        return await stream(request, (f"chunk {i}\n".encode() for i in range(3)), "text/plain; charset=utf-8")

    async def upload(request: web.Request) -> web.Response:
        body = await read_body(request, limit=10)
        return text("too large\n", 413) if body is None else text(f"got {body!r}\n")

    async def big_upload(request: web.Request) -> web.Response:
        body = await read_body(request, limit=4_000_000)
        return text(f"{len(body or b'')} bytes\n")

    async def boom(_: web.Request) -> web.Response:
        raise RuntimeError("secret detail")

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(1.5)
        return text("done\n")

    app.router.add_get("/echo", echo)
    app.router.add_get("/stream", chunks)
    app.router.add_post("/upload", upload)
    app.router.add_post("/big", big_upload)
    app.router.add_get("/boom", boom)
    app.router.add_get("/slow", slow)
    return app


async def test_routes_query_and_headers(serve_app):
    client = await serve_app(echo_app())
    resp = await client.get("/echo?b=2&a=1&a=3&empty=&t=%C3%A9", headers=[("X-A", "1"), ("X-A", "2")])
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert await resp.text() == "GET /echo [('a', '1'), ('b', '2'), ('empty', ''), ('t', 'é')] ['1', '2']\n"


async def test_unknown_path_is_404_and_wrong_method_is_405_with_allow(serve_app):
    client = await serve_app(echo_app())
    assert (await client.get("/nope")).status == 404
    resp = await client.post("/echo")
    assert resp.status == 405
    assert {m.strip() for m in resp.headers["Allow"].split(",")} == {"GET", "HEAD"}


async def test_no_response_names_the_python_or_aiohttp_version(serve_app):
    client = await serve_app(echo_app())
    for resp in (await client.get("/echo"), await client.get("/nope"), await client.post("/echo"),
                 await client.get("/stream"), await client.get("/boom")):
        assert resp.headers["Server"] == "certpager"
        assert not any(re.search(r"python|aiohttp", value, re.I) for value in resp.headers.values())


async def test_head_answers_a_get_route_without_body(serve_app):
    client = await serve_app(echo_app())
    resp = await client.head("/echo")
    assert resp.status == 200
    assert await resp.read() == b""


async def test_iterable_body_is_streamed_chunked(serve_app):
    client = await serve_app(echo_app())
    resp = await client.get("/stream")
    assert resp.headers["Transfer-Encoding"] == "chunked"
    assert await resp.text() == "chunk 0\nchunk 1\nchunk 2\n"
    head = await client.head("/stream")
    assert head.status == 200 and await head.read() == b""


async def test_body_limit_by_length_and_by_chunks(serve_app):
    client = await serve_app(echo_app())
    assert await (await client.post("/upload", data=b"0123456789")).text() == "got b'0123456789'\n"
    assert (await client.post("/upload", data=b"0123456789A")).status == 413

    async def chunks():
        for _ in range(4):
            yield b"abcd"

    assert (await client.post("/upload", data=chunks())).status == 413


async def test_handler_error_is_a_500_without_details(serve_app, caplog):
    client = await serve_app(echo_app())
    resp = await client.get("/boom")
    assert resp.status == 500
    assert await resp.text() == "internal server error\n"
    assert "request failed" in caplog.text


async def test_lifecycle_routes(serve_app):
    app, state = application(), {"ready": False, "reloads": 0, "fail": False}

    async def reload() -> None:
        if state["fail"]:
            raise ValueError("bad config: x.yml: key y")
        state["reloads"] += 1

    add_lifecycle_routes(app, unready=lambda: [] if state["ready"] else ["a", "b"], reload=reload)
    client = await serve_app(app)
    assert await (await client.get("/-/healthy")).text() == "Healthy.\n"
    resp = await client.get("/-/ready")
    assert (resp.status, await resp.text()) == (503, "Not ready: a; b.\n")
    state["ready"] = True
    resp = await client.get("/-/ready")
    assert (resp.status, await resp.text()) == (200, "Ready.\n")
    assert (await client.get("/-/reload")).status == 405
    assert (await client.post("/-/reload")).status == 200 and state["reloads"] == 1
    state["fail"] = True
    resp = await client.post("/-/reload")
    assert resp.status == 500
    assert await resp.text() == "failed to reload config: bad config: x.yml: key y\n"


async def test_metrics_handler_negotiates_openmetrics(serve_app):
    registry = CollectorRegistry()
    Counter("things", "Things.", registry=registry).inc()
    app = application()
    app.router.add_get("/metrics", metrics_handler(registry))
    client = await serve_app(app)
    plain = await client.get("/metrics")
    assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "things_total 1.0" in await plain.text()
    om = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await om.text()).endswith("# EOF\n")


async def test_cleanup_contexts_wrap_the_server():
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def context(_):
        events.append("enter")
        yield
        events.append("exit")

    app = application()
    app.cleanup_ctx.append(context)
    async with listening(app):
        events.append("listening")
    assert events == ["enter", "listening", "exit"]


async def test_an_app_without_certpagers_middleware_is_refused():
    with pytest.raises(ValueError, match=r"application\(\)"):
        await serve(web.Application(), "127.0.0.1:0")


async def test_a_failing_cleanup_context_releases_the_port():
    @contextlib.asynccontextmanager
    async def broken(_):
        raise OSError("store cannot open")
        yield

    with socket.socket() as probe_sock:
        probe_sock.bind(("127.0.0.1", 0))
        port = probe_sock.getsockname()[1]
    app = application()
    app.cleanup_ctx.append(broken)
    with pytest.raises(OSError, match="store cannot open"):
        await serve(app, f"127.0.0.1:{port}")
    with socket.create_server(("127.0.0.1", port)):  # free again: bind would fail if it leaked
        pass


async def test_ipv6_loopback(serve_app):
    client = await serve_app(echo_app(), "::1")
    assert (await client.get("/echo")).status == 200


async def test_busy_address_raises_before_running():
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(OSError):
            await serve(application(), f"127.0.0.1:{port}")


@pytest.mark.parametrize("address,expected", [(":9879", (None, 9879)), ("[::1]:80", ("::1", 80)),
                                              ("127.0.0.1:0", ("127.0.0.1", 0))])
def test_split_listen_address(address, expected):
    assert split_listen_address(address) == expected


async def raw_exchange(port: int, *requests: bytes) -> list[bytes]:
    """Send ``requests`` one after the other on one keep-alive connection; each answer's status line and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for request in requests:
            writer.write(request)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))
            body = await asyncio.wait_for(reader.readexactly(length), 5)
            answers.append(head.split(b"\r\n", 1)[0].removeprefix(b"HTTP/1.1 ") + b"\n" + body)
    finally:
        writer.close()
    return answers


def get(path: str, header_bytes: int = 0) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\nX-Pad: {'a' * header_bytes}\r\n\r\n".encode()


async def send_endless_head(port: int) -> tuple[bytes, bool]:
    """Send a header that never ends (up to 4 MB, 64 KB at a time) while reading the answer.

    Returns what was read and whether the server reset the connection: it closes with our bytes
    unread, so the kernel may reset it before the answer is read.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    read = asyncio.create_task(reader.read())
    try:
        writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Pad: ")
        for _ in range(64):
            if read.done():
                break
            writer.write(b"a" * 65536)
            await writer.drain()
        writer.write_eof()
    except ConnectionError:
        pass
    finally:
        try:
            data, reset = await asyncio.wait_for(read, 5), False
        except ConnectionResetError:
            data, reset = b"", True
        writer.close()
    return data, reset


async def test_request_head_over_the_limit_is_a_400_and_the_server_goes_on():
    async with listening(echo_app()) as port:
        # Unbounded, llhttp would buffer all 4 MB and the server would close at our EOF without an answer.
        data, reset = await send_endless_head(port)
        assert reset or data.startswith(b"HTTP/1.1 400 Bad Request"), data[:100]
        if data:
            assert data.endswith(f"request line and headers over {MAX_REQUEST_HEAD_BYTES} bytes".encode())
        [ok] = await raw_exchange(port, get("/echo", MAX_REQUEST_HEAD_BYTES - 1000))
        assert ok.startswith(b"200 OK")


async def test_the_head_bound_is_per_request_and_does_not_count_bodies():
    async with listening(echo_app()) as port:
        half = MAX_REQUEST_HEAD_BYTES // 2 + 1000  # two such heads on one connection exceed one bound
        answers = await raw_exchange(port, get("/echo", half), get("/echo", half))
        assert [a[:6] for a in answers] == [b"200 OK", b"200 OK"]
        body = b"x" * 1_000_000
        post = b"POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        [answer] = await raw_exchange(port, post)
        assert answer.startswith(b"200 OK") and answer.endswith(b"1000000 bytes\n")


SHORT = ServerLimits(read_timeout=1.0)


async def read_until_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the server sends until it closes the connection (fails if it is still open after ``within``)."""
    try:
        return await asyncio.wait_for(reader.read(), within)
    except ConnectionResetError:
        return b""


async def trickle(writer: asyncio.StreamWriter, data: bytes, every: float) -> None:
    """Send ``data`` one byte at a time (a slowloris client); stop when the server closed."""
    with contextlib.suppress(ConnectionError):
        for i in range(len(data)):
            writer.write(data[i:i + 1])
            await writer.drain()
            await asyncio.sleep(every)


async def test_a_slow_request_head_gets_a_408_at_the_read_deadline():
    async with listening(echo_app(), limits=SHORT) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sender = asyncio.create_task(trickle(writer, get("/echo", 100), every=0.2))
        try:
            # A byte every 0.2 s keeps arriving: the deadline counts from the first byte, not the last.
            answer = await read_until_closed(reader, within=5)
        finally:
            sender.cancel()
            writer.close()
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer
        assert not answer or answer.endswith(b"request head not received within the read timeout\n")


async def test_a_slow_request_body_gets_a_408_at_the_read_deadline():
    async with listening(echo_app(), limits=SHORT) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
        sender = asyncio.create_task(trickle(writer, b"x" * 1000, every=0.2))
        try:
            answer = await read_until_closed(reader, within=5)
        finally:
            sender.cancel()
            writer.close()
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer
        assert answer.endswith(b"request body not received within the read timeout\n")


@pytest.mark.parametrize("requests_first", [0, 1])
async def test_an_idle_connection_is_closed_at_the_read_deadline(requests_first):
    async with listening(echo_app(), limits=SHORT) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(requests_first):  # idle after a keep-alive response, or from the start
                writer.write(get("/echo"))
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))
                await reader.readexactly(length)
            assert await read_until_closed(reader, within=5) == b""
        finally:
            writer.close()


async def test_the_read_deadline_does_not_cut_a_slow_handler():
    async with listening(echo_app(), limits=SHORT) as port:
        [answer] = await raw_exchange(port, get("/slow"))  # 1.5 s of handler time, deadline 1 s
        assert answer.startswith(b"200 OK") and answer.endswith(b"done\n")


async def test_beyond_max_connections_new_connections_wait_for_a_free_slot():
    async with listening(echo_app(), limits=ServerLimits(read_timeout=30, max_connections=2)) as port:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        waiting = asyncio.create_task(raw_exchange(port, get("/echo")))
        try:
            await asyncio.sleep(0.5)
            assert not waiting.done()  # accepted by the kernel, not served: both slots are taken
            idle[0][1].close()
            [answer] = await asyncio.wait_for(waiting, 5)
            assert answer.startswith(b"200 OK")
        finally:
            waiting.cancel()
            for _, writer in idle:
                writer.close()


@pytest.mark.parametrize("command", ["exporter", "bridge"])
def test_both_services_take_the_server_flags(command):
    parser = build_parser(command)
    defaults = parser.parse_args([command])
    assert server_limits(defaults) == ServerLimits(read_timeout=30.0, max_connections=512)
    args = parser.parse_args([command, "--web.read-timeout", "1m30s", "--web.max-connections", "64"])
    assert server_limits(args) == ServerLimits(read_timeout=90.0, max_connections=64)


@pytest.mark.parametrize("flag,value,message", [
    ("--web.read-timeout", "0s", "expected a positive duration"),
    ("--web.read-timeout", "soon", "expected a duration"),
    ("--web.max-connections", "0", "expected a positive whole number"),
    ("--web.max-connections", "²", "expected a positive whole number"),
])
def test_bad_server_flags_are_usage_errors(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser("exporter").parse_args(["exporter", f"{flag}={value}"])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
