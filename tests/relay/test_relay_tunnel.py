# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The relay end to end, in process: real TLS on loopback, real agents, real targets."""

import hashlib
import json
import logging
import os
import socket
import struct
import sys
from functools import partial

import pytest
import trio
import trio.testing

from bridge.agent.agent import AuthenticationFailed
from bridge.protocol.handshake import (
    MAGIC,
    Hello,
    WelcomeParser,
    WelcomeStatus,
    encode_hello,
)
from relay import (
    BridgeNotConnected,
    SQLiteStore,
    TargetNotAllowed,
    TargetUnreachable,
)
from relay.admin import MAX_LINE, request, serve_admin
from relay.forward import ForwardSpec, serve_forward

from .relay_support import COST, captured_logs, receive_all

TIME_LIMIT = 20


@pytest.fixture
def relay_logs():
    """Records of the relay's loggers, whatever the logging configuration of the process."""
    with captured_logs("relay") as records:
        yield records


def _text(records) -> str:
    return "\n".join(f"{r.getMessage()} {getattr(r, 'fields', {})}" for r in records)


async def _echo_through(stream, payload: bytes) -> bytes:
    async with stream, trio.open_nursery() as nursery:

        async def send():
            await stream.send_all(payload)
            await stream.send_eof()

        nursery.start_soon(send)
        return await receive_all(stream)


async def test_connect_tunnels_bytes_both_ways_with_half_close(harness, echo_port):
    with trio.fail_after(TIME_LIMIT):
        bridge_id, secret = harness.create_bridge("prod")
        await harness.start_agent(bridge_id, secret, [f"127.0.0.1:{echo_port}"])
        payload = os.urandom(3 * 1024 * 1024 + 17)
        for bridge in ["prod", bridge_id]:
            stream = await harness.relay.connect(bridge, "127.0.0.1", echo_port)
            echoed = await _echo_through(stream, payload)
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
        assert await harness.relay.probe("prod", "127.0.0.1", echo_port) == f"127.0.0.1:{echo_port}"


