# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""``python -m bench <benchmark> [options]``; ``python -m bench <benchmark> --help`` for options."""

from __future__ import annotations

import argparse
import importlib
import sys

# benchmark name -> module exposing add_arguments(parser) and run(args) -> int
BENCHMARKS = {
    "mux": ("bench.mux_bench", "mux throughput against a raw socketpair, and idle-stream scale"),
    "tunnel": ("bench.tunnel_bench", "the tunnel end to end against direct TCP and ssh -L"),
    "workers": (
        "bench.workers_bench",
        "relay CPU per new connection and per GB with serve --workers 1 and 2; SIGHUP upgrade",
    ),
    "rolling": (
        "bench.rolling",
        "how long a rolling restart of a two-node cluster takes, node by node",
    ),
    "store": (
        "bench.store_bench",
        "PostgreSQL from Trio: worker threads against libpq non-blocking",
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="benchmark")
    modules = {}
    for name, (module_name, help_text) in BENCHMARKS.items():
        modules[name] = module = importlib.import_module(module_name)
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    return modules[args.benchmark].run(args)


if __name__ == "__main__":
    sys.exit(main())
