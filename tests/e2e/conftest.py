# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Fixtures for the end-to-end tests: a relay data dir with a bridge, and a launcher that
starts `bridge-relay serve` and `bridge-agent` the way a user runs them (PostgreSQL:
tests/conftest.py)."""

from __future__ import annotations

import functools
import signal
from collections.abc import Awaitable, Callable, Iterator

import pytest
import trio

from .process_fixtures import (  # noqa: F401 (fixtures and hooks, shared with tests/faults)
    bridge,
    bridge_template,
    cluster,
    launch,
    pytest_runtest_makereport,
    pytest_runtest_setup,
)


@pytest.fixture(scope="session", autouse=True)
def _tear_down_on_sigterm() -> Iterator[None]:
    """`timeout` and CI runners stop pytest with SIGTERM: tear the fixtures down (and so stop
    every process they started) as on Ctrl-C, instead of leaving servers running."""

    def interrupt(signum: int, frame) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# -- TCP servers in the test -------------------------------------------------------------------

Handler = Callable[[trio.SocketStream], Awaitable[None]]


@pytest.fixture
async def tcp_server(nursery: trio.Nursery) -> Callable[[Handler], Awaitable[str]]:
    """Starts a server on 127.0.0.1 running `handler` per connection; returns its HOST:PORT."""

    async def start(handler: Handler) -> str:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        )
        return f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"

    return start
