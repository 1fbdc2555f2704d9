# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""``python -m bench tunnel``: the tunnel end to end, against direct TCP, a Go tunnel on
hashicorp/yamux and ``ssh -L``, with the goals of issue 14 and each figure's ratio to its goal.

Paths from 127.0.0.1 to the same targets: direct TCP; the tunnel (``bridge-relay serve`` with
one forward per target, and ``bridge-agent``: separate processes, TLS, default settings); the
same over WebSocket (``tunnel-ws``); two relay nodes of a cluster with the agent on one and
the forwards on the other, so that every connection crosses one peer hop (``peered``); the
Go tunnel (bench/gotunnel: relay and agent processes, yamux over TLS, built at run time),
and the same with one peer hop (``go-peered``: a third Go process holds the agent's session
and copies each stream the relay opens to it), the reference for ``peered``; and OpenSSH
``ssh -L`` through a throwaway sshd. The targets are ``iperf3 -s`` (or the built-in sink),
an echo server (``bench.loadgen serve``, two processes) and, for pgbench, a
PostgreSQL server; every client runs in a process of its own.

Cases (``--cases``):
throughput  client -> target, one stream and N parallel streams;
rtt         round trips of 1 KiB messages on one connection (p50, p99);
rate        new connections per second (several being opened at once, each doing one
            32-byte round trip, then closing);
pgbench     pgbench -S, 16 steady connections and -C with 8 clients (bench/pgbench.py);
costs       CPU time per new connection and per message of each process (bench/costs.py);
bursts      thousands of connections at once: through a forward, the SOCKS front door and
            concurrent relay.connect calls (bench/bursts.py);
hold        connections held at once, with the resident memory growth of the processes
            carrying them;
limit       how many concurrent streams one tunnel takes before something gives, and what.
The first four run in rounds that alternate the order of the paths (ABC, CBA, ...) and report
medians; costs run once per path; bursts, hold and limit start the path afresh, so that
earlier runs do not hide its growth.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import mux
from bench import bursts, costs, goals, pgbench, report
from bench.clients import Failed, client
from bench.floor import EpollFloor, TrioStreamFloor, TrioWaitFloor
from bench.gotunnel import GoPeeredPath, GoTunnelPath
from bench.paths import (
    HOST,
    AuditedTunnelPath,
    BenchPath,
    DirectPath,
    PeeredTunnelPath,
    SkipPath,
    TunnelPath,
    WebSocketTunnelPath,
)
from bench.procs import Proc, StartError, clean_env, free_port, python_module, run_command
from bench.sshd import SshPath

PATHS = {
    "direct": DirectPath,
    "tunnel": TunnelPath,
    "tunnel-ws": WebSocketTunnelPath,
    "tunnel-audit": AuditedTunnelPath,
    "peered": PeeredTunnelPath,
    "go": GoTunnelPath,
    "go-peered": GoPeeredPath,
    "ssh": SshPath,
    "floor-trio": TrioStreamFloor,
    "floor-trio-wait": TrioWaitFloor,
    "floor-epoll": EpollFloor,
}
DEFAULT_PATHS = ["direct", "tunnel", "tunnel-ws", "go", "ssh"]
VARIANTS = {"tunnel-ws", "tunnel-audit"}  # variants of the tunnel: measured in the rounds only
FLOORS = {"floor-trio", "floor-trio-wait", "floor-epoll"}  # bench/floor.py: no bursts, no hold
BASELINES = ("ssh", "go")  # the tunnel's figures are given as ratios to these
CASES = ("throughput", "rtt", "rate", "pgbench", "costs", "bursts", "hold", "limit")
ROUND_CASES = {  # case -> its measurements in the rounds
    "throughput": ("throughput_1", "throughput_n"),
    "rtt": ("rtt",),
    "rate": ("connections_per_s",),
    "pgbench": tuple(pgbench.CASES),
}
PER_HOLDER = 7_000  # connections per holding process, which has RLIMIT_NOFILE too
HOLD_CONCURRENCY = 32  # connections each holding process has being opened at once
HOLD_SECONDS = 180.0  # bound on opening the held connections
RATE_MAX = 200_000  # bound on connections per new-connection run
IPERF_BUSY_RETRIES = 10
CEILING = 0.7  # a path at this fraction of direct TCP is near what the load itself can do
HOP_KINDS = (  # the peer hop's costs: key, per what, unit, decimals
    ("connection_us", "new connection", "us", 0),
    ("message_us", "1 KiB message per direction", "us", 1),
    ("gb_cpu_s", "GB, one stream", "CPU-s", 2),
)

