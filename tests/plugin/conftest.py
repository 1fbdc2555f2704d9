# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The plugin's fixtures for these tests, and the command that runs pytest with the plugin."""

from __future__ import annotations

import functools
import inspect
import sys
from pathlib import Path

import pytest
import trio

HERE = Path(__file__).parent
TIME_LIMIT = 30  # seconds, per async test


@pytest.fixture
def plugin_pytest_command() -> list[str]:
    """Runs pytest as a user would: the installed package registers the plugin (pytest11)."""
    return [sys.executable, "-m", "pytest"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run every async test of this folder under trio.fail_after(TIME_LIMIT)."""
    for item in items:
        if isinstance(item, pytest.Function) and item.path.parent == HERE:
            if inspect.iscoroutinefunction(item.obj):
                item.obj = _bounded(item.obj)


def _bounded(test):
    @functools.wraps(test)
    async def bounded(*args, **kwargs):
        with trio.fail_after(TIME_LIMIT):
            return await test(*args, **kwargs)

    return bounded
