# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Every async test runs under a deadline, so that a hang fails one test instead of the run."""

from __future__ import annotations

import functools
import inspect

import pytest
import trio

#: Seconds per async test, by the folder it is in; the others get DEFAULT_TIME_LIMIT.
TIME_LIMITS = {"mux": 20, "bridge": 20, "plugin": 30, "faults": 90}
DEFAULT_TIME_LIMIT = 60


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            limit = TIME_LIMITS.get(item.path.parent.name, DEFAULT_TIME_LIMIT)
            item.obj = _bounded(item.obj, limit)


def _bounded(test, limit: float):
    @functools.wraps(test)
    async def bounded(*args, **kwargs):
        with trio.fail_after(limit):
            return await test(*args, **kwargs)

    return bounded