CASE_METRICS = {  # a measurement of the rounds -> its metrics, where it has several
    "rtt": ("rtt_p50_us", "rtt_p99_us"),
    "throughput_1": ("throughput_1", "throughput_1_mb_per_cpu_s"),
    "throughput_n": ("throughput_n", "throughput_n_mb_per_cpu_s"),
}
METRICS = (  # key, label, higher is better
    ("throughput_1", "1 stream, MB/s", True),
    ("throughput_n", "{streams} streams, MB/s", True),
    ("throughput_1_mb_per_cpu_s", "1 stream, MB per CPU-second of the path's processes", True),
    ("throughput_n_mb_per_cpu_s", "{streams} streams, MB per CPU-second", True),
    ("rtt_p50_us", "1 KiB round trip p50, us", False),
    ("rtt_p99_us", "1 KiB round trip p99, us", False),
    ("connections_per_s", "new connections/s", True),
    ("pgbench_steady_tps", "pgbench -S, 16 steady connections, tps", True),
    ("pgbench_connect_tps", "pgbench -S -C, 8 clients, tps", True),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--quick",
        action="store_true",
        help="short run: 1 round, 2 s runs, smaller workloads and bursts (500), 1,000 held, "
        "probe to 2,000",
    )
    add(
        "--cases",
        type=_case_names,
        default=list(CASES),
        metavar="NAME,...",
        help=f"cases to run, of {','.join(CASES)} (default all)",
    )
    add("--rounds", type=int, help="alternating rounds, median reported (default 3; --quick 1)")
    add(
        "--seconds",
        type=float,
        help="length of each throughput run (default 5; --quick 2; whole seconds with iperf3)",
    )
    add(
        "--streams",
        type=int,
        default=8,
        help="parallel streams of the multi-stream case (default 8)",
    )
    add("--rtt-count", type=int, help="1 KiB round trips per run (default 5000; --quick 1000)")
    add(
        "--rate-seconds",
        type=float,
        help="length of each new-connection run (default 3; --quick 1)",
    )
    add(
        "--concurrency",
        type=int,
        default=8,
        help="connections being opened at once in the new-connection runs (default 8)",
    )
    add(
        "--hold",
        type=int,
        help="connections to hold at once (default 10000; --quick 1000; 0: skip)",
    )
    add(
        "--limit",
        type=int,
        help=(
            "stop the tunnel's stream-count probe at this many "
            "(default 20000; --quick 2000; 0: skip)"
        ),
    )
    add(
        "--pgbench-seconds",
        type=int,
        help="length of each pgbench run, whole seconds (default 5; --quick 2)",
    )
    add(
        "--postgres",
        metavar="URL",
        help="run pgbench against this database (postgresql://USER@127.0.0.1:PORT/DB, "
        "initialized with pgbench -i) instead of a PostgreSQL server the benchmark starts",
    )
    add(
        "--cost-connections",
        type=_positive_int,
        help="new connections of the CPU-cost workload (default 3000; --quick 300)",
    )
    add(
        "--cost-messages",
        type=_positive_int,
        help="1 KiB round trips of the CPU-cost workload (default 20000; --quick 2000)",
    )
    add(
        "--cost-bulk-sends",
        type=_positive_int,
        help="3 s sends to the built-in sink of the CPU-cost workload, the median per GB "
        "(default 1)",
    )
    add(
        "--burst",
        type=int,
        help="connections opened at once in each burst (default 5000; --quick 500)",
    )
    add(
        "--paths",
        type=_path_names,
        default=DEFAULT_PATHS,
        metavar="NAME,...",
        help=f"paths to run, of {','.join(PATHS)} (default {','.join(DEFAULT_PATHS)}; "
        "tunnel-ws is the tunnel over WebSocket, tunnel-audit the tunnel with the relay's audit "
        "log on: both only in the rounds; peered: two relay nodes, one peer hop; go-peered: "
        "the Go tunnel with one hop, its reference; floor-*: one "
        "Python process forwarding plain TCP, bench/floor.py)",
    )
    add(
        "--builtin",
        action="store_true",
        help="measure throughput with the built-in sender and sink even where iperf3 is installed",
    )
    add(
        "--json",
        type=Path,
        default=report.RESULTS_DIR / "tunnel.json",
        metavar="PATH",
        help="where to write the results (default bench/results/tunnel.json; the chart goes next "
        "to it as .png when matplotlib is installed)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _path_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or set(names) - set(PATHS):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(PATHS)}")
    return [name for name in PATHS if name in names]


def _case_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or set(names) - set(CASES):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(CASES)}")
    return [name for name in CASES if name in names]


def _defaults(args: argparse.Namespace) -> None:
    quick = args.quick
    for name, full, short in (
        ("rounds", 3, 1),
        ("seconds", 5.0, 2.0),
        ("rtt_count", 5000, 1000),
        ("rate_seconds", 3.0, 1.0),
        ("hold", goals.HOLD, 1000),
        ("limit", 20_000, 2000),
        ("pgbench_seconds", 5, 2),
        ("cost_connections", 3000, 300),
        ("cost_messages", 20_000, 2000),
        ("cost_bulk_sends", 1, 1),
        ("burst", 5000, 500),
    ):
        if getattr(args, name) is None:
            setattr(args, name, short if quick else full)


