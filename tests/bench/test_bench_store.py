# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Smoke test: ``python -m bench store`` runs end to end against a real PostgreSQL."""

from bench.__main__ import main


def test_store_bench_tiny(postgres_url, capsys):
    argv = ["store", "--store", postgres_url, "--seconds", "0.3", "--tasks", "4"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == [
        "path",
        "lookups/s",
        "lag",
        "p50",
        "ms",
        "lag",
        "p99",
        "ms",
        "lag",
        "max",
        "ms",
    ]
    rates = {line.split()[0]: float(line.split()[1]) for line in lines[2:]}
    assert rates["idle"] == 0 and rates["threads"] > 0 and rates["nonblocking"] > 0
