"""certpager.web: routing, request parsing, streamed responses, body limits, lifecycle routes, serve()."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest
from prometheus_client import CollectorRegistry, Counter

from certpager.web import (
    App,
    Request,
    Response,
    add_lifecycle_routes,
    metrics_handler,
    serve,
    split_listen_address,
    text,
)


def echo_app() -> App:
    app = App()

    async def echo(request: Request) -> Response:
        return text(f"{request.method} {request.path} {sorted(request.query.items())} {request.headers.get('x-a')}\n")

    async def stream(_: Request) -> Response:
        return Response(body=(f"chunk {i}\n".encode() for i in range(3)))

    async def upload(request: Request) -> Response:
        body = await request.body(limit=10)
        return text("too large\n", 413) if body is None else text(f"got {body!r}\n")

    async def boom(_: Request) -> Response:
        raise RuntimeError("secret detail")

    app.route("GET", "/echo", echo)
    app.route("GET", "/stream", stream)
    app.route("POST", "/upload", upload)
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


async def test_lifespan_contexts_wrap_the_server(serve_app):
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def context():
        events.append("enter")
        yield
        events.append("exit")

    app = App()
    app.on_lifespan(context)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, "127.0.0.1:0", stop=stop, started=lambda port: events.append("listening")))
    while "listening" not in events:
        await asyncio.sleep(0.01)
    stop.set()
    await task
    assert events == ["enter", "listening", "exit"]


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
