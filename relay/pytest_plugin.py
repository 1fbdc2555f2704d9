# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""pytest fixtures that run a real trio-bridge tunnel inside the test (needs pytest-trio).

``bridge_tunnel`` is an in-process relay and agent on 127.0.0.1, the agent trusting a
throwaway CA and allowed to dial ``127.0.0.1:*``. It has ``connect(host, port)``, which
returns a `trio.abc.HalfCloseableStream` through the tunnel (what ``relay.connect`` gives a
service embedding the relay), and ``relay``, ``agent`` (``agents``), ``bridge_id``,
``bridge_name``, ``relay_url``. ``bridge_tunnel_factory`` makes tunnels of other shapes:
``await bridge_tunnel_factory(allow=["127.0.0.1:5432"], agents=2)`` (several agents sharing
one bridge's credentials, as for high availability). Everything stops when the test ends.
Outside pytest, use ``relay.testing.open_bridge_tunnel()``.

Example test module (with ``trio_mode = true`` in the pytest configuration)::

    from functools import partial

    import pytest
    import trio

    import relay


    async def echo(stream):
        async for data in stream:
            await stream.send_all(data)


    async def test_echo_through_the_tunnel(bridge_tunnel, nursery):
        listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        stream = await bridge_tunnel.connect("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"hello through the bridge")
            await stream.send_eof()
            assert b"".join([data async for data in stream]) == b"hello through the bridge"


    async def test_target_outside_the_allow_list(bridge_tunnel_factory):
        tunnel = await bridge_tunnel_factory(allow=["127.0.0.1:5432"])
        with pytest.raises(relay.TargetNotAllowed, match="not in allowed hosts list"):
            await tunnel.connect("127.0.0.1", 6379)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from relay.testing import BridgeTunnel, BridgeTunnelFactory


FIXTURES = frozenset({"bridge_tunnel", "bridge_tunnel_factory"})
MISSING_PYTEST_TRIO = (
    "the bridge_tunnel fixtures need pytest-trio: pip install 'trio-bridge[pytest]', "
    "and set trio_mode = true (or mark the tests with @pytest.mark.trio)"
)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test that uses the fixtures without pytest-trio fails with one line saying so
    (pytest alone cannot run async fixtures)."""
    if FIXTURES & set(
        getattr(item, "fixturenames", ())
    ) and not item.config.pluginmanager.hasplugin("trio"):
        pytest.fail(MISSING_PYTEST_TRIO, pytrace=False)


@pytest.fixture
async def bridge_tunnel_factory() -> AsyncIterator[BridgeTunnelFactory]:
    """``await bridge_tunnel_factory(allow=[...], agents=1, bridge_name=..., relay_config=...,
    agent_config=...)``: a new relay, bridge and agent(s), stopped when the test ends."""
    from relay.testing import open_bridge_tunnel_factory

    async with open_bridge_tunnel_factory() as factory:
        yield factory


@pytest.fixture
async def bridge_tunnel(bridge_tunnel_factory: BridgeTunnelFactory) -> BridgeTunnel:
    """A relay and one agent on 127.0.0.1 allowed to dial ``127.0.0.1:*``."""
    return await bridge_tunnel_factory()