# -- clients ---------------------------------------------------------------------------------


def _throughput(port: int, streams: int, seconds: float, iperf: str | None) -> tuple[float, int]:
    """MB/s client -> target, and the bytes the target received."""
    if iperf is None:
        sent = client(
            "send", port, "--streams", streams, "--seconds", seconds, timeout=seconds + 60
        )
        return sent["mbps"], sent["bytes"]
    argv = [iperf, "-c", HOST, "-p", port, "-t", max(1, round(seconds)), "-J"]
    argv += ["-P", streams] if streams > 1 else []
    for _ in range(IPERF_BUSY_RETRIES):  # the server may still be closing the previous test
        try:
            done = run_command(argv, timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            raise Failed(f"iperf3 gave no result within {seconds + 60:g} s") from None
        try:
            data = json.loads(done.stdout)
        except ValueError:
            raise Failed(
                f"iperf3: {done.stderr.strip() or f'exit status {done.returncode}'}"
            ) from None
        if "busy" not in data.get("error", ""):
            break
        time.sleep(0.5)
    if data.get("error"):
        raise Failed(f"iperf3: {data['error']}")
    received = data["end"]["sum_received"]
    return received["bits_per_second"] / 8 / 1e6, received["bytes"]


def _throughput_and_cost(
    path: BenchPath, key: str, streams: int, args: argparse.Namespace, iperf: str | None
) -> dict:
    """MB/s, and MB carried per CPU-second of the path's own processes (none: direct TCP)."""
    roles = path.processes()
    before = costs.cpu_of(roles)
    mbps, received = _throughput(
        path.ports["iperf" if iperf else "sink"], streams, args.seconds, iperf
    )
    if not roles:
        return {key: mbps}
    used = sum(costs.cpu_of(roles).values()) - sum(before.values())
    return {key: mbps, f"{key}_mb_per_cpu_s": received / 1e6 / used if used > 0 else None}


def _json_line(proc: subprocess.Popen, timeout: float) -> dict:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    try:
        return json.loads(line)
    except ValueError:
        return {
            "error": "the client ended without a result"
            if ready
            else f"no result within {timeout:g} s"
        }


@contextlib.contextmanager
def _holding(port: int, count: int, *, stop_on_error: bool) -> Iterator[dict]:
    """Open `count` connections through `port`, each with one round trip, from as many
    processes as their file-descriptor limit needs; yields the tally while they are held."""
    shares = [count // -(-count // PER_HOLDER)] * (-(-count // PER_HOLDER))
    shares[0] += count - sum(shares)
    argv = ["--concurrency", HOLD_CONCURRENCY, "--seconds", HOLD_SECONDS, "--hold-timeout", 600]
    argv += ["--stop-on-error"] if stop_on_error else []
    holders: list[subprocess.Popen] = []
    try:
        for share in shares:
            holders.append(
                subprocess.Popen(
                    python_module("bench.loadgen", "hold", port, "--count", share, *argv),
                    text=True,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    env=clean_env(),
                    start_new_session=True,
                )
            )
        results = [_json_line(proc, HOLD_SECONDS + 30) for proc in holders]
        errors = [
            (r.get("first_error_at") or 0, r.get("first_error") or r.get("error"))
            for r in results
            if r.get("first_error") or r.get("error")
        ]
        yield {
            "held": sum(r.get("done", 0) for r in results),
            "failed": sum(r.get("failed", 0) for r in results),
            "seconds": max(r.get("seconds", 0) for r in results),
            "first_error": min(errors)[1] if errors else None,
        }
    finally:
        for proc in holders:
            with contextlib.suppress(OSError):
                proc.stdin.write("\n")
                proc.stdin.close()
        for proc in holders:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()


# -- measurements ----------------------------------------------------------------------------


def _measure_case(
    case: str,
    path: BenchPath,
    args: argparse.Namespace,
    iperf: str | None,
    database: pgbench.Database | None,
) -> dict:
    if case in pgbench.CASES:
        assert database is not None
        return {case: pgbench.tps(database, path.ports["pg"], case, args.pgbench_seconds)}
    if case.startswith("throughput") and not path.half_close and not iperf:
        raise Failed("the built-in sink needs a half-close, which this yamux lacks: use iperf3")
    echo = path.ports["echo"]
    if case == "throughput_1":
        return _throughput_and_cost(path, case, 1, args, iperf)
    if case == "throughput_n":
        return _throughput_and_cost(path, case, args.streams, args, iperf)
    if case == "rtt":
        result = client("rtt", echo, "--count", args.rtt_count, "--seconds", 30, timeout=60)
        return {"rtt_p50_us": result["p50_us"], "rtt_p99_us": result["p99_us"]}
    result = client(
        "dial",
        echo,
        "--count",
        RATE_MAX,
        "--seconds",
        args.rate_seconds,
        "--concurrency",
        args.concurrency,
        timeout=args.rate_seconds + 60,
    )
    failed = (
        f"{result['failed']} of {result['failed'] + result['done']} connections failed: "
        f"{result['first_error']}"
    )
    if not result["done"]:
        raise Failed(failed)
    return {
        "connections_per_s": result["per_second"],
        **({"note": failed} if result["failed"] else {}),
    }


def _warm_up(path: BenchPath, args: argparse.Namespace, iperf: str | None) -> None:
    if iperf or path.half_close:
        _throughput(path.ports["iperf" if iperf else "sink"], 1, min(1.0, args.seconds), iperf)
    client("rtt", path.ports["echo"], "--count", min(500, args.rtt_count), timeout=60)
    client("dial", path.ports["echo"], "--count", 200, "--seconds", 10, timeout=60)


def _shown(key: str, value: float | None) -> str:
    if value is None:
        return "error"
    return f"{value:,.1f}" if key.startswith(("throughput", "rtt")) else f"{value:,.0f}"


def _round_cases(args: argparse.Namespace) -> list[str]:
    return [m for case in args.cases for m in ROUND_CASES.get(case, ())]


def _metric_keys(args: argparse.Namespace) -> list[str]:
    keys = {key for case in _round_cases(args) for key in CASE_METRICS.get(case, (case,))}
    return [key for key, *_ in METRICS if key in keys]


def _run_rounds(
    paths: list[BenchPath],
    args: argparse.Namespace,
    iperf: str | None,
    database: pgbench.Database | None,
    errors: list[dict],
) -> dict[str, dict[str, list]]:
    keys = _metric_keys(args)
    values = {key: {path.name: [] for path in paths} for key in keys}
    labels = {key: label.format(streams=args.streams) for key, label, _ in METRICS}
    for round_ in range(1, args.rounds + 1):
        order = paths if round_ % 2 else paths[::-1]
        for case in _round_cases(args):
            case_keys = CASE_METRICS.get(case, (case,))
            for path in order:
                if case in pgbench.CASES and (path.name in VARIANTS or database is None):
                    continue
                try:
                    got = _measure_case(case, path, args, iperf, database)
                except Failed as exc:
                    got = {"note": f"failed: {exc}"}
                if "note" in got:
                    errors.append(
                        {"round": round_, "case": case, "path": path.name, "error": got["note"]}
                    )
                    report.progress(
                        f"round {round_}/{args.rounds}  {path.label}: {case}: {got['note']}"
                    )
                measured = [k for k in case_keys if k in got or "note" in got]
                for key in measured:
                    values[key][path.name].append(got.get(key))
                shown = ", ".join(f"{labels[k]} {_shown(k, got.get(k))}" for k in measured)
                report.progress(f"round {round_}/{args.rounds}  {path.label:<7} {shown}")
    return values


def _hold(path: BenchPath, count: int) -> dict:
    """Fresh processes, a warm-up, then `count` connections held: RSS growth per connection."""
    report.progress(f"holding {count:,} connections through {path.label}")
    path.start()
    try:
        client("dial", path.ports["echo"], "--count", 200, "--seconds", 10, timeout=60)
        time.sleep(0.5)
        before = path.rss()
        with _holding(path.ports["echo"], count, stop_on_error=False) as tally:
            time.sleep(0.5)
            after = path.rss()
    finally:
        path.stop()
    growth = sum(after.values()) - sum(before.values())
    tally.update(
        rss_before_kib=before,
        rss_after_kib=after,
        kib_per_connection=growth / tally["held"] if tally["held"] else None,
    )
    report.progress(
        f"{path.label}: {tally['held']:,} held, "
        f"{_kib(tally['kib_per_connection'])} KiB per connection"
    )
    return tally


def _warnings(text: str, limit: int = 3) -> list[str]:
    """The first distinct WARNING/ERROR messages of a text log, without their timestamps."""
    seen: list[str] = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[1] in ("WARNING", "ERROR"):
            message = "\t".join(parts[1:])
            if message not in seen:
                seen.append(message)
            if len(seen) == limit:
                break
    return seen


def _stream_limit(path: BenchPath, limit: int) -> dict:
    """Concurrent connections through one fresh tunnel until the first failure or `limit`."""
    report.progress(f"probing how many concurrent streams {path.label} takes (up to {limit:,})")
    path.start()
    try:
        offsets = {role: proc.size("stderr") for role, proc in path.procs().items()}
        with _holding(path.ports["echo"], limit, stop_on_error=True) as tally:
            time.sleep(1.0)  # what the processes log about the failure
            for role, proc in path.procs().items():
                tally[f"{role}_log"] = _warnings(proc.read("stderr", offsets[role]))
                if not proc.alive():
                    tally[f"{role}_exit"] = proc.popen.returncode
    finally:
        path.stop()
    if not tally["failed"]:
        tally["gave"] = f"nothing, up to the bound of {limit:,}"
    else:
        parts = [f"client: {tally['first_error']}"]
        if tally["held"] == mux.Config().max_inbound_streams:
            parts[0] += " (the count is mux.Config().max_inbound_streams, the agent's default)"
        for role in path.procs():
            if f"{role}_exit" in tally:
                parts.append(f"{role} exited with status {tally[f'{role}_exit']}")
            if tally.get(f"{role}_log"):
                parts.append(f"{role} log: {tally[f'{role}_log'][0]}")
        tally["gave"] = "; ".join(parts)
    report.progress(f"{path.label}: {tally['held']:,} concurrent streams; gave: {tally['gave']}")
    return tally


def _raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # every child inherits it
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _measure(
    args: argparse.Namespace, workdir: Path, stack: contextlib.ExitStack, iperf: str | None
) -> dict:
    report.progress("starting the echo server" + (" and iperf3 -s" if iperf else " and the sink"))
    servers = Proc("servers", python_module("bench.loadgen", "serve"), workdir)
    stack.callback(servers.stop)
    ports = json.loads(servers.wait_for(r"^\{.*\}$")[0])
    targets = {"echo": ports["echo"]}
    if iperf:
        targets["iperf"] = free_port()
        server = Proc(
            "iperf3", [iperf, "-s", "-B", HOST, "-p", targets["iperf"], "--forceflush"], workdir
        )
        stack.callback(server.stop)
        server.wait_for(r"Server listening on")
    targets["sink"] = ports["sink"]  # the CPU cost per GB, and throughput without iperf3
    skipped: dict[str, str] = {}
    database = _database(args, workdir, stack, skipped)
    if database is not None:
        targets["pg"] = database.port
    paths = []
    for name in args.paths:
        path = PATHS[name](workdir, targets)
        stack.callback(path.stop)
        report.progress(f"starting {path.label}")
        try:
            path.start()
        except SkipPath as exc:
            skipped[name] = str(exc)
            report.progress(f"skipping {path.label}: {exc}")
            continue
        try:
            _warm_up(path, args, iperf)
        except Failed as exc:
            report.progress(f"{path.label}: warm-up failed: {exc}")
        paths.append(path)
    errors: list[dict] = []
    values = _run_rounds(paths, args, iperf, database, errors)
    for path in paths:
        path.stop()
    cost, burst, held, limit = {}, {}, {}, None
    for path in paths:
        for case, wanted in (
            ("costs", "costs" in args.cases and path.name not in VARIANTS),
            ("bursts", "bursts" in args.cases and path.name not in VARIANTS | FLOORS | {"direct"}),
            (
                "hold",
                "hold" in args.cases
                and args.hold
                and path.name not in FLOORS | {"direct", "tunnel-ws"},
            ),
            ("stream limit", "limit" in args.cases and args.limit and path.name == "tunnel"),
        ):
            if not wanted:
                continue
            try:
                if case == "costs":
                    cost[path.name] = _costs(path, args, servers.pid, iperf)
                elif case == "bursts":
                    burst.update(_bursts(path, args, workdir, targets["echo"]))
                elif case == "hold":
                    held[path.name] = _hold(path, args.hold)
                else:
                    limit = _stream_limit(path, args.limit)
            except (Failed, StartError, SkipPath) as exc:
                errors.append({"round": None, "case": case, "path": path.name, "error": str(exc)})
                report.progress(f"{path.label}: {case} failed: {exc}")
    return {
        "values": values,
        "skipped": skipped,
        "errors": errors,
        "costs": cost,
        "bursts": burst,
        "held": held,
        "stream_limit": limit,
    }


def _database(
    args: argparse.Namespace, workdir: Path, stack: contextlib.ExitStack, skipped: dict
) -> pgbench.Database | None:
    """The PostgreSQL database of the pgbench case, initialized; None (and why, in `skipped`)
    when the case is not run or cannot run here."""
    if "pgbench" not in args.cases:
        return None
    report.progress("starting PostgreSQL" if not args.postgres else "using --postgres")
    try:
        if args.postgres:
            database = pgbench.Database.from_url(args.postgres)
        else:
            database = pgbench.Database.start(workdir / "postgres")
            stack.callback(database.close)
        pgbench.initialize(database)
    except (SkipPath, Failed) as exc:
        skipped["pgbench"] = str(exc)
        report.progress(f"skipping pgbench: {exc}")
        return None
    return database


def _costs(path: BenchPath, args: argparse.Namespace, server_pid: int, iperf: str | None) -> dict:
    """CPU costs of fresh processes of `path`, after a warm-up. The bulk stream goes to the
    built-in sink, or through iperf3 on a path that cannot half-close (none without it)."""
    report.progress(
        f"CPU cost through {path.label}: {args.cost_connections:,} new connections, "
        f"{args.cost_messages:,} round trips"
    )
    path.start()
    bulk = None
    if path.half_close and "sink" in path.ports:
        bulk = partial(costs.to_sink, path.ports["sink"])
    elif iperf and "iperf" in path.ports:
        bulk = partial(_iperf_bytes, path.ports["iperf"], iperf)
    try:
        client("dial", path.ports["echo"], "--count", 200, "--seconds", 10, timeout=60)
        client("rtt", path.ports["echo"], "--count", 500, timeout=60)
        got = costs.measure(
            path,
            server_pid,
            args.cost_connections,
            args.cost_messages,
            args.concurrency,
            args.cost_bulk_sends,
            bulk,
        )
    finally:
        path.stop()
    per_role = ", ".join(f"{role} {us:,.1f}" for role, us in got["connection_us"].items())
    report.progress(f"{path.label}: CPU per new connection, us: {per_role}")
    return got


def _iperf_bytes(port: int, iperf: str) -> int:
    """One iperf3 stream of costs.BULK_SECONDS through `port`; the bytes received."""
    return _throughput(port, 1, costs.BULK_SECONDS, iperf)[1]


def _bursts(path: BenchPath, args: argparse.Namespace, workdir: Path, echo: int) -> dict:
    """Burst name -> result: through `path`'s forward; for the tunnel, also through its SOCKS
    front door and as concurrent relay.connect calls."""
    runs = {f"{path.name} forward": lambda: bursts.through_path(path, args.burst)}
    if path.name == "tunnel":
        runs["tunnel SOCKS"] = lambda: bursts.through_path(path, args.burst, socks_target=echo)
        runs["relay.connect"] = lambda: bursts.relay_connect(workdir, echo, args.burst)
    out = {}
    for name, run_burst in runs.items():
        report.progress(f"burst of {args.burst:,} connections: {name}")
        try:
            out[name] = got = run_burst()
        except (Failed, StartError) as exc:
            out[name] = got = {"error": str(exc)}
        report.progress(f"{name}: {_burst_summary(got, args.burst)}")
    return out


def _burst_summary(got: dict, count: int) -> str:
    if "error" in got:
        return f"failed: {got['error']}"
    errors = "; ".join(f"{n:,} {reason}" for reason, n in got["errors"].items())
    peak, last = got.get("peak_kib"), got["seconds"]
    return (
        f"{got['done']:,} of {count:,} served, the last after "
        f"{'-' if last is None else f'{last:.2f}'} s; {got['failed']:,} failed"
        f"{f' ({errors})' if errors else ''}, {got['unanswered']:,} unanswered; "
        f"{got['acceptor']} peak {'-' if peak is None else f'{peak / 1024:,.1f}'} MiB"
        + (f"; connect deadline {deadline:g} s" if (deadline := got.get("connect_timeout")) else "")
    )


# -- report ----------------------------------------------------------------------------------


def _kib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def _median(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return report.median(present) if present else None


def _summarize(values: dict[str, dict[str, list]], args: argparse.Namespace) -> dict[str, dict]:
    """Medians per path, and ratios to ssh -L, the Go tunnel and the tunnel (for its variants):
    the median of each round's ratio, each ratio being of two runs made close in time (more
    robust to drift than a ratio of medians)."""
    metrics = {}
    for key, label, higher in METRICS:
        if key not in values:
            continue
        per_round = values[key]
        ratios = {
            base: {
                name: [v / b if v is not None and b else None for v, b in zip(vs, per_round[base])]
                for name, vs in per_round.items()
                if name != base and any(v is not None for v in vs)
            }
            for base in (*BASELINES, "tunnel")
            if any(v is not None for v in per_round.get(base, ()))
        }
        metrics[key] = {
            "label": label.format(streams=args.streams),
            "higher_is_better": higher,
            "per_round": per_round,
            "median": {name: _median(vs) for name, vs in per_round.items()},
            "ratio_to": {
                base: {name: _median(rs) for name, rs in by_name.items()}
                for base, by_name in ratios.items()
            },
            "ratio_to_per_round": ratios,
        }
    return metrics


def _render(args: argparse.Namespace, results: dict, iperf: str | None) -> str:
    m = results["machine"]
    names = [name for name in args.paths if name not in results["skipped"]]
    labels = {name: PATHS[name].label for name in PATHS}
    tool = "iperf3" if iperf else "built-in sender and sink"
    seconds = max(1, round(args.seconds)) if iperf else args.seconds
    parts = [
        f"tunnel benchmark: Python {m['python']}, Trio {m['trio']}, {m['cpus']} CPUs; median of "
        f"{args.rounds} round(s), paths alternating (ABC, CBA, ...), ratios the median of each "
        f"round's ratio; MB = 10^6 bytes; load average "
        f"{results['load_average']['start']:.2f} at the start (other work skews the numbers)\n"
        f"throughput client -> target: {tool}, {seconds:g} s per run; round trips: "
        f"{args.rtt_count:,} x 1 KiB on one connection; new connections: {args.concurrency} at a "
        f"time for {args.rate_seconds:g} s, each one 32-byte round trip; pgbench: "
        f"{args.pgbench_seconds} s per run"
    ]
    bases = [b for b in BASELINES if b in names and "tunnel" in names]
    headers = [
        "metric",
        *(labels[n] for n in names),
        *(f"tunnel/{labels[b]}" for b in bases),
    ]
    rows = []
    for key, metric in results["metrics"].items():
        rows.append(
            [
                metric["label"],
                *(
                    _shown(key, metric["median"][n]) if metric["per_round"].get(n) else "-"
                    for n in names
                ),
                *(_ratio(metric["ratio_to"].get(b, {}).get("tunnel")) for b in bases),
            ]
        )
    if rows:
        parts.append(report.format_table(headers, rows))
    if ceiling := _near_ceiling(results["metrics"], labels):
        parts.append(
            f"Near the load's own ceiling (at least {CEILING:.0%} of direct TCP, where the "
            f"client and the target bound the figure more than the path): {ceiling}"
        )
    if results["costs"]:
        parts.append(_render_costs(args, results["costs"], labels))
        if hops := _render_hops(results["costs"]):
            parts.append(hops)
    if results["bursts"]:
        parts.append(
            "\n".join(
                [
                    f"Bursts of {args.burst:,} connections at once, fresh processes, each "
                    "connection one 32-byte round trip:",
                    *(
                        f"  {name}: {_burst_summary(got, args.burst)}"
                        for name, got in results["bursts"].items()
                    ),
                ]
            )
        )
    if results["held"]:
        rows = []
        for name, tally in results["held"].items():
            before, after = tally["rss_before_kib"], tally["rss_after_kib"]
            rss = ", ".join(
                f"{role} {before.get(role, 0) / 1024:,.1f} -> {after[role] / 1024:,.1f}"
                for role in after
            )
            rows.append(
                [
                    labels[name],
                    f"{tally['held']:,}",
                    f"{tally['failed']:,}",
                    _kib(tally["kib_per_connection"]),
                    rss,
                ]
            )
        parts.append(
            report.format_table(
                ["path", "held", "failed", "KiB/conn", "RSS before -> after (MiB)"],
                rows,
                f"Connections held at once (asked for {args.hold:,}), fresh processes; memory is "
                f"the resident set growth of the processes carrying them",
            )
        )
    if limit := results["stream_limit"]:
        parts.append(
            f"Stream limit of one tunnel (probe bound {args.limit:,}): "
            f"{limit['held']:,} concurrent streams; what gave: {limit['gave']}"
        )
    for name, reason in results["skipped"].items():
        parts.append(f"Skipped {labels.get(name, name)}: {reason}")
    if results["errors"]:
        lines = [
            f"  {labels[e['path']]} {e['case']}"
            + (f" (round {e['round']})" if e["round"] else "")
            + f": {e['error']}"
            for e in results["errors"]
        ]
        parts.append("\n".join(["Errors:", *lines]))
    parts.append(
        report.format_table(
            ["figure", "measured", "goal", "measured/goal", "result"],
            [
                [
                    g["figure"],
                    g["measured"],
                    g["goal"],
                    "-" if g["to_goal"] is None else f"{g['to_goal']:.2f}",
                    report.passed(g["passed"]),
                ]
                for g in results["goals"]
            ],
            "Goals (issue 14)",
        )
    )
    return "\n\n".join(parts)


def _near_ceiling(metrics: dict[str, dict], labels: dict[str, str]) -> str:
    """The figures (higher is better) where a path comes within CEILING of direct TCP."""
    found = []
    for metric in metrics.values():
        direct = metric["median"].get("direct")
        if not metric["higher_is_better"] or not direct:
            continue
        for name, value in metric["median"].items():
            if name != "direct" and value is not None and value >= CEILING * direct:
                found.append(f"{metric['label']}: {labels[name]} {value / direct:.0%}")
    return "; ".join(found)


def _render_costs(args: argparse.Namespace, cost: dict, labels: dict[str, str]) -> str:
    rows = []
    for name, got in cost.items():
        carriers = got["carriers"]
        conn, msg = got["connection_us"], got["message_us"]
        rows.append(
            [
                labels[name],
                "-" if not carriers else f"{got['connection_total_us']:,.0f}",
                ", ".join(f"{r} {conn[r]:,.0f}" for r in carriers) or "-",
                ", ".join(f"{r} {msg[r]:,.1f}" for r in carriers) or "-",
                ", ".join(f"{r} {gb:,.2f}" for r, gb in got.get("gb_cpu_s", {}).items()) or "-",
                f"{conn['client']:,.0f} / {conn['echo server']:,.0f}",
                f"{msg['client']:,.1f} / {msg['echo server']:,.1f}",
            ]
        )
    return report.format_table(
        [
            "path",
            "conn, total",
            "conn, per process",
            "1 KiB msg per direction, per process",
            "GB (1 stream), CPU-s per process",
            "load conn: client / echo",
            "load msg: client / echo",
        ],
        rows,
        f"CPU time (user + system, /proc/PID/stat), us: per new connection over "
        f"{args.cost_connections:,} ({args.concurrency} at a time), per 1 KiB message per "
        f"direction over {args.cost_messages:,} round trips; CPU seconds per GB over "
        f"{costs.BULK_SECONDS:g} s of one stream to the built-in sink (iperf3 on the Go paths)"
        f"{f' (median of {args.cost_bulk_sends} sends)' if args.cost_bulk_sends > 1 else ''}; "
        f"fresh processes. The "
        f"load columns are the client and the echo server, the same on every path: direct TCP "
        f"is the floor",
    )


HOPS = (("peered", "tunnel", ""), ("go-peered", "go", "Go yamux, for reference: "))


def _render_hops(cost: dict) -> str:
    """What the peer hop adds, of the relay's peered path and of the Go reference's, where
    both the path and its single-node path were measured; empty if neither was."""
    lines = []
    for peered, single, prefix in HOPS:
        if not {peered, single} <= set(cost):
            continue
        added = costs.hop(cost[peered], cost[single])
        lines += [
            f"  {prefix}per {what}: {added[kind]['added']:,.{digits}f} {unit} (relay A + "
            f"relay B - the single relay), the single relay "
            f"{added[kind]['one_node']:,.{digits}f} {unit}: "
            f"{added[kind]['added'] / added[kind]['one_node']:.2f}x"
            for kind, what, unit, digits in HOP_KINDS
            if kind in added and added[kind]["one_node"] > 0
        ]
    if not lines:
        return ""
    return "\n".join(
        ["CPU time the peer hop adds (goal: at most what one node spends, 1.00x):", *lines]
    )


def _chart(results: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = [(metric["label"], metric["median"]) for metric in results["metrics"].values()]
    if results["held"]:
        panels.append(
            (
                "memory per held connection, KiB",
                {name: tally["kib_per_connection"] for name, tally in results["held"].items()},
            )
        )
    columns = 3
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (title, medians) in zip(axes.flat, panels):
        names = [name for name, value in medians.items() if value is not None]
        bars = ax.bar(
            [PATHS[n].label for n in names],
            [medians[n] for n in names],
            color=[
                {"direct": "#999999", "tunnel": "#1f77b4", "go": "#9467bd", "ssh": "#ff7f0e"}.get(
                    n, "#2ca02c"
                )
                for n in names
            ],
        )
        ax.bar_label(bars, fmt="{:,.0f}", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
    fig.suptitle(
        f"python -m bench tunnel ({results['machine']['cpus']} CPUs, loopback)", fontsize=10
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> int:
    _defaults(args)
    fd_limit = _raise_fd_limit()
    iperf = None if args.builtin else shutil.which("iperf3")

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-tunnel-") as tmp,
            contextlib.ExitStack() as stack,
        ):
            measured = _measure(args, Path(tmp), stack, iperf)
    except KeyboardInterrupt:
        print("interrupted: every process the benchmark started was stopped", flush=True)
        return 130
    except (StartError, SkipPath) as exc:
        print(f"python -m bench tunnel: {exc}", flush=True)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    metrics = _summarize(measured.pop("values"), args)
    results = {
        "benchmark": "tunnel",
        "command": shlex.join(["python", "-m", "bench", *args.argv]),
        "machine": report.machine(),
        "settings": {
            "rounds": args.rounds,
            "seconds": args.seconds,
            "streams": args.streams,
            "rtt_count": args.rtt_count,
            "rate_seconds": args.rate_seconds,
            "concurrency": args.concurrency,
            "hold": args.hold,
            "limit": args.limit,
            "cases": args.cases,
            "pgbench_seconds": args.pgbench_seconds,
            "cost_connections": args.cost_connections,
            "cost_messages": args.cost_messages,
            "cost_bulk_sends": args.cost_bulk_sends,
            "burst": args.burst,
            "paths": args.paths,
            "throughput_tool": "iperf3" if iperf else "built-in",
            "fd_limit": fd_limit,
        },
        "duration_s": round(time.monotonic() - started, 1),
        "load_average": {"start": load_before, "end": os.getloadavg()[0]},
        "metrics": metrics,
        **measured,
    }
    results["goals"] = [g.to_dict() for g in goals.evaluate(results, results["settings"])]
    print(_render(args, results, iperf))
    path = report.write_json(args.json, results)
    chart = _chart(results, args.json.with_suffix(".png"))
    print(
        f"\nresults: {path}\n"
        + (f"chart: {chart}" if chart else "no chart: matplotlib is not installed")
    )
    return 0