async def test_bytes_the_target_sends_first_are_kept(harness, nursery):
    async def banner(stream):
        async with stream:
            await stream.send_all(b"220 hello\r\n")
            await stream.send_all(await stream.receive_some(100))

    listeners = await nursery.start(partial(trio.serve_tcp, banner, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(TIME_LIMIT):
        bridge_id, secret = harness.create_bridge("smtp")
        await harness.start_agent(bridge_id, secret, [f"127.0.0.1:{port}"])
        for _ in range(5):
            async with await harness.relay.connect("smtp", "127.0.0.1", port) as stream:
                greeting = b""
                while not greeting.endswith(b"\r\n"):
                    greeting += await stream.receive_some(100)
                assert greeting == b"220 hello\r\n"
                await stream.send_all(b"QUIT")
                assert await receive_all(stream) == b"QUIT"


async def test_bridge_not_connected(harness, relay_logs):
    harness.create_bridge("idle")
    with trio.fail_after(TIME_LIMIT):
        with pytest.raises(BridgeNotConnected, match="Bridge not connected: idle"):
            await harness.relay.connect("idle", "db", 5432)
        with pytest.raises(BridgeNotConnected, match="Unknown bridge: nosuch"):
            await harness.relay.connect("nosuch", "db", 5432)


async def test_a_caller_waits_for_a_session_being_welcomed(harness, echo_port, nursery):
    """Between the Welcome (the agent counts itself connected) and the session's registration,
    a caller of the bridge waits for the session instead of hearing it is not connected."""
    bridge_id, secret = harness.create_bridge("arriving")
    arrival = harness.relay.registry.arrive(bridge_id, "arriving")
    opened = trio.Event()
    streams = []

    async def call() -> None:
        streams.append(await harness.relay.connect("arriving", "127.0.0.1", echo_port))
        opened.set()

    with trio.fail_after(TIME_LIMIT):
        nursery.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()
        assert not opened.is_set()  # waiting, not refused
        await harness.start_agent(bridge_id, secret, [f"127.0.0.1:{echo_port}"])
        await opened.wait()
        arrival.settle()
        async with streams[0] as stream:
            assert await _echo_through(stream, b"first caller") == b"first caller"


async def test_a_welcome_that_leads_nowhere_ends_the_wait(harness, nursery):
    bridge_id, _ = harness.create_bridge("stillborn")
    arrival = harness.relay.registry.arrive(bridge_id, "stillborn")
    outcome = trio.Event()

    async def call() -> None:
        with pytest.raises(BridgeNotConnected, match="Bridge not connected: stillborn"):
            await harness.relay.connect("stillborn", "db", 5432)
        outcome.set()

    with trio.fail_after(TIME_LIMIT):
        nursery.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()
        assert not outcome.is_set()
        arrival.settle()
        await outcome.wait()


async def test_listeners_are_closed_once_stop_accepting_is_awaited(harness, echo_port):
    bridge_id, secret = harness.create_bridge("stopping")
    await harness.start_agent(bridge_id, secret, [f"127.0.0.1:{echo_port}"])
    with trio.fail_after(TIME_LIMIT):
        async with await harness.relay.connect("stopping", "127.0.0.1", echo_port) as stream:
            harness.relay.stop_accepting()
            await harness.relay.wait_listeners_closed()
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", harness.port)
            # the tunnel accepted before goes on
            assert await _echo_through(stream, b"still here") == b"still here"


async def test_refusals_carry_the_agents_message(harness, echo_port, closed_port, relay_logs):
    with trio.fail_after(TIME_LIMIT):
        bridge_id, secret = harness.create_bridge("prod")
        await harness.start_agent(
            bridge_id, secret, [f"127.0.0.1:{echo_port}", f"127.0.0.1:{closed_port}"]
        )
        with pytest.raises(TargetNotAllowed) as refused:
            await harness.relay.connect("prod", "db", 5432)
        assert str(refused.value) == "Host not in allowed hosts list: db:5432"
        with pytest.raises(TargetUnreachable, match=f"Connection refused: 127.0.0.1:{closed_port}"):
            await harness.relay.connect("prod", "127.0.0.1", closed_port)
        # The session is unharmed by refusals.
        stream = await harness.relay.connect("prod", "127.0.0.1", echo_port)
        assert await _echo_through(stream, b"still here") == b"still here"
    assert "Host not in allowed hosts list: db:5432" in _text(relay_logs)


async def test_wrong_secret_and_unknown_id_are_refused_alike(harness, relay_logs):
    bridge_id, secret = harness.create_bridge("prod")
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    with trio.fail_after(TIME_LIMIT):
        unknown_id = "4b3c4ef2-0c52-4e8a-9d0c-1d6f3c7e2a11"
        for bad_id, bad_secret in [(bridge_id, wrong), (unknown_id, secret)]:
            with pytest.raises(AuthenticationFailed, match="invalid bridge credentials"):
                await harness.nursery.start(harness.agent(bad_id, bad_secret, ["db:5432"]).run)
    failures = [r for r in relay_logs if r.getMessage() == "Authentication failed"]
    assert [r.levelno for r in failures] == [logging.WARNING, logging.WARNING]
    assert failures[0].fields["bridge_id"] == bridge_id
    assert failures[0].fields["peer"].startswith("127.0.0.1:")
    text = _text(relay_logs)
    assert secret not in text and wrong not in text
    assert not harness.relay.is_connected("prod")


async def test_deleting_a_bridge_cuts_its_session_and_refuses_it(harness, echo_port):
    with trio.fail_after(TIME_LIMIT):
        bridge_id, secret = harness.create_bridge("prod")
        other_id, other_secret = harness.create_bridge("other")
        agent = await harness.start_agent(bridge_id, secret, [f"127.0.0.1:{echo_port}"])
        await harness.start_agent(other_id, other_secret, [f"127.0.0.1:{echo_port}"])
        stream = await harness.relay.connect("prod", "127.0.0.1", echo_port)
        harness.store.delete("prod")
        with trio.fail_after(2):
            await agent.done.wait()
        with pytest.raises(trio.BrokenResourceError):
            await stream.send_all(b"x")
            await stream.receive_some()
        with pytest.raises(BridgeNotConnected):
            await harness.relay.connect("prod", "127.0.0.1", echo_port)
        with pytest.raises(AuthenticationFailed):
            await harness.nursery.start(harness.agent(bridge_id, secret, ["db:5432"]).run)
        assert harness.relay.is_connected("other")


async def test_rotating_a_secret_cuts_the_old_one(harness, echo_port):
    with trio.fail_after(TIME_LIMIT):
        bridge_id, old = harness.create_bridge("prod")
        agent = await harness.start_agent(bridge_id, old, [f"127.0.0.1:{echo_port}"])
        new = harness.store.rotate(bridge_id, cost=COST)
        with trio.fail_after(2):
            await agent.done.wait()
        with pytest.raises(AuthenticationFailed):
            await harness.nursery.start(harness.agent(bridge_id, old, ["db:5432"]).run)
        await harness.start_agent(bridge_id, new, [f"127.0.0.1:{echo_port}"])
        assert await harness.relay.probe("prod", "127.0.0.1", echo_port)


async def test_cli_delete_in_another_process_cuts_the_session(sqlite_harness, echo_port):
    harness = sqlite_harness
    assert isinstance(harness.store, SQLiteStore)
    with trio.fail_after(TIME_LIMIT):
        bridge_id, secret = harness.create_bridge("prod")
        agent = await harness.start_agent(bridge_id, secret, [f"127.0.0.1:{echo_port}"])
        data_dir = harness.store.path.parent
        delete = ["bridges", "delete", "--yes", "prod"]
        await trio.run_process(
            [sys.executable, "-m", "relay", "--data-dir", str(data_dir), *delete],
            capture_stdout=True,
        )
        with trio.fail_after(2):
            await agent.done.wait()
        assert not harness.relay.is_connected(bridge_id)


async def _raw_tls(harness):
    tcp = await trio.open_tcp_stream("127.0.0.1", harness.port)
    return trio.SSLStream(tcp, harness.cert_files.client_context())


async def _welcome(stream):
    parser = WelcomeParser()
    while (welcome := parser.feed(await stream.receive_some())) is None:
        pass
    return welcome


async def _assert_closed(stream) -> None:
    try:
        while await stream.receive_some():
            pass
    except trio.BrokenResourceError:
        pass


async def test_misbehaving_connections_are_dropped_alone(harness, echo_port, relay_logs):
    with trio.fail_after(TIME_LIMIT):
        bridge_id, secret = harness.create_bridge("prod")
        await harness.start_agent(bridge_id, secret, [f"127.0.0.1:{echo_port}"])
        busy = await harness.relay.connect("prod", "127.0.0.1", echo_port)
        await busy.send_all(b"before ")

        # Not TLS at all.
        plain = await trio.open_tcp_stream("127.0.0.1", harness.port)
        await plain.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(2000))
        await _assert_closed(plain)

        # TLS, then not our protocol.
        garbage = await _raw_tls(harness)
        await garbage.send_all(b"\x00" * 2000)
        assert (await _welcome(garbage)).status == WelcomeStatus.MALFORMED
        await _assert_closed(garbage)

        # A version this relay does not speak: it answers with its own.
        future = await _raw_tls(harness)
        await future.send_all(MAGIC + bytes([7]) + b"\x01x")
        welcome = await _welcome(future)
        assert (welcome.status, welcome.version) == (WelcomeStatus.UNSUPPORTED_VERSION, 2)

        # An oversized field.
        oversized = await _raw_tls(harness)
        await oversized.send_all(MAGIC + bytes([1, 200]) + b"x" * 200)
        assert (await _welcome(oversized)).status == WelcomeStatus.MALFORMED

        # A valid login followed by bytes that are not yamux.
        rogue = await _raw_tls(harness)
        await rogue.send_all(encode_hello(Hello(bridge_id, secret)))
        assert (await _welcome(rogue)).status == WelcomeStatus.OK
        await harness.wait_sessions("prod", 2)
        await rogue.send_all(b"\xff" * 64)
        await _assert_closed(rogue)
        await harness.wait_sessions("prod", 1)

        # A TLS client that never says hello is dropped at the deadline.
        silent = await _raw_tls(harness)
        await silent.do_handshake()
        await _assert_closed(silent)

        # Through all of that the first session and its open stream kept going.
        await busy.send_all(b"after")
        await busy.send_eof()
        assert await receive_all(busy) == b"before after"
        await busy.aclose()
    text = _text(relay_logs)
    assert "handshake timed out" in text
    assert "Unexpected error" not in text


async def test_several_agents_of_one_bridge_share_the_load(harness, echo_port):
    with trio.fail_after(TIME_LIMIT):
        bridge_id, secret = harness.create_bridge("ha")
        allow = [f"127.0.0.1:{echo_port}"]
        first = await harness.start_agent(bridge_id, secret, allow)
        await harness.start_agent(bridge_id, secret, allow)
        await harness.wait_sessions("ha", 2)
        streams = [await harness.relay.connect("ha", "127.0.0.1", echo_port) for _ in range(4)]
        assert sorted(s.open_streams() for s in harness.relay.registry.sessions("ha")) == [2, 2]
        for stream in streams:
            await stream.aclose()
        first.kill()
        for i in range(20):
            stream = await harness.relay.connect("ha", "127.0.0.1", echo_port)
            assert await _echo_through(stream, b"%d" % i) == b"%d" % i


async def test_forward_tunnels_local_connections(harness, echo_port, relay_logs):
    with trio.fail_after(TIME_LIMIT):
        bridge_id, secret = harness.create_bridge("prod")
        await harness.start_agent(bridge_id, secret, [f"127.0.0.1:{echo_port}"])
        ok = ForwardSpec.parse(f"prod=127.0.0.1:{echo_port}")
        refused = ForwardSpec.parse("prod=db:5432@127.0.0.1:0")
        ok_port, refused_port = [
            (await harness.nursery.start(serve_forward, harness.relay, spec))[
                0
            ].socket.getsockname()[1]
            for spec in (ok, refused)
        ]

        async def roundtrip(payload):
            return await _echo_through(await trio.open_tcp_stream("127.0.0.1", ok_port), payload)

        results = {}
        async with trio.open_nursery() as nursery:
            for i in range(20):
                payload = os.urandom(50_000 + i)

                async def run(i=i, payload=payload):
                    results[i] = await roundtrip(payload) == payload

                nursery.start_soon(run)
        assert all(results.values()) and len(results) == 20

        client = await trio.open_tcp_stream("127.0.0.1", refused_port)
        await _assert_closed(client)
    assert "Host not in allowed hosts list: db:5432" in _text(relay_logs)


async def test_a_cut_tunnel_resets_the_forwards_client(harness, nursery):
    """A target that resets its connection: the forward's client sees a reset too, never a
    clean end of the data that would pass for the whole of it."""

    async def send_then_reset(target: trio.SocketStream) -> None:
        await target.send_all(b"partial")
        await trio.sleep(0.1)
        target.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await target.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, send_then_reset, 0, host="127.0.0.1"))
    target_port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(TIME_LIMIT):
        bridge_id, secret = harness.create_bridge("cut")
        await harness.start_agent(bridge_id, secret, [f"127.0.0.1:{target_port}"])
        spec = ForwardSpec.parse(f"cut=127.0.0.1:{target_port}")
        forward = (await harness.nursery.start(serve_forward, harness.relay, spec))[0]
        client = await trio.open_tcp_stream("127.0.0.1", forward.socket.getsockname()[1])
        async with client:
            with pytest.raises(trio.BrokenResourceError):
                while await client.receive_some(65536):
                    pass


