# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Coverage-guided fuzzing of the yamux frame decoder (mux.Connection.receive_data) with
atheris: `python -m tests.fuzz.fuzz_frames -max_total_time=60` (see atheris_main.py)."""

import sys

from .atheris_main import run

if __name__ == "__main__":
    sys.exit(run(sys.argv, "frames_from_bytes"))
