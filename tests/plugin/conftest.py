# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The command that runs pytest with the plugin, in a throwaway project."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture
def plugin_pytest_command() -> list[str]:
    """Runs pytest as a user would: the installed package registers the plugin (pytest11)."""
    return [sys.executable, "-m", "pytest"]
