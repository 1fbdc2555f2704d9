# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Smoke tests: ``python -m bench tunnel`` runs end to end, with the real relay and agent
processes (and the Go tunnel, sshd, PostgreSQL where a case needs them), tiny sizes and few
connections, and leaves no process behind."""

import json
import os

import pytest

from bench import costs
from bench.__main__ import main
from bench.procs import descendants

TINY = ["--rounds", "1", "--seconds", "0.3", "--rtt-count", "100", "--rate-seconds", "0.3"]


@pytest.fixture(autouse=True)
def _short_bulk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The costs case's bulk transfer as short as the TINY runs (it has no option: 3 s per
    path otherwise)."""
    monkeypatch.setattr(costs, "BULK_SECONDS", 0.3)


def _run(tmp_path, capsys, *argv: str) -> tuple[str, dict]:
    # Processes that were there before (a PostgreSQL server shared by the test session, say)
    # are not the benchmark's to stop.
    already_running = set(descendants(os.getpid()))
    out = tmp_path / "tunnel.json"
    argv = ("tunnel", *argv, "--json", str(out))
    assert main(list(argv)) == 0
    table = capsys.readouterr().out
    assert "Goals (issue 14)" in table
    assert set(descendants(os.getpid())) - already_running == set()
    results = json.loads(out.read_text())
    assert results["command"] == "python -m bench " + " ".join(argv)
    return table, results


def test_tunnel_bench_tiny(tmp_path, capsys):
    table, results = _run(
        tmp_path,
        capsys,
        "--paths",
        "tunnel,ssh",
        "--cases",
        "throughput,rtt,rate,hold,limit",
        "--builtin",
        *TINY,
        "--hold",
        "50",
        "--limit",
        "80",
    )
    assert "tunnel/ssh -L" in table or "Skipped ssh -L" in table
    assert results["errors"] == []
    for metric in results["metrics"].values():
        assert metric["median"]["tunnel"] > 0
    assert results["held"]["tunnel"]["held"] == 50
    assert 0 < results["held"]["tunnel"]["kib_per_connection"] < 1024
    assert set(results["held"]["tunnel"]["rss_after_kib"]) == {"relay", "agent"}
    limit = results["stream_limit"]
    assert limit["held"] == 80 and limit["gave"].startswith("nothing")
    assert results["goals"][-1]["passed"] is None  # 10,000 connections were not asked for
    if "ssh" not in results["skipped"]:
        assert results["metrics"]["throughput_1"]["ratio_to"]["ssh"]["tunnel"] > 0
        assert results["held"]["ssh"]["held"] == 50


def test_tunnel_bench_go_costs_bursts(tmp_path, capsys):
    """The Go yamux tunnel as a path; CPU costs per connection and message; bursts through
    the forward, the SOCKS front door and relay.connect."""
    _, results = _run(
        tmp_path,
        capsys,
        "--paths",
        "direct,tunnel,go",
        "--cases",
        "rtt,rate,costs,bursts",
        *TINY,
        "--cost-connections",
        "40",
        "--cost-messages",
        "100",
        "--burst",
        "100",
    )
    assert results["skipped"] == {}
    assert results["errors"] == []
    assert results["metrics"]["connections_per_s"]["median"]["go"] > 0
    assert results["metrics"]["rtt_p50_us"]["ratio_to"]["go"]["tunnel"] > 0
    costs = results["costs"]
    assert costs["tunnel"]["carriers"] == ["relay", "agent"]
    assert costs["go"]["carriers"] == ["relay", "agent"]
    assert costs["direct"]["carriers"] == []
    for path in ("direct", "tunnel", "go"):
        assert costs[path]["connections"] == 40 and costs[path]["messages"] == 100
        assert costs[path]["connection_us"]["client"] > 0
    assert costs["tunnel"]["connection_total_us"] > 0  # 40 connections take several ticks
    bursts = results["bursts"]
    assert set(bursts) == {"tunnel forward", "tunnel SOCKS", "relay.connect", "go forward"}
    for name, got in bursts.items():
        assert (got["done"], got["failed"], got["unanswered"]) == (100, 0, 0), name
        assert got["seconds"] > 0, name
        assert got["peak_kib"] > 0, name
    figures = [goal["figure"] for goal in results["goals"]]
    assert "CPU per new connection, relay + agent" in figures
    assert sum("burst of 100 at once" in figure for figure in figures) == 3


