# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Running one ``bench.loadgen`` client to completion, in a process of its own."""

from __future__ import annotations

import json
import subprocess

from bench.procs import python_module, run_command


class Failed(Exception):
    """One measurement failed; the message says how."""


def client(*args: object, timeout: float) -> dict:
    """``python -m bench.loadgen ARGS``: its JSON result. Raises Failed with the client's
    error, its last line of stderr, or the time it overran."""
    try:
        done = run_command(
            python_module("bench.loadgen", *args), timeout=timeout, start_new_session=True
        )
    except subprocess.TimeoutExpired:
        raise Failed(f"no result within {timeout:g} s") from None
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        lines = done.stderr.strip().splitlines()
        raise Failed(
            lines[-1] if lines else f"the client exited with status {done.returncode}"
        ) from None
    if result.get("error"):
        raise Failed(result["error"])
    return result
