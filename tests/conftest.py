"""Suite-wide hooks.

Both services' CLIs run on uvloop, so every async test of the exporter and the bridge runs twice:
on asyncio's own loop and on uvloop (test ids end in ``[asyncio]`` / ``[uvloop]``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping

import pytest
import uvloop

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
LOOPS: Mapping[str, LoopFactory] = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, LoopFactory]:
    """pytest-asyncio's hook: every async test runs once per loop; PostgreSQL-only ones on uvloop (the CLI's)."""
    if "postgres_server" in getattr(item, "fixturenames", ()):
        return {"uvloop": LOOPS["uvloop"]}
    return LOOPS


@pytest.fixture(scope="session")
def postgres_server():
    """A private PostgreSQL cluster for the whole session (tests/postgres.py), or None when not installed."""
    from tests.postgres import cluster

    with cluster() as server:
        yield server


@pytest.fixture
async def serve_app():
    """``await serve_app(app)``: the app served on 127.0.0.1 (certpager.web.serve), an aiohttp session bound to it."""
    from tests.webclient import serving

    async with contextlib.AsyncExitStack() as stack:

        async def start(app, host="127.0.0.1"):
            return await stack.enter_async_context(serving(app, host))

        yield start