def test_forward_spec_parsing():
    assert ForwardSpec.parse("prod=db:5432") == ForwardSpec("prod", "db", 5432, "127.0.0.1", 0)
    assert ForwardSpec.parse("p=[::1]:1@0.0.0.0:6000") == ForwardSpec(
        "p", "::1", 1, "0.0.0.0", 6000
    )
    for bad in [
        "prod",
        "=db:5432",
        "prod=db",
        "prod=db:0",
        "prod=db:5432@x",
        "prod=db:99999",
        "prod=::1:5432",
        "prod=db:5432@127.0.0.1:-1",
        "prod=bad host:1",
    ]:
        with pytest.raises(ValueError):
            ForwardSpec.parse(bad)


async def test_control_socket(harness, echo_port, tmp_path):
    path = tmp_path / "relay.sock"
    with trio.fail_after(TIME_LIMIT):
        await harness.nursery.start(serve_admin, harness.relay, path)
        assert (path.stat().st_mode & 0o777) == 0o600
        bridge_id, secret = harness.create_bridge("prod")
        assert await request(path, {"op": "status"}) == {"ok": True, "bridges": {}}
        await harness.start_agent(bridge_id, secret, [f"127.0.0.1:{echo_port}"])
        status = await request(path, {"op": "status"})
        [session] = status["bridges"][bridge_id]
        assert session["peer"].startswith("127.0.0.1:")
        ok = await request(
            path, {"op": "test", "bridge": "prod", "host": "127.0.0.1", "port": echo_port}
        )
        assert ok == {"ok": True, "address": f"127.0.0.1:{echo_port}"}
        refused = await request(path, {"op": "test", "bridge": "prod", "host": "db", "port": 5432})
        assert refused == {
            "ok": False,
            "error": "Host not in allowed hosts list: db:5432",
            "kind": "TargetNotAllowed",
        }
        bad = await request(path, {"op": "nope"})
        assert not bad["ok"] and "unknown op" in bad["error"]


