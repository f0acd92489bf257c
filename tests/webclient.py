"""Serve a certpager app on a real loopback port for a test (certpager.web.serve), and talk to it with aiohttp."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.connector import Connection

from certpager.web import ServerLimits, serve

DEFAULT_LIMITS = ServerLimits()


@contextlib.asynccontextmanager
async def listening(app: web.Application, host: str = "127.0.0.1",
                    limits: ServerLimits = DEFAULT_LIMITS) -> AsyncIterator[int]:
    """Run ``app`` with :func:`certpager.web.serve` on ``host``, port 0; yield the port; stop it after."""
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(app, f"{host}:0", limits=limits, stop=stop, started=port.set_result))
    await asyncio.wait([task, port], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raises what stopped it
        raise RuntimeError("serve() returned before listening")
    try:
        yield port.result()
    finally:
        stop.set()
        await task


@contextlib.asynccontextmanager
async def serving(app: web.Application, host: str = "127.0.0.1") -> AsyncIterator[aiohttp.ClientSession]:
    """:func:`listening`, with an aiohttp session bound to the served app."""
    responses: list[aiohttp.ClientResponse] = []

    class Tracked(aiohttp.ClientResponse):
        """Released when the test ends, read or not (as pytest-aiohttp's test client does)."""

        async def start(self, connection: Connection) -> aiohttp.ClientResponse:
            responses.append(self)
            return await super().start(connection)

    async with listening(app, host) as port:
        base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        async with aiohttp.ClientSession(base_url=base, response_class=Tracked) as session:
            try:
                yield session
            finally:
                for response in responses:
                    response.release()
