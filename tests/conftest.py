"""Suite-wide hooks.

Both services' CLIs run on uvloop, so every async test of the exporter and the bridge runs twice:
on asyncio's own loop and on uvloop (test ids end in ``[asyncio]`` / ``[uvloop]``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
LOOPS: Mapping[str, LoopFactory] = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, LoopFactory]:
    """pytest-asyncio's hook: every async test runs once per loop."""
    return LOOPS
