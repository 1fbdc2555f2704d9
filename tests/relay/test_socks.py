# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The SOCKS5 front door: real curl through a real relay and agent on loopback, and raw
clients for the exact reply codes and for misbehaving peers."""

from __future__ import annotations

import hashlib
import os
import subprocess
from functools import partial

import h11
import pytest
import trio

from bridge.agent.agent import AuthenticationFailed
from bridge.ops.metrics import TunnelMetrics, serve_metrics
from relay import MemoryStore
from relay.socks import Reply, SocksConfig, parse_bridge_host, serve_socks

from ..settle import settled
from .relay_support import RelayHarness, RunningAgent, captured_logs, receive_all

TIME_LIMIT = 20
CREDENTIALS = ("alice", "s3cret pass")
CURLE_PROXY = 97  # curl's exit status for a proxy handshake that failed


# -- fixtures --------------------------------------------------------------------------------


async def _http_hello(stream: trio.SocketStream) -> None:
    """Answers any request with `hello from <path>`."""
    conn = h11.Connection(h11.SERVER)
    async with stream:
        while (event := conn.next_event()) is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(4096))
        if not isinstance(event, h11.Request):
            return
        body = b"hello from " + event.target
        headers = [("Content-Length", str(len(body))), ("Connection", "close")]
        await stream.send_all(
            conn.send(h11.Response(status_code=200, headers=headers))
            + conn.send(h11.Data(data=body))
            + conn.send(h11.EndOfMessage())
        )


@pytest.fixture
async def http_port(nursery) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, _http_hello, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


class Front:
    """A relay with bridge `prod` connected, and SOCKS front doors started on demand."""

    def __init__(
        self, nursery: trio.Nursery, harness: RelayHarness, bridge_id: str, agent: RunningAgent
    ) -> None:
        self.nursery = nursery
        self.harness = harness
        self.bridge_id = bridge_id
        self.agent = agent
        self.metrics = TunnelMetrics()

    async def socks(self, **config) -> int:
        listeners = await self.nursery.start(
            partial(
                serve_socks,
                self.harness.relay,
                "127.0.0.1",
                0,
                config=SocksConfig(**config),
                metrics=self.metrics,
            )
        )
        return listeners[0].socket.getsockname()[1]


@pytest.fixture
async def front(nursery, cert_files, http_port, echo_port, closed_port) -> Front:
    harness = await RelayHarness(nursery, MemoryStore(), cert_files).start()
    bridge_id, secret = harness.create_bridge("prod")
    allow = [f"127.0.0.1:{port}" for port in (http_port, echo_port, closed_port)]
    agent = await harness.start_agent(bridge_id, secret, allow)
    return Front(nursery, harness, bridge_id, agent)


@pytest.fixture
def socks_logs():
    """Records of the `relay.socks` logger, whatever the logging configuration."""
    with captured_logs("relay.socks") as records:
        yield records


def _refusals(records) -> list[dict]:
    return [r.fields for r in records if r.getMessage() == "SOCKS request refused"]


async def curl(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return await trio.run_process(
        ["curl", "-sS", "--max-time", "10", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
    )


# -- a raw client ----------------------------------------------------------------------------


async def _read(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = b""
    while len(data) < size and (chunk := await stream.receive_some(size - len(data))):
        data += chunk
    return data


async def socks_connect(
    port: int, host: str, target_port: int, *, credentials=None
) -> tuple[int, trio.SocketStream]:
    """SOCKS5 CONNECT by domain name; returns the reply code and the open stream."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    method = 0 if credentials is None else 2
    await stream.send_all(bytes([5, 1, method]))
    assert await _read(stream, 2) == bytes([5, method])
    if credentials is not None:
        user, password = (part.encode() for part in credentials)
        await stream.send_all(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
        assert await _read(stream, 2) == b"\x01\x00"
    name = host.encode()
    await stream.send_all(bytes([5, 1, 0, 3, len(name)]) + name + target_port.to_bytes(2, "big"))
    reply = await _read(stream, 10)
    assert reply[:1] == b"\x05" and len(reply) == 10, reply
    return reply[1], stream


# -- tests -----------------------------------------------------------------------------------


def test_parse_bridge_host():
    assert parse_bridge_host("db.internal.bridge-prod") == ("prod", "db.internal")
    assert parse_bridge_host("127.0.0.1.BRIDGE-prod.") == ("prod", "127.0.0.1")
    assert parse_bridge_host("a.bridge-x.bridge-prod") == ("prod", "a.bridge-x")
    uuid = "0b8e4f7a-3c1d-4e5f-9a8b-7c6d5e4f3a2b"
    assert parse_bridge_host(f"kafka.bridge-{uuid}") == (uuid, "kafka")
    for name in ["example.com", "bridge-prod", ".bridge-prod", "db.bridge-", "db.bridge-a.b"]:
        assert parse_bridge_host(name) is None, name


def test_credentials_are_bounded_and_hidden():
    with pytest.raises(ValueError, match="1 to 255 bytes"):
        SocksConfig(credentials=("u", "p" * 256))
    with pytest.raises(ValueError, match="1 to 255 bytes"):
        SocksConfig(credentials=("", "p"))
    assert "s3cret" not in repr(SocksConfig(credentials=CREDENTIALS))


async def test_curl_reaches_a_private_http_server(front, http_port):
    with trio.fail_after(TIME_LIMIT):
        port = await front.socks()
        for bridge in ["prod", front.bridge_id]:
            url = f"http://127.0.0.1.bridge-{bridge}:{http_port}/page?x=1"
            result = await curl("--socks5-hostname", f"127.0.0.1:{port}", url)
            assert result.returncode == 0, result.stderr
            assert result.stdout == b"hello from /page?x=1"
        proxy = f"socks5h://127.0.0.1:{port}"
        result = await curl("--proxy", proxy, f"http://127.0.0.1.bridge-prod:{http_port}/p")
        assert result.stdout == b"hello from /p", result.stderr


async def test_curl_with_username_and_password(front, http_port, socks_logs):
    with trio.fail_after(TIME_LIMIT):
        port = await front.socks(credentials=CREDENTIALS)
        url = f"http://127.0.0.1.bridge-prod:{http_port}/secret"
        user = ":".join(CREDENTIALS)
        result = await curl("--socks5-hostname", f"127.0.0.1:{port}", "--proxy-user", user, url)
        assert (result.returncode, result.stdout) == (0, b"hello from /secret"), result.stderr
        proxy = f"socks5h://alice:s3cret%20pass@127.0.0.1:{port}"
        result = await curl("--proxy", proxy, url)
        assert (result.returncode, result.stdout) == (0, b"hello from /secret"), result.stderr
        assert not _refusals(socks_logs)

        for args in [["--proxy-user", "alice:wrong"], ["--proxy-user", "bob:s3cret pass"], []]:
            result = await curl("--socks5-hostname", f"127.0.0.1:{port}", *args, url)
            assert (result.returncode, result.stdout) == (CURLE_PROXY, b""), result.stderr
        reasons = [f["reason"] for f in _refusals(socks_logs)]
        assert reasons[:2] == ["wrong username or password"] * 2
        assert "no username/password" in reasons[2]
        assert front.metrics.auth_failures.value(listener="socks") == 2
        assert all("s3cret" not in str(r.__dict__) for r in socks_logs)


async def test_refusals_map_to_reply_codes_and_log_lines(
    front, http_port, echo_port, closed_port, socks_logs
):
    with trio.fail_after(TIME_LIMIT):
        port = await front.socks()
        cases = [
            ("127.0.0.1.bridge-prod", http_port, Reply.SUCCEEDED, None),
            ("db.bridge-prod", 5432, Reply.NOT_ALLOWED, "Host not in allowed hosts list: db:5432"),
            ("127.0.0.1.bridge-prod", closed_port, Reply.CONNECTION_REFUSED, "Connection refused"),
            ("db.bridge-nosuch", 5432, Reply.NETWORK_UNREACHABLE, "Unknown bridge: nosuch"),
            ("example.com", 80, Reply.NOT_ALLOWED, "not a bridge host"),
            ("db\x7f.bridge-prod", 5432, Reply.NOT_ALLOWED, "invalid target"),
            ("127.0.0.1.bridge-prod", 0, Reply.NOT_ALLOWED, "invalid target"),
        ]
        for host, target_port, expected, reason in cases:
            code, stream = await socks_connect(port, host, target_port)
            await stream.aclose()
            assert code == expected, host
            if reason is not None:
                refusal = _refusals(socks_logs)[-1]
                assert reason in refusal["reason"]
                assert refusal["reply"] == expected.name
                assert refusal["client"].startswith("127.0.0.1:")
        assert len(_refusals(socks_logs)) == len(cases) - 1
        assert front.metrics.refused.value(reason="not_a_bridge_host") == 3

        # curl resolving names itself sends an IP address, which names no bridge
        result = await curl("--socks5", f"127.0.0.1:{port}", f"http://127.0.0.1:{http_port}/")
        assert result.returncode == CURLE_PROXY, result.stderr
        assert "an IP address names no bridge" in _refusals(socks_logs)[-1]["reason"]
        # the agent's allow-list refuses: curl fails with its SOCKS error
        result = await curl("--socks5-hostname", f"127.0.0.1:{port}", "http://db.bridge-prod/")
        assert result.returncode == CURLE_PROXY, result.stderr
        refusal = _refusals(socks_logs)[-1]
        assert refusal == {
            "client": refusal["client"],
            "bridge": "prod",
            "target": "db:80",
            "reply": "NOT_ALLOWED",
            "reason": "Host not in allowed hosts list: db:80",
        }


async def test_bytes_flow_both_ways_with_half_close(front, echo_port):
    with trio.fail_after(TIME_LIMIT):
        port = await front.socks()
        code, stream = await socks_connect(port, "127.0.0.1.bridge-prod", echo_port)
        assert code == Reply.SUCCEEDED
        payload = os.urandom(2 * 1024 * 1024 + 3)
        async with stream, trio.open_nursery() as nursery:

            async def send():
                await stream.send_all(payload)
                await stream.send_eof()

            nursery.start_soon(send)
            echoed = await receive_all(stream)
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


async def test_misbehaving_clients_do_not_hurt_the_server(front, http_port, socks_logs):
    with trio.fail_after(TIME_LIMIT):
        port = await front.socks(handshake_timeout=0.5, credentials=CREDENTIALS)
        eof, silence = True, False
        cases = [  # (bytes sent, then EOF or silence, expected answer; None: only a handshake)
            (b"\x00garbage" * 100, eof, b""),  # not SOCKS5: closed without an answer
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", eof, b""),
            (b"\x04\x01\x00\x50\x7f\x00\x00\x01user\x00", eof, b""),  # SOCKS4
            (b"\x05", eof, b""),  # truncated greeting
            (b"\x05\x03\x00", silence, b""),  # truncated greeting, then the deadline
            (b"\x05\x01\x00", eof, b"\x05\xff"),  # no acceptable method
            (b"\x05\x00", eof, b"\x05\xff"),  # no methods at all
            (b"\x05\x01\x02\x01\xff" + b"u" * 255 + b"\xff", eof, b"\x05\x02"),  # no password
            (b"\x05\x01\x02\x02\x05", eof, b"\x05\x02\x01\x01"),  # auth version 2
        ]
        auth = b"\x05\x01\x02\x01\x05alice\x0bs3cret pass"
        requests = [
            (b"\x05\x02\x00\x03\x04db.x\x00\x50", Reply.COMMAND_NOT_SUPPORTED),  # BIND
            (b"\x05\x01\x00\x09", Reply.ADDRESS_TYPE_NOT_SUPPORTED),
            (b"\x04\x01\x00\x03", Reply.GENERAL_FAILURE),  # bad version in the request
            (b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50", Reply.NOT_ALLOWED),  # IPv4
            (b"\x05\x01\x00\x04" + bytes(15) + b"\x01\x00\x50", Reply.NOT_ALLOWED),  # IPv6
            (b"\x05\x01\x00\x03\xff" + b"a" * 255 + b"\x00\x50", Reply.NOT_ALLOWED),
            (b"\x05\x01\x00\x03\x00\x00\x50", Reply.NOT_ALLOWED),  # empty name
            (b"\x05\x01\x00\x03\x10\xff\xfe" + b"x" * 14 + b"\x00\x50", Reply.NOT_ALLOWED),
        ]
        accepted = b"\x05\x02\x01\x00"
        for request, code in requests:
            cases.append((auth + request, eof, accepted + bytes([5, code, 0, 1]) + bytes(6)))
        cases.append((auth + b"\x05\x01\x00\x03\x40" + b"y" * 20, silence, accepted))
        for sent, then_eof, expected in cases:
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                answer = b""
                try:
                    await stream.send_all(sent)
                    if then_eof:
                        await stream.send_eof()
                    answer = await receive_all(stream)
                except trio.BrokenResourceError:  # reset: the server did not read everything
                    pass
            assert answer == expected, sent[:20]
        dropped = [r.fields["reason"] for r in socks_logs if "dropped" in r.getMessage()]
        assert "not a SOCKS5 client (first byte 0x00)" in dropped
        assert "not a SOCKS5 client (first byte 0x47)" in dropped
        assert any("SOCKS4 is not supported" in reason for reason in dropped)
        assert dropped.count("no complete request within 0.5 s") == 2
        assert dropped.count("closed during the handshake") == 2

        # and the server still works
        code, stream = await socks_connect(
            port, "127.0.0.1.bridge-prod", http_port, credentials=CREDENTIALS
        )
        await stream.aclose()
        assert code == Reply.SUCCEEDED


async def test_metrics_after_curl_traffic(front, http_port, nursery):
    """Scrape /metrics with curl after SOCKS traffic and check the counters it drove."""
    with trio.fail_after(TIME_LIMIT):
        port = await front.socks(credentials=CREDENTIALS)
        listeners = await nursery.start(serve_metrics, front.metrics, lambda: True, "127.0.0.1", 0)
        metrics_url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/metrics"
        proxy = f"socks5h://alice:s3cret%20pass@127.0.0.1:{port}"
        for path in ["/a", "/b"]:
            result = await curl("--proxy", proxy, f"http://127.0.0.1.bridge-prod:{http_port}{path}")
            assert result.returncode == 0, result.stderr
        await curl("--proxy", f"socks5h://alice:nope@127.0.0.1:{port}", "http://x.bridge-prod/")
        await curl("--proxy", proxy, "http://example.com/")
        result = await curl(metrics_url)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.decode().splitlines()
        assert 'trio_bridge_auth_failures_total{listener="socks"} 1' in lines
        assert 'trio_bridge_refused_targets_total{reason="not_a_bridge_host"} 1' in lines


async def _scrape(nursery, metrics, health) -> tuple[dict[str, float], int]:
    """The samples of /metrics and the status of /healthz, both fetched with curl."""
    listeners = await nursery.start(serve_metrics, metrics, health, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    result = await curl(f"{url}/metrics")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.decode().splitlines() if not line.startswith("#")]
    status = await curl("-o", "/dev/null", "-w", "%{http_code}", f"{url}/healthz")
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in lines)}, int(status.stdout)


