# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Real relay and agent processes (tests/e2e's helpers) for the adversarial tests."""

from __future__ import annotations

from ..e2e.process_fixtures import (  # noqa: F401 (fixtures and hooks, shared with tests/e2e)
    bridge,
    bridge_template,
    cluster,
    launch,
    pytest_runtest_makereport,
    pytest_runtest_setup,
)
