# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The rolling-restart benchmark restarts both nodes of a real two-node cluster and times each
step: every node drains and exits 0, comes back, and has the agent's session again."""

from __future__ import annotations

from pathlib import Path

from bench.rolling import NODES, rolling_restart


def test_rolling_restart_times_each_node(tmp_path: Path) -> None:
    steps = rolling_restart(tmp_path)
    assert sorted(steps) == sorted(NODES)
    for node in steps.values():
        assert 0 < node["drain_s"] < node["total_s"]
        assert 0 < node["back_s"] < node["total_s"]