async def test_relay_and_agent_metrics_after_curl_traffic(front, http_port, nursery):
    with trio.fail_after(TIME_LIMIT):
        relay, agent = front.harness.relay, front.agent.agent
        port = await front.socks()
        bodies = 0
        for path in ["/a", "/bb"]:
            url = f"http://127.0.0.1.bridge-prod:{http_port}{path}"
            result = await curl("--socks5-hostname", f"127.0.0.1:{port}", url)
            assert result.returncode == 0, result.stderr
            bodies += len(result.stdout)
        result = await curl("--socks5-hostname", f"127.0.0.1:{port}", "http://db.bridge-prod/")
        assert result.returncode == CURLE_PROXY
        with pytest.raises(AuthenticationFailed):
            await front.harness.agent(front.bridge_id, "not-the-secret", ["db:1"]).run()
        bridge_id = front.bridge_id
        # the tunnels close on both ends after curl is done
        await settled(
            lambda: (
                not relay.metrics.streams_open.value(bridge="prod")
                and not agent.metrics.streams_open.value(bridge=bridge_id)
            )
        )

        connected = partial(agent.metrics.sessions.value, bridge=bridge_id)
        at_relay, _ = await _scrape(nursery, relay.metrics, lambda: True)
        at_agent, healthy = await _scrape(nursery, agent.metrics, lambda: connected() > 0)
        assert healthy == 200
        for samples, bridge in [(at_relay, "prod"), (at_agent, bridge_id)]:
            label = f'{{bridge="{bridge}"}}'
            assert samples[f"trio_bridge_sessions_connected{label}"] == 1
            assert samples[f"trio_bridge_streams_total{label}"] == 2
            assert samples[f"trio_bridge_streams_open{label}"] == 0
            assert samples[f"trio_bridge_stream_open_seconds_count{label}"] == 2
            assert samples['trio_bridge_refused_targets_total{reason="not_allowed"}'] == 1
        for direction in ["to_target", "from_target"]:
            relay_key = f'trio_bridge_bytes_total{{bridge="prod",direction="{direction}"}}'
            agent_key = f'trio_bridge_bytes_total{{bridge="{bridge_id}",direction="{direction}"}}'
            assert at_relay[relay_key] == at_agent[agent_key] > bodies
        assert at_relay['trio_bridge_auth_failures_total{listener="agent"}'] == 1

        front.agent.kill()
        await front.harness.wait_disconnected("prod")
        at_agent, healthy = await _scrape(nursery, agent.metrics, lambda: connected() > 0)
        assert healthy == 503
        assert at_agent[f'trio_bridge_sessions_connected{{bridge="{bridge_id}"}}'] == 0
        assert relay.metrics.sessions.value(bridge="prod") == 0
