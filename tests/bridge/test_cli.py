# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0

import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from bridge.agent import cli
from bridge.agent.allowlist import AllowList
from bridge.transport.tls import PinnedSSLContext, certificate_fingerprint

from .bridge_support import BRIDGE_ID, SECRET

ROOT = Path(__file__).parents[2]
ENV = {
    "BRIDGE_ID": BRIDGE_ID,
    "BRIDGE_SECRET": SECRET,
    "RELAY_URL": "tls://relay.example.com",
    "ALLOW": "db:5432",
}


def error(capsys, argv=(), **env) -> str:
    """Runs main expecting a usage error; returns the one line it printed."""
    environ = {k: v for k, v in {**ENV, **env}.items() if v is not None}
    assert cli.main(list(argv), environ) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("bridge-agent: error: ")
    assert SECRET not in line
    return line.removeprefix("bridge-agent: error: ")


def test_env_configuration():
    agent, level, fmt = cli.load(
        [], {**ENV, "ALLOW": "db:5432, 10.0.0.0/8:*,", "LOG_LEVEL": "debug"}
    )
    assert agent.bridge_id == BRIDGE_ID
    assert str(agent.relay_url) == "tls://relay.example.com:4000"
    assert agent.allow == AllowList.parse(["db:5432", "10.0.0.0/8:*"])
    assert (level, fmt) == ("DEBUG", "text")


def test_several_relays_and_fingerprints():
    pins = f"sha256:{'01' * 32}, sha256:{'02' * 32}"
    env = {**ENV, "RELAY_URL": "tls://relay1.example.com, wss://relay2.example.com:8443"}
    agent, _, _ = cli.load([], {**env, "RELAY_FINGERPRINT": pins})
    assert [str(url) for url in agent.relay_urls] == [
        "tls://relay1.example.com:4000",
        "wss://relay2.example.com:8443/bridge",
    ]
    assert agent.ssl_context.fingerprints == (bytes([1]) * 32, bytes([2]) * 32)
    agent, _, _ = cli.load(["--relay", "tls://a,tls://b:1"], env)
    assert [url.address for url in agent.relay_urls] == ["a:4000", "b:1"]
    assert agent.config.connections == 2
    assert cli.load([], {**env, "RELAY_CONNECTIONS": " 3"})[0].config.connections == 3
    assert (
        cli.load(["--connections", "1"], {**env, "RELAY_CONNECTIONS": "3"})[0].config.connections
        == 1
    )


def test_flags_override_env(certificates):
    agent, level, fmt = cli.load(
        [
            "--id",
            "other",
            "--relay",
            "tls://127.0.0.1:4443",
            "--allow",
            "a:1,b:2",
            "--allow",
            "c:*",
            "--ca",
            certificates.ca_file,
            "--log-level",
            "error",
            "--log-format",
            "json",
        ],
        {**ENV, "LOG_FORMAT": "text"},
    )
    assert agent.bridge_id == "other" and agent.relay_url.port == 4443
    assert str(agent.allow) == "a:1,b:2,c:*"
    assert (level, fmt) == ("ERROR", "json")


def test_allowed_hosts_alias_and_allow_any(certificates):
    agent, _, _ = cli.load([], {**ENV, "ALLOW": "", "ALLOWED_HOSTS": "kafka:9092"})
    assert str(agent.allow) == "kafka:9092"
    agent, _, _ = cli.load(["--allow-any"], {**ENV, "ALLOW": ""})
    assert agent.allow.allow_any
    agent, _, _ = cli.load([], {**ENV, "ALLOW": "", "ALLOW_ANY": "true"})
    assert agent.allow.allow_any


def test_websocket_relay_and_proxy():
    env = {**ENV, "RELAY_URL": "wss://relay.example.com", "https_proxy": "proxy:3128"}
    agent, _, _ = cli.load([], env)
    assert str(agent.relay_url) == "wss://relay.example.com:443/bridge"
    assert str(agent.proxy) == "http://proxy:3128"
    env = {**ENV, "HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": ".example.com"}

    def proxy(argv, env=env, url=0):
        agent = cli.load(argv, env)[0]
        return agent.proxy_for(agent.relay_urls[url])

    assert proxy([]) is None
    assert str(proxy(["--no-proxy", ""])) == "http://proxy:3128"
    assert str(proxy(["--proxy", "other:8080", "--no-proxy", ""])) == "http://other:8080"
    assert proxy(["--proxy", "", "--no-proxy", ""]) is None
    # With several relays, NO_PROXY is applied to each one's host.
    both = {**env, "RELAY_URL": "tls://relay.example.com,tls://relay.elsewhere.net"}
    assert proxy([], both, 0) is None
    assert str(proxy([], both, 1)) == "http://proxy:3128"


def test_fingerprint(certificates):
    pin = certificate_fingerprint(certificates.cert_der)
    agent, _, _ = cli.load([], {**ENV, "RELAY_FINGERPRINT": pin})
    assert isinstance(agent.ssl_context, PinnedSSLContext)
    agent, _, _ = cli.load(["--fingerprint", pin], {**ENV, "RELAY_CA": certificates.ca_file})
    assert isinstance(agent.ssl_context, PinnedSSLContext)
    agent, _, _ = cli.load(["--ca", certificates.ca_file], {**ENV, "RELAY_FINGERPRINT": pin})
    assert not isinstance(agent.ssl_context, PinnedSSLContext)


