# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Smoke test: ``python -m bench mux`` runs end to end with tiny sizes."""

import json

from bench.__main__ import main


def test_mux_bench_tiny(tmp_path, capsys):
    out = tmp_path / "mux.json"
    argv = [
        "mux",
        "--size",
        "1",
        "--write-size",
        "16384",
        "--streams",
        "4",
        "--rounds",
        "1",
        "--scale",
        "50",
        "--mem-top",
        "3",
        "--timeout",
        "30",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "mux/raw" in table and "Targets" in table

    results = json.loads(out.read_text())
    assert results["command"] == "python -m bench " + " ".join(argv)
    assert [t["streams"] for t in results["throughput"]] == [1, 4]
    for case in results["throughput"]:
        assert case["raw_median"] > 0 and case["mux_median"] > 0 and case["ratio"] > 0
    (scale,) = results["scale"]
    assert scale["streams"] == 50 and scale["opens_per_s"] > 0
    assert set(scale["heap_per_stream"]) == {"opener", "acceptor"}
    assert all(0 < v < 1 << 20 for v in scale["heap_per_stream"].values())
    assert {t["passed"] for t in results["targets"][1:2]} == {None}  # 100,000 streams not run
