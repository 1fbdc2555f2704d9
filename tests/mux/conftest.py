# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

import pytest
import trio
import trio.testing

import mux

from .mux_support import Link


@pytest.fixture
def link() -> Link:
    return Link()


def socket_stream_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    left, right = trio.socket.socketpair()
    return trio.SocketStream(left), trio.SocketStream(right)


TRANSPORTS = {"memory": trio.testing.memory_stream_pair, "socket": socket_stream_pair}


class SessionPairs:
    """Opens client/server session pairs; they live until the test ends."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    async def open(
        self,
        client_config: mux.Config | None = None,
        server_config: mux.Config | None = None,
        *,
        transport: str = "memory",
    ) -> tuple[mux.Session, mux.Session]:
        make_transports = TRANSPORTS[transport]
        return await self._nursery.start(self._run, client_config, server_config, make_transports)

    @staticmethod
    async def _run(client_config, server_config, make_transports, *, task_status):
        left, right = make_transports()
        async with (
            mux.open_session(left, client=True, config=client_config) as client,
            mux.open_session(right, client=False, config=server_config) as server,
        ):
            task_status.started((client, server))
            await trio.sleep_forever()


@pytest.fixture
def sessions(nursery: trio.Nursery) -> SessionPairs:
    return SessionPairs(nursery)