def test_tunnel_bench_pgbench_and_websocket(tmp_path, capsys, postgres_url):
    """pgbench through the tunnel against the session's PostgreSQL; the tunnel over
    WebSocket beside tls://."""
    table, results = _run(
        tmp_path,
        capsys,
        "--paths",
        "direct,tunnel,tunnel-ws",
        "--cases",
        "throughput,pgbench",
        "--builtin",
        *TINY,
        "--pgbench-seconds",
        "1",
        "--postgres",
        postgres_url,
    )
    assert results["skipped"] == {}
    assert results["errors"] == []
    for key in ("pgbench_steady_tps", "pgbench_connect_tps"):
        assert results["metrics"][key]["median"]["tunnel"] > 0
        assert results["metrics"][key]["per_round"]["tunnel-ws"] == []  # rounds only
    assert results["metrics"]["throughput_1"]["ratio_to"]["tunnel"]["tunnel-ws"] > 0
    assert "1 stream, MB/s: tunnel-ws / tunnel" in table


def test_tunnel_bench_peered(tmp_path, capsys):
    """Two relay nodes peered over a shared store, the agent on one and the forward on the
    other: every case crosses the peer hop; the CPU the hop adds is reported against one
    relay's."""
    table, results = _run(
        tmp_path,
        capsys,
        "--paths",
        "tunnel,peered",
        "--cases",
        "throughput,rtt,rate,costs",
        "--builtin",
        *TINY,
        "--cost-connections",
        "40",
        "--cost-messages",
        "100",
    )
    assert results["skipped"] == {}
    assert results["errors"] == []
    for metric in results["metrics"].values():
        assert metric["median"]["peered"] > 0
    costs = results["costs"]
    assert costs["peered"]["carriers"] == ["relay B", "relay A", "agent"]
    assert costs["peered"]["connection_total_us"] > 0
    assert set(costs["peered"]["gb_cpu_s"]) == {"relay B", "relay A", "agent"}
    assert costs["peered"]["bulk_bytes"] > 0
    assert "CPU time the peer hop adds" in table
    figures = [goal["figure"] for goal in results["goals"]]
    assert sum("the peer hop adds" in figure for figure in figures) == 3


def test_tunnel_bench_go_peered(tmp_path, capsys):
    """The Go reference tunnel with one peer hop: a third Go process, between the relay and the
    agent, carries every connection; what its hop adds is reported beside the single Go
    relay's, per GB through iperf3 (this yamux cannot half-close for the built-in sink)."""
    table, results = _run(
        tmp_path,
        capsys,
        "--paths",
        "go,go-peered",
        "--cases",
        "rate,costs",
        *TINY,
        "--cost-connections",
        "40",
        "--cost-messages",
        "100",
    )
    assert results["skipped"] == {} and results["errors"] == []
    assert results["metrics"]["connections_per_s"]["median"]["go-peered"] > 0
    single, peered = results["costs"]["go"], results["costs"]["go-peered"]
    assert peered["carriers"] == ["relay B", "relay A", "agent"]
    assert peered["connections"] == 40 and peered["messages"] == 100
    assert set(peered["gb_cpu_s"]) == {"relay B", "relay A", "agent"}
    assert set(single["gb_cpu_s"]) == {"relay", "agent"}
    assert peered["bulk_bytes"] > 0 and single["bulk_bytes"] > 0
    assert "Go yamux, for reference: per GB, one stream:" in table
    # The goals are the relay's own: the reference adds none.
    assert not any("the peer hop adds" in goal["figure"] for goal in results["goals"])


def test_tunnel_bench_floors(tmp_path, capsys):
    """The hand-written plain-TCP forwarders of bench/floor.py carry the cost workload: new
    connections, round trips, and a stream to the sink, whose count answers the sender's EOF
    (so each forwarder half-closes); the stream is sent twice, its cost per GB the median."""
    table, results = _run(
        tmp_path,
        capsys,
        "--paths",
        "floor-trio-wait,floor-epoll",
        "--cases",
        "costs",
        *TINY,
        "--cost-connections",
        "40",
        "--cost-messages",
        "100",
        "--cost-bulk-sends",
        "2",
    )
    assert "(median of 2 sends)" in table
    assert results["settings"]["cost_bulk_sends"] == 2
    assert results["skipped"] == {} and results["errors"] == []
    for path in ("floor-trio-wait", "floor-epoll"):
        cost = results["costs"][path]
        assert cost["carriers"] == ["forwarder"]
        assert cost["connections"] == 40 and cost["messages"] == 100
        assert cost["bulk_bytes"] > 0 and cost["bulk_sends"] == 2


@pytest.mark.parametrize("option", ["--cost-connections", "--cost-messages", "--cost-bulk-sends"])
@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_workload_sizes_must_be_whole_numbers_of_at_least_one(option, value, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["tunnel", option, value])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        f"python -m bench tunnel: error: argument {option}: expected a whole number of at "
        f"least 1, got {value!r}"
    )
