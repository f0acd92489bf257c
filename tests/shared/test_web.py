"""certpager.web: routing, request parsing, streamed responses, body limits, lifecycle routes, serve()."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket

import pytest
from prometheus_client import CollectorRegistry, Counter

from certpager.web import (
    MAX_REQUEST_HEAD_BYTES,
    App,
    Request,
    Response,
    add_lifecycle_routes,
    metrics_handler,
    serve,
    split_listen_address,
    text,
)
from tests.webclient import listening


def echo_app() -> App:
    app = App()

    async def echo(request: Request) -> Response:
        return text(f"{request.method} {request.path} {sorted(request.query.items())} {request.headers.get('x-a')}\n")

    async def stream(_: Request) -> Response:
        return Response(body=(f"chunk {i}\n".encode() for i in range(3)))

    async def upload(request: Request) -> Response:
        body = await request.body(limit=10)
        return text("too large\n", 413) if body is None else text(f"got {body!r}\n")

    async def big_upload(request: Request) -> Response:
        body = await request.body(limit=4_000_000)
        return text(f"{len(body or b'')} bytes\n")

    async def boom(_: Request) -> Response:
        raise RuntimeError("secret detail")

    app.route("GET", "/echo", echo)
    app.route("GET", "/stream", stream)
    app.route("POST", "/upload", upload)
    app.route("POST", "/big", big_upload)
    app.route("GET", "/boom", boom)
    return app


async def test_routes_query_and_headers(serve_app):
    client = await serve_app(echo_app())
    resp = await client.get("/echo?b=2&a=1&a=3&empty=&t=%C3%A9", headers=[("X-A", "1"), ("X-A", "2")])
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert await resp.text() == "GET /echo [('a', '1'), ('b', '2'), ('empty', ''), ('t', 'é')] 1, 2\n"


async def test_unknown_path_is_404_and_wrong_method_is_405_with_allow(serve_app):
    client = await serve_app(echo_app())
    assert (await client.get("/nope")).status == 404
    resp = await client.post("/echo")
    assert resp.status == 405
    assert resp.headers["Allow"] == "GET, HEAD"


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
    app, state = App(), {"ready": False, "reloads": 0, "fail": False}

    async def reload() -> None:
        if state["fail"]:
            raise ValueError("bad config: x.yml: key y")
        state["reloads"] += 1

    add_lifecycle_routes(app, ready=lambda: bool(state["ready"]), reload=reload)
    client = await serve_app(app)
    assert await (await client.get("/-/healthy")).text() == "Healthy.\n"
    assert (await client.get("/-/ready")).status == 503
    state["ready"] = True
    assert (await client.get("/-/ready")).status == 200
    assert (await client.get("/-/reload")).status == 405
    assert (await client.post("/-/reload")).status == 200 and state["reloads"] == 1
    state["fail"] = True
    resp = await client.post("/-/reload")
    assert resp.status == 500
    assert await resp.text() == "failed to reload config: bad config: x.yml: key y\n"


async def test_metrics_handler_negotiates_openmetrics(serve_app):
    registry = CollectorRegistry()
    Counter("things", "Things.", registry=registry).inc()
    app = App()
    app.route("GET", "/metrics", metrics_handler(registry))
    client = await serve_app(app)
    plain = await client.get("/metrics")
    assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "things_total 1.0" in await plain.text()
    om = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await om.text()).endswith("# EOF\n")


async def test_lifespan_contexts_wrap_the_server():
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def context():
        events.append("enter")
        yield
        events.append("exit")

    app = App()
    app.on_lifespan(context)
    async with listening(app):
        events.append("listening")
    assert events == ["enter", "listening", "exit"]


async def test_a_failing_lifespan_context_releases_the_port():
    @contextlib.asynccontextmanager
    async def broken():
        raise OSError("store cannot open")
        yield

    with socket.socket() as probe_sock:
        probe_sock.bind(("127.0.0.1", 0))
        port = probe_sock.getsockname()[1]
    app = App()
    app.on_lifespan(broken)
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
            await serve(App(), f"127.0.0.1:{port}")


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