async def test_a_secret_given_as_the_id_is_not_logged(harness, relay_logs):
    bridge_id, secret = harness.create_bridge("prod")
    with trio.fail_after(TIME_LIMIT):
        with pytest.raises(AuthenticationFailed):
            await harness.nursery.start(harness.agent(secret, bridge_id, ["db:5432"]).run)
    [failure] = [r for r in relay_logs if r.getMessage() == "Authentication failed"]
    assert failure.fields["bridge_id"] == "<not a bridge ID: 43 characters>"
    assert secret not in _text(relay_logs)


async def _raw_exchange(path, payload: bytes) -> bytes:
    """Send `payload` to the control socket as it is, then EOF; what it answers."""
    async with await trio.open_unix_socket(str(path)) as stream:
        await stream.send_all(payload)
        await stream.send_eof()
        answer = bytearray()
        while data := await stream.receive_some():
            answer += data
        return bytes(answer)


async def test_control_socket_answers_garbage_and_keeps_serving(harness, echo_port, tmp_path):
    path = tmp_path / "relay.sock"
    with trio.fail_after(TIME_LIMIT):
        await harness.nursery.start(serve_admin, harness.relay, path)
        bridge_id, secret = harness.create_bridge("prod")
        await harness.start_agent(bridge_id, secret, [f"127.0.0.1:{echo_port}"])
        for payload in [
            b"not json\n",
            b"[1, 2]\n",
            b"42\n",
            b'"op"\n',
            b"{}\n",
            b'{"op": null}\n',
            b'{"op": "test"}\n',
            b'{"op": "test", "bridge": "prod", "host": "db", "port": "x"}\n',
            b'{"op": "test", "bridge": "prod", "host": "db", "port": 99999}\n',
            b'{"op": "test", "bridge": "prod", "host": "bad host\\u0000", "port": 1}\n',
            b"\xff\xfe\n",
            b"x" * (MAX_LINE + 10) + b"\n",
        ]:
            answer = json.loads(await _raw_exchange(path, payload))
            assert answer["ok"] is False and answer["error"], (payload[:60], answer)
        assert await _raw_exchange(path, b'{"op": "status"') == b""  # closed mid-line: no answer
        ok = await request(
            path, {"op": "test", "bridge": "prod", "host": "127.0.0.1", "port": echo_port}
        )
        assert ok == {"ok": True, "address": f"127.0.0.1:{echo_port}"}