@pytest.mark.parametrize(
    "argv, env, expected",
    [
        ([], {"BRIDGE_ID": None}, "missing settings: BRIDGE_ID (--id)"),
        ([], {"BRIDGE_SECRET": None}, "missing settings: BRIDGE_SECRET (--secret)"),
        ([], {"BRIDGE_SECRET": ""}, "missing settings: BRIDGE_SECRET (--secret)"),
        (
            [],
            {"RELAY_URL": None},
            "missing settings: RELAY_URL (--relay, e.g. tls://relay.example.com)",
        ),
        (
            [],
            {"BRIDGE_ID": None, "BRIDGE_SECRET": None, "RELAY_URL": None, "ALLOW": None},
            "missing settings: BRIDGE_ID (--id), BRIDGE_SECRET (--secret), RELAY_URL (--relay, "
            "e.g. tls://relay.example.com), ALLOW (--allow HOST:PORT, or --allow-any)",
        ),
        (
            [],
            {"BRIDGE_SECRET": "0"},
            "BRIDGE_SECRET is 1 characters, too short to be a bridge secret (at least 16;",
        ),
        ([], {"BRIDGE_SECRET": "s" * 15}, "BRIDGE_SECRET is 15 characters, too short"),
        (
            [],
            {"RELAY_URL": "https://relay"},
            "invalid relay URL 'https://relay': expected tls://HOST[:PORT]",
        ),
        (["--relay", "tls://relay/bridge"], {}, "invalid relay URL 'tls://relay/bridge'"),
        (["--proxy", "https://me:hunter2@proxy"], {}, "invalid proxy URL 'https://***@proxy'"),
        ([], {"HTTPS_PROXY": "proxy:x"}, "invalid proxy URL 'proxy:x'"),
        ([], {"RELAY_URL": "tls://relay:99999"}, "invalid relay URL"),
        (
            [],
            {"RELAY_URL": "tls://relay1,relay2:4000"},
            "invalid relay URL 'relay2:4000' (entry 2 of 2): expected tls://HOST[:PORT]",
        ),
        (["--relay", " , "], {}, "no relay URL given: expected tls://HOST[:PORT]"),
        (
            ["--connections", "0"],
            {},
            "invalid --connections (RELAY_CONNECTIONS) '0': expected a whole number from 1 to 16",
        ),
        ([], {"RELAY_CONNECTIONS": "two"}, "invalid --connections (RELAY_CONNECTIONS) 'two'"),
        ([], {"RELAY_CONNECTIONS": "17"}, "from 1 to 16"),
        (
            [],
            {"RELAY_FINGERPRINT": f"sha256:{'0' * 64},sha256:12"},
            "invalid certificate fingerprint 'sha256:12' (entry 2 of 2): expected sha256:",
        ),
        ([], {"ALLOW": None}, "missing settings: ALLOW (--allow HOST:PORT, or --allow-any)"),
        ([], {"ALLOW": " , "}, "missing settings: ALLOW"),
        ([], {"ALLOW": "db:5432,db"}, "invalid allow-list entry 'db'"),
        (
            ["--allow", "db:99999"],
            {},
            "invalid allow-list entry 'db:99999': port must be 1..65535 or *",
        ),
        (["--allow-any", "--allow", "db:1"], {}, "--allow-any (ALLOW_ANY) cannot be combined"),
        (
            ["--ca", "/nonexistent/ca.pem"],
            {},
            "cannot read CA file /nonexistent/ca.pem: No such file",
        ),
        (["--fingerprint", "sha256:abc"], {}, "invalid certificate fingerprint"),
        ([], {"RELAY_FINGERPRINT": "md5:00"}, "invalid certificate fingerprint"),
        ([], {"RELAY_FINGERPRINT": "sha256:" + "0" * 64, "RELAY_CA": "ca.pem"}, "not both"),
        ([], {"LOG_LEVEL": "verbose"}, "invalid log level 'verbose'"),
        (["--log-format", "xml"], {}, "invalid log format 'xml'"),
        ([], {"BRIDGE_ID": "has space"}, "invalid bridge credentials: bridge_id must be"),
        ([], {"BRIDGE_SECRET": "s" * 129}, "invalid bridge credentials: secret must be"),
        (["--bogus"], {}, "unrecognized arguments: --bogus"),
        (["--id"], {}, "argument --id: expected one argument"),
    ],
)
def test_usage_errors(capsys, argv, env, expected):
    assert expected in error(capsys, argv, **env)


