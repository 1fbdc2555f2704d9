# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Bad input to the console scripts: one line on stderr that says what to fix, exit status 2."""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import pytest

from .e2e_support import AGENT, RELAY, clean_env, free_port, run, write_tls_files

USAGE = 2
GARBAGE_PEM = "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n"


def assert_one_line_error(result: subprocess.CompletedProcess[str], prog: str, says: str) -> None:
    lines = result.stderr.splitlines()
    assert (result.returncode, len(lines)) == (USAGE, 1), result.stderr
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    assert re.search(says, lines[0]), f"/{says}/ not in {lines[0]!r}"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """The files the cases below name as {garbage} (not PEM), {cert} and {key} (valid)."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text(GARBAGE_PEM)
    tls = write_tls_files(tmp_path)
    return {"garbage": str(garbage), "cert": str(tls.cert), "key": str(tls.key)}


AGENT_CASES = {
    # case: (environment changes, flags, a regex the error line must match)
    "allow-without-port": ({"ALLOW": "127.0.0.1:5432,db.internal"}, [], r"db\.internal"),
    "allow-bad-port": ({"ALLOW": "db.internal:notaport"}, [], "notaport"),
    "allow-port-out-of-range": ({"ALLOW": "db.internal:99999"}, [], "99999"),
    "allow-bad-cidr": ({"ALLOW": "10.0.0.0/33:5432"}, [], r"10\.0\.0\.0/33"),
    "allow-flag": ({}, ["--allow", "db.internal"], r"db\.internal"),
    "no-allow-list": ({"ALLOW": None}, [], "(?i)allow"),
    "url-scheme": ({"RELAY_URL": "ftp://relay.example.com"}, [], "ftp://relay"),
    "url-port": ({"RELAY_URL": "tls://relay.example.com:notaport"}, [], "notaport"),
    "url-flag": ({}, ["--relay", "relay.example.com:4000:1"], r"relay\.example\.com:4000:1"),
    "missing-secret": ({"BRIDGE_SECRET": None}, [], "(?i)secret"),
    "missing-id": ({"BRIDGE_ID": None}, [], r"(?i)bridge.?id|--id"),
    "bad-fingerprint": ({"RELAY_FINGERPRINT": "sha256:nothex"}, [], "(?i)fingerprint"),
    "missing-ca-file": (
        {"RELAY_FINGERPRINT": None, "RELAY_CA": "/nonexistent/ca.pem"},
        [],
        "/nonexistent/ca.pem",
    ),
    "garbage-ca-file": ({"RELAY_FINGERPRINT": None, "RELAY_CA": "{garbage}"}, [], "garbage.pem"),
}


@pytest.mark.parametrize(("changes", "flags", "says"), AGENT_CASES.values(), ids=AGENT_CASES)
def test_agent_bad_input(changes: dict, flags: list[str], says: str, files: dict[str, str]):
    # Valid apart from `changes`; the relay address has no listener, in case an error is missed.
    valid = {
        "BRIDGE_ID": str(uuid.uuid4()),
        "BRIDGE_SECRET": "s" * 43,
        "ALLOW": "127.0.0.1:5432",
        "RELAY_URL": f"tls://127.0.0.1:{free_port()}",
        "RELAY_FINGERPRINT": "sha256:" + "0" * 64,
    }
    changes = {key: value and value.format(**files) for key, value in changes.items()}
    env = clean_env(**(valid | changes))

    result = run([AGENT, *flags], env=env)

    assert_one_line_error(result, "bridge-agent", says)


RELAY_CASES = {
    # case: (arguments, a regex the error line must match)
    "listen-bad-port": (["serve", "--listen", "127.0.0.1:notaport"], "notaport"),
    "listen-no-port": (["serve", "--listen", "localhost"], "localhost"),
    "forward-no-bridge": (["serve", "--forward", "127.0.0.1:5432"], r"127\.0\.0\.1:5432"),
    "forward-bad-target": (["serve", "--forward", "e2e=db.internal"], r"db\.internal"),
    "forward-bad-listen": (
        ["serve", "--forward", "e2e=db.internal:5432@127.0.0.1:notaport"],
        "notaport",
    ),
    "missing-cert": (
        ["serve", "--cert", "/nonexistent/cert.pem", "--key", "/nonexistent/key.pem"],
        r"/nonexistent/(cert|key)\.pem",
    ),
    "garbage-cert": (["serve", "--cert", "{garbage}", "--key", "{key}"], "garbage.pem"),
    "missing-key": (
        ["serve", "--cert", "{cert}", "--key", "/nonexistent/key.pem"],
        "/nonexistent/key.pem",
    ),
    "garbage-key": (["serve", "--cert", "{cert}", "--key", "{garbage}"], "garbage.pem"),
    "test-bad-target": (["test", "e2e", "db.internal"], r"db\.internal"),
}


@pytest.mark.parametrize(("args", "says"), RELAY_CASES.values(), ids=RELAY_CASES)
def test_relay_bad_input(args: list[str], says: str, files: dict[str, str], tmp_path: Path):
    args = [arg.format(**files) for arg in args]
    listen = [] if "--listen" in args or args[0] != "serve" else ["--listen", "127.0.0.1:0"]

    result = run([RELAY, "--data-dir", str(tmp_path / "relay-data"), *args, *listen])

    assert_one_line_error(result, "bridge-relay", says)
