# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The plugin as a user meets it: a separate test project run by pytest in a subprocess, and
a light import (pytest loads the plugin at every start, whether the fixtures are used or not)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import trio

import relay.pytest_plugin

PYTEST_INI = "[pytest]\ntrio_mode = true\n"

FAILING = """
import relay


async def test_expects_a_refusal_that_does_not_come(bridge_tunnel, nursery):
    assert bridge_tunnel.bridge_name == "test-bridge"
    try:
        await bridge_tunnel.connect("127.0.0.1", 1)
    except relay.TargetNotAllowed:
        return
    except relay.TargetUnreachable as exc:
        raise AssertionError(f"allowed, but nothing listens: {exc}")
"""


def documented_example() -> str:
    """The example test module in the plugin's docstring (what the README shows)."""
    doc = relay.pytest_plugin.__doc__
    block = doc.split("::\n", 1)[1]
    return textwrap.dedent(block)


async def run_project(tmp_path: Path, command: list[str], test_module: str):
    (tmp_path / "pytest.ini").write_text(PYTEST_INI)
    (tmp_path / "test_project.py").write_text(test_module)
    return await trio.run_process(
        [*command, "-p", "no:cacheprovider", "-q"],
        cwd=tmp_path,
        capture_stdout=True,
        stderr=subprocess.STDOUT,
        check=False,
    )


async def test_documented_example_passes_in_a_project(tmp_path, plugin_pytest_command):
    example = documented_example()
    assert "bridge_tunnel.connect(" in example and "bridge_tunnel_factory(" in example
    result = await run_project(tmp_path, plugin_pytest_command, example)
    output = result.stdout.decode()
    assert result.returncode == 0, output
    assert "2 passed" in output


async def test_failing_project_fails(tmp_path, plugin_pytest_command):
    result = await run_project(tmp_path, plugin_pytest_command, FAILING)
    output = result.stdout.decode()
    assert result.returncode == 1, output
    assert "1 failed" in output and "allowed, but nothing listens" in output


async def test_importing_the_plugin_is_light():
    heavy = [
        "trio",
        "mux",
        "relay.relay",
        "cryptography",
        "bcrypt",
        "bridge.agent.agent",
        "relay.testing",
    ]
    code = (
        "import sys, relay.pytest_plugin\n"
        f"loaded = [name for name in {heavy!r} if name in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    result = await trio.run_process([sys.executable, "-c", code], capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode()


async def test_without_pytest_trio_one_line_says_what_is_missing(tmp_path, plugin_pytest_command):
    result = await run_project(tmp_path, [*plugin_pytest_command, "-p", "no:trio"], FAILING)
    output = result.stdout.decode()
    assert result.returncode == 1, output
    assert relay.pytest_plugin.MISSING_PYTEST_TRIO in output
    assert "Traceback" not in output
