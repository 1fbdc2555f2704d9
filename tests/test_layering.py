# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The layering rule, read from the source: ``mux`` <- ``bridge`` <- ``relay``, no import
upward; inside ``bridge``, what both ends share (protocol, transport, ops) never imports the
agent; ``bench`` runs from the checkout and is not installed."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mux", "bridge", "relay")
OURS = (*PACKAGES, "bench", "tests")

#: (importer, imported): a module under the first may not import anything under the second.
FORBIDDEN = (
    *(("mux", other) for other in OURS if other != "mux"),
    ("bridge", "relay"),
    ("bridge", "bench"),
    ("bridge", "tests"),
    ("bridge.protocol", "bridge.agent"),
    ("bridge.transport", "bridge.agent"),
    ("bridge.ops", "bridge.agent"),
    ("relay", "bench"),
    ("relay", "tests"),
)


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def lazy_exports(package: str) -> dict[str, str]:
    """``package._EXPORTS`` (name -> defining module), read from the package's source: a
    package that exports names on first use imports those modules then."""
    tree = ast.parse((ROOT / package / "__init__.py").read_text())
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets)
            and isinstance(node.value, ast.Dict)
        ):
            return {
                f"{package}.{key.value}": value.value
                for key, value in zip(node.value.keys, node.value.values)
                if isinstance(key, ast.Constant) and isinstance(value, ast.Constant)
            }
    return {}


EXPORTS = {name: module for package in PACKAGES for name, module in lazy_exports(package).items()}


def imports(source: str, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in `source`, at any depth (in functions and
    ``if TYPE_CHECKING:`` blocks too), relative imports resolved against `module`."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:
                name = f"{base}.{alias.name}"
                yield node.lineno, EXPORTS.get(name, name)


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """One ``line: module imports target (rule)`` per import that goes against FORBIDDEN."""
    found = []
    for line, target in imports(source, module, is_package):
        for importer, imported in FORBIDDEN:
            if within(module, importer) and within(target, imported):
                found.append(f"{line}: {module} imports {target} ({importer} <- {imported})")
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_goes_up_a_layer(package: str):
    paths = sorted((ROOT / package).rglob("*.py"))
    assert paths
    found = [
        f"{path.relative_to(ROOT)}:{violation}"
        for path in paths
        for violation in violations(path.read_text(), module_name(path), path.stem == "__init__")
    ]
    assert not found, "imports against the layering rule:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("import relay\n", "mux.session", ["1: mux.session imports relay (mux <- relay)"]),
        (
            "\n\ndef f():\n    from ..agent import agent\n",
            "bridge.transport.tls",
            [
                "4: bridge.transport.tls imports bridge.agent (bridge.transport <- bridge.agent)",
                "4: bridge.transport.tls imports bridge.agent.agent "
                "(bridge.transport <- bridge.agent)",
            ],
        ),
        (
            "from bridge import Agent\n",
            "bridge.ops.logs",
            ["1: bridge.ops.logs imports bridge.agent.agent (bridge.ops <- bridge.agent)"],
        ),
        (
            "from . import errors\nimport bench\n",
            "relay",
            ["2: relay imports bench (relay <- bench)"],
        ),
        ("import mux\nfrom bridge.protocol import wire\n", "relay.relay", []),
        ("from .protocol import wire\n", "bridge", []),
    ],
)
def test_the_checker_names_module_and_line(source: str, module: str, expected: list[str]):
    assert violations(source, module, is_package="." not in module) == expected


def test_bench_is_not_installed(tmp_path: Path):
    """Outside the checkout, the installed distribution provides mux, bridge and relay only."""
    probe = (
        "import importlib.metadata as m, importlib.util as u\n"
        "print(*(n for n in ('mux', 'bridge', 'relay', 'bench') if u.find_spec(n)))\n"
        "print(*sorted({f.parts[0] for f in m.files('trio-bridge') or ()}))\n"
        "print(*sorted((m.distribution('trio-bridge').read_text('top_level.txt') or '').split()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    importable, files, top_level = (line.split() for line in result.stdout.splitlines())
    assert importable == ["mux", "bridge", "relay"]
    assert "bench" not in files
    assert top_level in ([], ["bridge", "mux", "relay"])


def test_bench_runs_from_the_checkout():
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m bench")
    assert "mux" in result.stdout
    assert "tunnel" in result.stdout
