# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Coverage-guided fuzzing of the handshake and connect parsers (bridge.protocol.handshake,
bridge.protocol.connect) with atheris: `python -m tests.fuzz.fuzz_handshake -max_total_time=60`
(see atheris_main.py)."""

import sys

from .atheris_main import run

if __name__ == "__main__":
    sys.exit(run(sys.argv, "handshake_from_bytes"))
