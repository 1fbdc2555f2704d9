# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Waiting for in-process state that no event announces, without a clock."""

from __future__ import annotations

from collections.abc import Callable

import trio.testing

#: Once every task is blocked and the state is not there yet, it waits on something outside
#: the tasks (a timer, a thread, the kernel): look again after this long without activity.
QUIET = 0.01


async def settled(predicate: Callable[[], object]) -> None:
    """Return once `predicate()` is true, checking it whenever every other task of the test
    run is blocked (on a socket, a timer or an event): the state a test waits for (a session
    registered or gone, a count that changed) is set by some task, and is there by the time
    all of them are blocked again. Bound it with the test's deadline."""
    cushion = 0.0
    while not predicate():
        await trio.testing.wait_all_tasks_blocked(cushion)
        cushion = QUIET
