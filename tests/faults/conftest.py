# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Fixtures of the fault tests: real `bridge-relay` and `bridge-agent` processes (started with
tests/e2e's helpers), and a fault-injecting proxy between them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from ..e2e.process_fixtures import (  # noqa: F401 (fixtures and hooks, shared with tests/e2e)
    bridge,
    bridge_template,
    launch,
    pytest_runtest_makereport,
    pytest_runtest_setup,
)
from .fault_proxy import FaultProxy


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[int], FaultProxy]]:
    """``fault_proxy(upstream_port)``: a running `FaultProxy` to 127.0.0.1:upstream_port."""
    proxies: list[FaultProxy] = []

    def start(upstream_port: int) -> FaultProxy:
        proxies.append(FaultProxy(upstream_port).start())
        return proxies[-1]

    try:
        yield start
    finally:
        for proxy in proxies:
            proxy.close()
