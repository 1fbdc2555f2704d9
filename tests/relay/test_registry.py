# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""`Registry.wait_change`: what a worker's presence news and accept loops wait on instead of
polling."""

from __future__ import annotations

import trio
import trio.testing

from relay.registry import AgentSession, Registry


def _session(bridge_id: str = "id-1", name: str = "one") -> AgentSession:
    return AgentSession(bridge_id, name, "127.0.0.1:1", b"")


async def test_wait_change_wakes_on_a_session_registered_and_forgotten():
    registry = Registry()
    session = _session()
    versions: list[int] = []

    async def waiter(seen: int) -> None:
        versions.append(await registry.wait_change(seen))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, registry.version)
        await trio.testing.wait_all_tasks_blocked()
        assert versions == []
        registry.add(session)
    seen = versions[-1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, seen)
        await trio.testing.wait_all_tasks_blocked()
        assert len(versions) == 1
        registry.remove(session)
    assert versions[-1] > seen and not list(registry)


async def test_wait_change_returns_at_once_for_a_change_it_did_not_see():
    registry = Registry()
    seen = registry.version
    registry.add(_session())  # between the look and the wait: not missed
    with trio.fail_after(1):
        assert await registry.wait_change(seen) == registry.version != seen
