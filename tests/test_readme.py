# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The README's examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def python_block_after(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading) :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_embedding_example_runs(tmp_path):
    script = tmp_path / "embedding.py"
    script.write_text(python_block_after("## Embedding the relay in a Trio service"))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "b'hello through the bridge'",
        "refused: Host not in allowed hosts list: 127.0.0.1:22",
        "audited: [('tunnel.open', 'ok'), ('tunnel.close', 'ok'), ('tunnel.open', 'refused')]",
    ]


def test_cluster_env_file_sets_only_real_settings():
    """The env file of "On several machines" names settings `bridge-relay serve` reads."""
    text = README.read_text()
    section = text[text.index("### On several machines") :]
    block = re.search(r"```\n(.*?)```", section, re.DOTALL).group(1)
    names = [line.split("=", 1)[0] for line in block.splitlines() if line]
    assert names[0] == "RELAY_STORE" and len(names) == 8
    usage = subprocess.run(
        [Path(sys.executable).parent / "bridge-relay", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert usage.returncode == 0, usage.stderr
    documented = " ".join(usage.stdout.split())
    for name in names:
        assert re.search(rf"\(env {name}\b", documented), name
