# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The agent verifies the relay, by a CA file or by a pinned fingerprint, before logging in."""

from __future__ import annotations

from pathlib import Path

import pytest

from .e2e_support import Launcher, TLSFiles, write_tls_files

ALLOW = ["127.0.0.1:5432"]


@pytest.fixture
def tls_files(tmp_path: Path) -> TLSFiles:
    return write_tls_files(tmp_path)


def test_relay_certificate_from_a_ca(launch: Launcher, tls_files: TLSFiles):
    relay = launch.relay(args=["--cert", tls_files.cert, "--key", tls_files.key])

    # The flag wins over the environment.
    launch.agent(
        relay,
        ALLOW,
        args=["--ca", tls_files.ca],
        RELAY_CA="/nonexistent/ca.pem",
        RELAY_FINGERPRINT=None,
    )  # connects


@pytest.mark.parametrize("trust", ["other-ca", "other-fingerprint"])
def test_agent_refuses_a_relay_it_cannot_verify(launch: Launcher, tls_files: TLSFiles, trust: str):
    relay = launch.relay()  # its own self-signed certificate
    env = (
        {"RELAY_CA": str(tls_files.ca), "RELAY_FINGERPRINT": None}
        if trust == "other-ca"
        else {"RELAY_FINGERPRINT": "sha256:" + "ab" * 32}
    )

    agent = launch.agent(relay, ALLOW, wait=False, **env)

    error = agent.wait_for(r"^.*\tERROR\t.*(?i:certificate|fingerprint).*$")[0]
    assert "('" not in error, f"a Python repr in the log line: {error}"
    assert "Handling incoming proxy connections" not in agent.stderr()
    assert "Bridge connected" not in relay.process.stderr()
