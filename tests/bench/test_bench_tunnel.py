# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Smoke test: ``python -m bench tunnel`` runs end to end, with the real relay and agent
processes, tiny sizes and few connections, and leaves no process behind."""

import json
import os

from bench.__main__ import main
from bench.procs import descendants


def test_tunnel_bench_tiny(tmp_path, capsys):
    # Processes that were there before (a PostgreSQL server shared by the test session, say)
    # are not the benchmark's to stop.
    already_running = set(descendants(os.getpid()))
    out = tmp_path / "tunnel.json"
    argv = [
        "tunnel",
        "--paths",
        "tunnel,ssh",
        "--builtin",
        "--rounds",
        "1",
        "--seconds",
        "0.3",
        "--rtt-count",
        "100",
        "--rate-seconds",
        "0.3",
        "--hold",
        "50",
        "--limit",
        "80",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "tunnel/ssh -L" in table or "Skipped ssh -L" in table
    assert "Targets" in table
    assert set(descendants(os.getpid())) - already_running == set()

    results = json.loads(out.read_text())
    assert results["command"] == "python -m bench " + " ".join(argv)
    assert results["errors"] == []
    for metric in results["metrics"].values():
        assert metric["median"]["tunnel"] > 0
    assert results["held"]["tunnel"]["held"] == 50
    assert 0 < results["held"]["tunnel"]["kib_per_connection"] < 1024
    assert set(results["held"]["tunnel"]["rss_after_kib"]) == {"relay", "agent"}
    limit = results["stream_limit"]
    assert limit["held"] == 80 and limit["gave"].startswith("nothing")
    assert results["targets"][-1]["passed"] is None  # 10,000 connections were not asked for
    if "ssh" not in results["skipped"]:
        assert results["metrics"]["throughput_1"]["ratio_to_ssh"]["tunnel"] > 0
        assert results["held"]["ssh"]["held"] == 50
