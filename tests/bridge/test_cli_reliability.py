# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""bridge-agent's reconnect, keepalive and drain settings."""

import pytest

from bridge.agent import cli

from .bridge_support import BRIDGE_ID, SECRET

ENV = {
    "BRIDGE_ID": BRIDGE_ID,
    "BRIDGE_SECRET": SECRET,
    "RELAY_URL": "tls://relay",
    "ALLOW": "db:5432",
}
SETTINGS = [
    ("--max-backoff", "RECONNECT_MAX_BACKOFF", "max_backoff", 30.0),
    ("--keepalive-interval", "KEEPALIVE_INTERVAL", "keepalive_interval", 30.0),
    ("--keepalive-timeout", "KEEPALIVE_TIMEOUT", "keepalive_timeout", 10.0),
    ("--drain-timeout", "DRAIN_TIMEOUT", "drain_timeout", 30.0),
]


def config(argv=(), **env):
    agent, _, _ = cli.load(list(argv), {**ENV, **env})
    return agent.config


def test_defaults():
    loaded = config()
    assert [getattr(loaded, field) for _, _, field, _ in SETTINGS] == [d for *_, d in SETTINGS]
    assert not loaded.mux_config and loaded.session_config().ping_timeout == 10.0


@pytest.mark.parametrize("flag, env, field, default", SETTINGS)
def test_env_and_flags(flag, env, field, default):
    assert getattr(config(**{env: "1.5"}), field) == 1.5
    assert getattr(config([flag, "0.25"], **{env: "1.5"}), field) == 0.25


@pytest.mark.parametrize("flag, env, field, default", SETTINGS)
@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf", "nan", ""])
def test_invalid_durations_are_usage_errors(capsys, flag, env, field, default, value):
    assert cli.main([f"{flag}={value}"], ENV) == 2
    expected = f"invalid {flag} ({env}) {value!r}: expected a positive number of seconds"
    assert capsys.readouterr().err == f"bridge-agent: error: {expected}\n"
    if value:
        assert cli.main([], {**ENV, env: value}) == 2
        assert capsys.readouterr().err == f"bridge-agent: error: {expected}\n"


def test_help_names_env_vars_and_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"], {})
    text = " ".join(capsys.readouterr().out.split())
    for flag, env, _, default in SETTINGS:
        assert flag in text and f"(env: {env}; default: {default:g})" in text


def test_systemd_notifier_comes_from_the_environment():
    agent, _, _ = cli.load([], {**ENV, "NOTIFY_SOCKET": "@bridge", "WATCHDOG_USEC": "4000000"})
    assert agent.notifier.enabled and agent.notifier.watchdog_interval == 2.0
    agent, _, _ = cli.load([], ENV)
    assert not agent.notifier.enabled
