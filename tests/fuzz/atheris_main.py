# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""What the atheris harnesses share: run one target of fuzz_targets under libFuzzer.

atheris is not a dependency of trio-bridge; install it (in a virtualenv of its own, with the
runtime dependencies) to run a harness from the repository root, e.g.

    python -m tests.fuzz.fuzz_frames -max_total_time=60

Without -max_total_time or -runs it stops after 60 s. Any other libFuzzer flag works too,
e.g. a corpus directory. A failing input is saved as crash-<hash> and reported with its
traceback; replay it with `python -m tests.fuzz.fuzz_frames crash-<hash>`.
"""

import sys


def run(argv: list[str], target: str) -> int:
    """Fuzz `fuzz_targets.<target>`; without atheris, say so and succeed."""
    try:
        import atheris
    except ImportError:
        print(
            f"{argv[0]}: atheris is not installed (pip install atheris): skipped", file=sys.stderr
        )
        return 0
    with atheris.instrument_imports(include=["mux", "bridge", f"{__package__}.fuzz_targets"]):
        from . import fuzz_targets
    if not any(arg.startswith(("-max_total_time=", "-runs=")) for arg in argv[1:]):
        argv = [*argv, "-max_total_time=60"]
    atheris.Setup(argv, getattr(fuzz_targets, target))
    atheris.Fuzz()
    return 0