def test_unreadable_ca_file(capsys, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate")
    assert "holds no usable PEM certificate" in error(capsys, ["--ca", str(ca)])


def test_help_lists_every_flag_with_its_env_var(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"], {})
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    flags = [
        ("--id", "BRIDGE_ID"),
        ("--secret", "BRIDGE_SECRET"),
        ("--relay", "RELAY_URL"),
        ("--allow", "ALLOW or ALLOWED_HOSTS"),
        ("--allow-any", "ALLOW_ANY"),
        ("--ca", "RELAY_CA"),
        ("--fingerprint", "RELAY_FINGERPRINT"),
        ("--log-level", "LOG_LEVEL"),
        ("--log-format", "LOG_FORMAT"),
    ]
    for flag, env in flags:
        assert flag in text and f"env: {env}" in text
    assert "default: INFO" in text and "default: text" in text


def agent_process_env(relay, certificates, **extra):
    return {
        **{k: v for k, v in os.environ.items() if k not in ENV and k != "ALLOWED_HOSTS"},
        "PYTHONPATH": str(ROOT),
        "BRIDGE_ID": BRIDGE_ID,
        "BRIDGE_SECRET": SECRET,
        "RELAY_URL": f"tls://127.0.0.1:{relay.port}",
        "RELAY_CA": certificates.ca_file,
        "ALLOW": "127.0.0.1:*",
        **extra,
    }


async def read_until(stream, needle: bytes, seen: bytearray) -> None:
    while needle not in seen:
        data = await stream.receive_some()
        assert data, f"process ended before printing {needle!r}: {bytes(seen)!r}"
        seen += data


async def test_process_runs_and_exits_cleanly_on_sigint(nursery, relay, certificates):
    env = agent_process_env(relay, certificates, LOG_LEVEL="debug")
    command = [sys.executable, "-m", "bridge"]
    process = await nursery.start(
        partial(trio.run_process, command, env=env, stderr=subprocess.PIPE, check=False, cwd=ROOT)
    )
    seen = bytearray()
    await read_until(process.stderr, b"Handling incoming proxy connections", seen)
    process.send_signal(signal.SIGINT)
    while data := await process.stderr.receive_some():
        seen += data
    assert await process.wait() == 0, seen.decode()
    log = seen.decode()
    assert f'\tINFO\tConnecting to the relay\t{{"address": "127.0.0.1:{relay.port}"}}' in log
    assert "Traceback" not in log and SECRET not in log


async def test_process_with_wrong_secret_exits_78(relay, certificates):
    env = agent_process_env(
        relay, certificates, BRIDGE_SECRET="wrong-secret-but-long-enough", LOG_FORMAT="json"
    )
    result = await trio.run_process(
        [sys.executable, "-m", "bridge"], env=env, capture_stderr=True, check=False, cwd=ROOT
    )
    assert result.returncode == 78
    lines = result.stderr.decode().splitlines()
    assert (
        '"event": "Relay rejected the bridge credentials: invalid bridge credentials; '
        'exit status 78, not restarted under systemd"' in lines[-1]
    )
    assert '"level": "ERROR"' in lines[-1]


async def test_process_with_a_wrong_fingerprint_exits_78_without_retrying(relay, certificates):
    env = agent_process_env(relay, certificates, RELAY_FINGERPRINT="sha256:" + "ab" * 32)
    del env["RELAY_CA"]
    with trio.fail_after(20):
        result = await trio.run_process(
            [sys.executable, "-m", "bridge"], env=env, capture_stderr=True, check=False, cwd=ROOT
        )
    assert result.returncode == 78
    last = result.stderr.decode().splitlines()[-1]
    assert "\tERROR\tRefusing the relay at 127.0.0.1:" in last
    assert last.endswith("; exit status 78, not restarted under systemd")
    assert "Reconnecting" not in result.stderr.decode()


async def test_connection_failures_keep_the_os_words(relay, certificates):
    closed = trio.socket.socket()
    await closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    url = f"tls://127.0.0.1:{closed.getsockname()[1]}"
    env = agent_process_env(relay, certificates, RELAY_URL=url, RECONNECT_MAX_BACKOFF="0.1")
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "bridge"], env=env, cwd=ROOT, stderr=subprocess.PIPE
    )
    seen = bytearray()
    try:
        with trio.fail_after(20):
            await read_until(process.stderr, b'Connection refused"}', seen)
    finally:
        process.terminate()
        await process.wait()
        closed.close()
    assert f'Cannot connect to the relay at {url[6:]}: Connection refused"' in seen.decode()


async def test_a_short_proxy_password_does_not_mangle_the_logs(relay, certificates):
    closed = trio.socket.socket()
    await closed.bind(("127.0.0.1", 0))  # the proxy: bound, never listening
    proxy = f"127.0.0.1:{closed.getsockname()[1]}"
    env = agent_process_env(
        relay, certificates, HTTPS_PROXY=f"http://user:0@{proxy}", RECONNECT_MAX_BACKOFF="0.1"
    )
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "bridge"], env=env, cwd=ROOT, stderr=subprocess.PIPE
    )
    seen = bytearray()
    try:
        with trio.fail_after(20):
            await read_until(process.stderr, b"Reconnecting", seen)
    finally:
        process.terminate()
        await process.wait()
        closed.close()
    text = seen.decode()
    assert f'"address": "127.0.0.1:{relay.port}", "proxy": "{proxy}"' in text
    assert "REDACTED" not in text  # the password itself never reaches a log line
