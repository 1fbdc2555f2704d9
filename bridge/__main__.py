# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""``python -m bridge``: the same as ``bridge-agent``."""

import sys

from bridge.agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
