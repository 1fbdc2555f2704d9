# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""``python -m bench mux``: mux against the raw transport it runs on, and idle-stream scale.

Throughput: one stream and N parallel streams move the same bytes with the same write size (the
receiver reads with that same max size) over Unix socketpairs: raw (one socketpair per stream)
against mux (one session over one socketpair). Both ends run in this process on one Trio loop, so
both sides of either path share one core. Raw and mux runs alternate (A B A B); medians reported.

Scale: an opener opens N streams in one session and writes nothing; an acceptor accepts them all.
Each side runs in its own process over a Unix socketpair, so memory is attributed per side. The
open time runs from the first ``open_stream()`` until the opener has processed the acceptor's ACK
for every stream (the acceptor then opens one stream back, which arrives after its ACKs). Python
heap per stream (tracemalloc, from interpreter start) comes from a separate, slower run.
"""

from __future__ import annotations

import argparse
import gc
import json
import linecache
import os
import resource
import shlex
import socket
import subprocess
import sys
import threading
import time
import traceback
import tracemalloc
from pathlib import Path

import attrs
import trio

import mux
from bench import report

MIB = 1 << 20
ONE_STREAM_TARGET = 0.5  # one mux stream >= 0.5x the raw socketpair
HEAP_TARGET = 4096  # bytes per idle stream per side, at 100,000 streams
HEAP_TARGET_STREAMS = 100_000
OPEN_RATE_TARGET = 10_000  # opens/s
EXIT_GRACE = 10  # seconds a scale process may take to close its session once measured


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="small run: 64 MiB, 1 round, 1k and 10k streams"
    )
    parser.add_argument(
        "--size",
        type=float,
        metavar="MIB",
        help="data per throughput run, in MiB (default 1024; --quick 64)",
    )
    parser.add_argument(
        "--write-size",
        type=int,
        default=64 * 1024,
        metavar="BYTES",
        help="send_all() size, also the receiver's max read (default 65536)",
    )
    parser.add_argument(
        "--streams",
        type=int,
        default=16,
        help="parallel streams in the multi-stream case (default 16)",
    )
    parser.add_argument(
        "--rounds", type=int, help="alternating rounds, median reported (default 3; --quick 1)"
    )
    parser.add_argument(
        "--scale",
        type=_counts,
        metavar="N,N,...",
        help="idle-stream counts (default 1000,10000,100000; --quick 1000,10000)",
    )
    parser.add_argument("--only", choices=("throughput", "scale"), help="run one part only")
    parser.add_argument(
        "--mem-top",
        type=int,
        default=0,
        metavar="K",
        help="print the K allocation sites that grew most per side (largest count)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="give up on one scale run after S seconds (default 300)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=report.RESULTS_DIR / "mux.json",
        metavar="PATH",
        help="where to write the results (default bench/results/mux.json)",
    )


def _counts(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part]


# -- throughput ----------------------------------------------------------------------------


async def _send(stream: trio.abc.SendStream, nbytes: int, write_size: int) -> None:
    chunk = bytes(write_size)
    while nbytes > 0:
        await stream.send_all(chunk if nbytes >= write_size else chunk[:nbytes])
        nbytes -= write_size


async def _receive(stream: trio.abc.ReceiveStream, nbytes: int, write_size: int) -> None:
    while nbytes > 0:
        data = await stream.receive_some(write_size)
        if not data:
            raise RuntimeError(f"EOF with {nbytes} bytes still expected")
        nbytes -= len(data)


async def _timed(pairs: list[tuple], nbytes: int, write_size: int) -> float:
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for sender, receiver in pairs:
            nursery.start_soon(_send, sender, nbytes, write_size)
            nursery.start_soon(_receive, receiver, nbytes, write_size)
    return time.perf_counter() - start


def _socket_streams() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def _raw_run(streams: int, nbytes: int, write_size: int) -> float:
    pairs = [_socket_streams() for _ in range(streams)]
    try:
        return await _timed(pairs, nbytes, write_size)
    finally:
        for pair in pairs:
            for stream in pair:
                await stream.aclose()


async def _mux_run(streams: int, nbytes: int, write_size: int) -> float:
    a, b = _socket_streams()
    elapsed = None
    async with (
        mux.open_session(a, client=True) as client,
        mux.open_session(b, client=False) as server,
    ):
        pairs = []
        for _ in range(streams):
            sender = await client.open_stream()
            pairs.append((sender, await server.accept_stream()))
        elapsed = await _timed(pairs, nbytes, write_size)
    if elapsed is None:
        raise RuntimeError("the run was cancelled while closing its sessions")
    return elapsed


def _throughput(kind: str, streams: int, total: int, write_size: int) -> float | None:
    """MB/s (10**6 bytes) for `total` bytes split over `streams`, or None on error."""
    run = _raw_run if kind == "raw" else _mux_run
    per_stream = total // streams
    gc.collect()
    try:
        elapsed = trio.run(run, streams, per_stream, write_size)
    except Exception:
        traceback.print_exc()
        return None
    return per_stream * streams / elapsed / 1e6


def run_throughput(args: argparse.Namespace) -> list[dict]:
    total = int(args.size * MIB)
    cases = [(1, "1 stream"), (args.streams, f"{args.streams} streams")]
    results = {
        streams: {"case": name, "streams": streams, "raw_mbps": [], "mux_mbps": []}
        for streams, name in cases
    }
    for kind in ("raw", "mux"):  # warm-up, not reported
        _throughput(kind, 1, min(total, 8 * MIB), args.write_size)
    for round_ in range(1, args.rounds + 1):
        for streams, name in cases:
            for kind in ("raw", "mux"):
                mbps = _throughput(kind, streams, total, args.write_size)
                results[streams][f"{kind}_mbps"].append(mbps)
                shown = "error" if mbps is None else f"{mbps:,.1f} MB/s"
                report.progress(f"round {round_}/{args.rounds}  {name:<11} {kind}: {shown}")
    for entry in results.values():
        for kind in ("raw", "mux"):
            values = [v for v in entry[f"{kind}_mbps"] if v is not None]
            entry[f"{kind}_median"] = report.median(values) if values else None
        raw, mx = entry["raw_median"], entry["mux_median"]
        entry["ratio"] = mx / raw if raw and mx is not None else None
        entry["ratio_per_round"] = [
            m / r if r and m is not None else None
            for r, m in zip(entry["raw_mbps"], entry["mux_mbps"])
        ]
    return list(results.values())


# -- scale: one side per process -----------------------------------------------------------


def _scale_config(count: int) -> mux.Config:
    limit = max(200_000, count + 1)
    return mux.Config(max_inbound_streams=limit, accept_backlog=limit)


def _usage() -> tuple[int, int]:
    """(traced Python heap or 0, resident set size), after a full collection."""
    gc.collect()
    heap = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * resource.getpagesize()
    return heap, rss


def _short(filename: str) -> str:
    """A source path relative to the longest sys.path entry holding it."""
    path = Path(filename)
    bases = [Path(p) for p in sys.path if p and path.is_relative_to(p)]
    return str(path.relative_to(max(bases, key=lambda b: len(b.parts)))) if bases else filename


def _top_sites(before: tracemalloc.Snapshot, top: int) -> list[dict]:
    after = tracemalloc.take_snapshot()
    sites = []
    for stat in after.compare_to(before, "lineno")[:top]:
        frame = stat.traceback[0]
        sites.append(
            {
                "site": f"{_short(frame.filename)}:{frame.lineno}",
                "bytes": stat.size_diff,
                "blocks": stat.count_diff,
                "code": linecache.getline(frame.filename, frame.lineno).strip(),
            }
        )
    return sites


async def _expect(stream: mux.Stream, byte: bytes) -> None:
    data = await stream.receive_some(1)
    if data != byte:
        raise RuntimeError(f"expected {byte!r}, got {data!r}")


async def _side(role: str, fd: int, count: int, top: int) -> None:
    sock = trio.socket.from_stdlib_socket(socket.socket(fileno=fd))
    opener = role == "opener"
    out: dict = {"role": role, "count": count}
    async with mux.open_session(
        trio.SocketStream(sock), client=opener, config=_scale_config(count)
    ) as session:
        base_heap, base_rss = _usage()
        snapshot = tracemalloc.take_snapshot() if top else None
        print("ready", flush=True)
        held = []
        if opener:
            await trio.to_thread.run_sync(sys.stdin.readline)  # "go": the acceptor is ready too
            start = time.perf_counter()
            for _ in range(count):
                held.append(await session.open_stream())
            out["open_calls_s"] = time.perf_counter() - start
            back = await session.accept_stream()  # arrives after the ACKs for all `count` streams
            out["open_all_s"] = time.perf_counter() - start
            heap, rss = _usage()
            await back.send_all(b"m")
            await _expect(back, b"k")
        else:
            for _ in range(count):
                held.append(await session.accept_stream())
            back = await session.open_stream()
            await _expect(back, b"m")  # the opener has seen every ACK and measured
            heap, rss = _usage()
        out["heap_per_stream"] = (heap - base_heap) / count
        out["rss_per_stream"] = (rss - base_rss) / count
        if snapshot is not None:
            out["top_sites"] = _top_sites(snapshot, top)
        print(json.dumps(out), flush=True)
        if opener:
            return
        await back.send_all(b"k")
        try:
            await back.receive_some()  # until the opener closes
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def _side_main(argv: list[str]) -> None:
    role, fd, count, top = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    trio.run(_side, role, fd, count, top)


def _scale_run(count: int, *, trace: bool, top: int, timeout: float) -> dict[str, dict] | None:
    """One opener/acceptor pair in two processes: {"opener": {...}, "acceptor": {...}}."""
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    )
    env.pop("PYTHONTRACEMALLOC", None)
    if trace:
        env["PYTHONTRACEMALLOC"] = "1"
    pair = socket.socketpair()
    procs = {}
    for role, sock in zip(("opener", "acceptor"), pair):
        cmd = [
            sys.executable,
            "-m",
            "bench.mux_bench",
            role,
            str(sock.fileno()),
            str(count),
            str(top),
        ]
        procs[role] = subprocess.Popen(
            cmd,
            env=env,
            pass_fds=(sock.fileno(),),
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
    for sock in pair:
        sock.close()
    timed_out = threading.Event()

    def give_up() -> None:
        timed_out.set()
        for proc in procs.values():
            proc.kill()

    watchdog = threading.Timer(timeout, give_up)
    watchdog.start()
    results = {}
    try:
        if all(p.stdout.readline() == "ready\n" for p in procs.values()):
            procs["opener"].stdin.write("go\n")
            procs["opener"].stdin.flush()
            for role, proc in procs.items():
                line = proc.stdout.readline()
                if line:
                    results[role] = json.loads(line)
        watchdog.cancel()
        for role, proc in procs.items():
            try:
                if proc.wait(EXIT_GRACE) != 0 and not timed_out.is_set():
                    report.progress(f"{count:,} streams: the {role} exited with {proc.returncode}")
            except subprocess.TimeoutExpired:
                report.progress(
                    f"{count:,} streams: the {role} did not exit within {EXIT_GRACE} s "
                    f"of closing its session"
                )
    finally:
        watchdog.cancel()
        for proc in procs.values():
            proc.kill()
            proc.wait()
    if timed_out.is_set():
        report.progress(f"{count:,} streams: gave up after {timeout:.0f} s")
    return results if len(results) == 2 else None


def run_scale(args: argparse.Namespace) -> list[dict]:
    sides = ("opener", "acceptor")
    runs = {
        n: {"open_all_s": [], "open_calls_s": [], "rss": {side: [] for side in sides}}
        for n in args.scale
    }
    for round_ in range(1, args.rounds + 1):
        for n in args.scale:
            run = _scale_run(n, trace=False, top=0, timeout=args.timeout)
            if run is None:
                report.progress(f"round {round_}/{args.rounds}  {n:>7,} idle streams: error")
                continue
            for key in ("open_all_s", "open_calls_s"):
                runs[n][key].append(run["opener"][key])
            for side in sides:
                runs[n]["rss"][side].append(run[side]["rss_per_stream"])
            report.progress(
                f"round {round_}/{args.rounds}  {n:>7,} idle streams: "
                f"{n / run['opener']['open_all_s']:,.0f} opens/s"
            )
    results = []
    for n in args.scale:
        report.progress(f"{n:>7,} idle streams under tracemalloc (heap per stream per side)")
        top = args.mem_top if n == max(args.scale) else 0
        traced = _scale_run(n, trace=True, top=top, timeout=args.timeout)
        seconds = report.median(runs[n]["open_all_s"]) if runs[n]["open_all_s"] else None
        entry = {
            "streams": n,
            "open_all_s": runs[n]["open_all_s"],
            "open_calls_s": runs[n]["open_calls_s"],
            "open_all_s_median": seconds,
            "opens_per_s": n / seconds if seconds else None,
            "heap_per_stream": {side: traced[side]["heap_per_stream"] for side in sides}
            if traced
            else {},
            "rss_per_stream": {side: report.median(v) for side, v in runs[n]["rss"].items() if v},
        }
        if top and traced:
            entry["top_sites"] = {side: traced[side]["top_sites"] for side in sides}
        results.append(entry)
    return results


# -- report --------------------------------------------------------------------------------


def _bytes(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} B"


def _mbps(value: float | None) -> str:
    return "error" if value is None else f"{value:,.1f}"


def _targets(throughput: list[dict], scale: list[dict]) -> list[dict]:
    targets = []
    one = next((t for t in throughput if t["streams"] == 1), None)
    if one:
        ratio = one["ratio"]
        targets.append(
            {
                "target": f"one mux stream >= {ONE_STREAM_TARGET}x raw socketpair",
                "measured": "-" if ratio is None else f"{ratio:.2f}x",
                "passed": None if ratio is None else ratio >= ONE_STREAM_TARGET,
            }
        )
    if scale:
        big = max(scale, key=lambda s: s["streams"])
        heap = big["heap_per_stream"]
        ok = None
        if heap and big["streams"] >= HEAP_TARGET_STREAMS:
            ok = max(heap.values()) <= HEAP_TARGET
        measured = f"{_bytes(heap.get('opener'))} / {_bytes(heap.get('acceptor'))}" if heap else "-"
        targets.append(
            {
                "target": f"{HEAP_TARGET_STREAMS:,} idle streams, <= {HEAP_TARGET // 1024} KiB "
                f"heap/stream/side (opener / acceptor)",
                "measured": f"{measured} at {big['streams']:,}",
                "passed": ok,
            }
        )
        rate = big["opens_per_s"]
        targets.append(
            {
                "target": f">= {OPEN_RATE_TARGET:,} stream opens/s",
                "measured": "-" if rate is None else f"{rate:,.0f}/s at {big['streams']:,}",
                "passed": None if rate is None else rate >= OPEN_RATE_TARGET,
            }
        )
    return targets


def _render(
    args: argparse.Namespace, throughput: list[dict], scale: list[dict], targets: list[dict]
) -> str:
    m = report.machine()
    parts = [
        f"mux benchmark: Python {m['python']}, Trio {m['trio']}, {m['cpus']} CPUs, "
        f"median of {args.rounds} round(s); MB = 10^6 bytes"
    ]
    if throughput:
        rows = [
            [
                t["case"],
                _mbps(t["raw_median"]),
                _mbps(t["mux_median"]),
                "-" if t["ratio"] is None else f"{t['ratio']:.2f}x",
            ]
            for t in throughput
        ]
        parts.append(
            report.format_table(
                ["throughput", "raw MB/s", "mux MB/s", "mux/raw"],
                rows,
                f"Throughput: {args.size:g} MiB per run, {args.write_size:,}-byte writes and "
                "reads, Unix socketpair (raw: one per stream), both ends in one process",
            )
        )
    if scale:
        rows = []
        for s in scale:
            heap, rss = s["heap_per_stream"], s["rss_per_stream"]
            rows.append(
                [
                    f"{s['streams']:,}",
                    "error" if s["open_all_s_median"] is None else f"{s['open_all_s_median']:.3f}",
                    "-" if s["opens_per_s"] is None else f"{s['opens_per_s']:,.0f}",
                    _bytes(heap.get("opener")),
                    _bytes(heap.get("acceptor")),
                    _bytes(rss.get("opener")),
                    _bytes(rss.get("acceptor")),
                ]
            )
        parts.append(
            report.format_table(
                [
                    "idle streams",
                    "open all (s)",
                    "opens/s",
                    "heap opener",
                    "heap acceptor",
                    "RSS opener",
                    "RSS acceptor",
                ],
                rows,
                "Idle streams in one session, one process per side; per stream: Python heap "
                "(tracemalloc, separate run), RSS growth",
            )
        )
        for s in scale:
            for role, sites in s.get("top_sites", {}).items():
                parts.append(
                    report.format_table(
                        ["site", "bytes", "blocks", "code"],
                        [
                            [
                                site["site"],
                                f"{site['bytes']:,}",
                                f"{site['blocks']:,}",
                                site["code"][:60],
                            ]
                            for site in sites
                        ],
                        f"Heap growth by line, {role}, {s['streams']:,} streams",
                    )
                )
    if targets:
        parts.append(
            report.format_table(
                ["target", "measured", "result"],
                [[t["target"], t["measured"], report.passed(t["passed"])] for t in targets],
                "Targets",
            )
        )
    return "\n\n".join(parts)


def run(args: argparse.Namespace) -> int:
    if args.size is None:
        args.size = 64 if args.quick else 1024
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.scale is None:
        args.scale = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    throughput = run_throughput(args) if args.only in (None, "throughput") else []
    scale = run_scale(args) if args.only in (None, "scale") else []
    targets = _targets(throughput, scale)
    print(_render(args, throughput, scale, targets))
    path = report.write_json(
        args.json,
        {
            "benchmark": "mux",
            "command": shlex.join(["python", "-m", "bench", *args.argv]),
            "machine": report.machine(),
            "settings": {
                "size_bytes": int(args.size * MIB),
                "write_size": args.write_size,
                "streams": args.streams,
                "rounds": args.rounds,
                "scale": args.scale,
            },
            "mux_config": attrs.asdict(mux.Config()),
            "throughput": throughput,
            "scale": scale,
            "targets": targets,
        },
    )
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    _side_main(sys.argv[1:])
