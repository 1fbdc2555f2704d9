# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0

import hashlib
import logging
import os
import socket
from functools import partial

import pytest
import trio
import trio.testing

from bridge.agent.agent import (
    Agent,
    AgentConfig,
    AuthenticationFailed,
    RelayNotTrusted,
    RelayRejected,
    RelayUnavailable,
    _DialSlots,
)
from bridge.agent.allowlist import AllowList
from bridge.protocol.connect import ConnectRequest, ConnectStatus, encode_connect_request
from bridge.protocol.handshake import Welcome, WelcomeStatus
from bridge.transport.tls import certificate_fingerprint, client_ssl_context
from bridge.transport.websocket import serve_websocket_agents
from relay import MemoryStore, Relay, RelayConfig

from .bridge_support import BRIDGE_ID, SECRET, FakeRelay, echo, make_certificates, serve
from .connect_proxy import ConnectProxy


async def read_all(stream) -> bytes:
    chunks = []
    while data := await stream.receive_some():
        chunks.append(data)
    return b"".join(chunks)


async def start(nursery, relay: FakeRelay, agent: Agent):
    await nursery.start(agent.run)
    return await relay.next_session()


async def test_connects_authenticates_and_logs(nursery, relay, make_agent, caplog):
    caplog.set_level(logging.DEBUG, logger="bridge")
    await start(nursery, relay, make_agent())
    (hello,) = relay.hellos
    assert (hello.bridge_id, hello.secret) == (BRIDGE_ID, SECRET)
    assert hello.info["agent"].startswith("trio-bridge/") and hello.info["hostname"]
    connecting, handling = [r for r in caplog.records if r.levelno == logging.INFO][:2]
    assert connecting.getMessage() == "Connecting to the relay"
    assert connecting.fields == {"address": f"127.0.0.1:{relay.port}"}
    assert handling.getMessage() == "Handling incoming proxy connections"


async def test_echo_through_the_tunnel(nursery, relay, make_agent):
    port = await serve(nursery, echo)
    session = await start(nursery, relay, make_agent([f"127.0.0.1:{port}"]))
    tunnel = await relay.open(session, "127.0.0.1", port)
    assert tunnel.reply.status == ConnectStatus.OK
    assert tunnel.reply.message == f"127.0.0.1:{port}"
    payload = os.urandom(3 * 1024 * 1024 + 17)

    async def send():
        await tunnel.stream.send_all(payload)
        await tunnel.stream.send_eof()

    nursery.start_soon(send)
    echoed = tunnel.leftover + await read_all(tunnel.stream)
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


async def test_bytes_sent_with_the_request_reach_the_target(nursery, relay, make_agent):
    port = await serve(nursery, echo)
    session = await start(nursery, relay, make_agent())
    tunnel = await relay.open(session, "127.0.0.1", port, early=b"hello early")
    await tunnel.stream.send_eof()
    assert tunnel.leftover + await read_all(tunnel.stream) == b"hello early"


async def test_half_close_both_ways(nursery, relay, make_agent):
    """The target reads to EOF (our FIN), then answers and closes (its FIN)."""
    events = []

    async def digest_then_close(stream):
        async with stream:
            data = b""
            while chunk := await stream.receive_some():
                data += chunk
            events.append("target saw EOF")
            await stream.send_all(hashlib.sha256(data).digest())

    port = await serve(nursery, digest_then_close)
    session = await start(nursery, relay, make_agent())
    tunnel = await relay.open(session, "127.0.0.1", port)
    await tunnel.stream.send_all(b"abc" * 100_000)
    await tunnel.stream.send_eof()
    assert (
        tunnel.leftover + await read_all(tunnel.stream) == hashlib.sha256(b"abc" * 100_000).digest()
    )
    assert events == ["target saw EOF"]


async def test_target_half_close_keeps_the_other_direction_open(nursery, relay, make_agent):
    received = trio.Event()
    got = []

    async def greet_then_read(stream):
        await stream.send_all(b"greeting")
        await stream.send_eof()
        got.append(await read_all(stream))
        received.set()

    port = await serve(nursery, greet_then_read)
    session = await start(nursery, relay, make_agent())
    tunnel = await relay.open(session, "127.0.0.1", port)
    assert tunnel.leftover + await read_all(tunnel.stream) == b"greeting"
    await tunnel.stream.send_all(b"still flowing")
    await tunnel.stream.send_eof()
    await received.wait()
    assert got == [b"still flowing"]


async def test_target_not_in_allow_list(nursery, relay, make_agent, caplog):
    port = await serve(nursery, echo)
    session = await start(nursery, relay, make_agent(["db.internal:5432"]))
    tunnel = await relay.open(session, "127.0.0.1", port)
    message = f"Host not in allowed hosts list: 127.0.0.1:{port}"
    assert tunnel.reply.status == ConnectStatus.NOT_ALLOWED
    assert tunnel.reply.message == message
    assert await read_all(tunnel.stream) == b""
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage() == message
    assert warning.fields["target"] == f"127.0.0.1:{port}"


async def test_hostname_rule_dials_a_resolved_address(nursery, relay, make_agent):
    port = await serve(nursery, echo)  # IPv4 only: ::1, if localhost has it, is refused
    session = await start(nursery, relay, make_agent([f"localhost:{port}"]))
    tunnel = await relay.open(session, "localhost", port)
    assert tunnel.reply == type(tunnel.reply)(ConnectStatus.OK, f"127.0.0.1:{port}")
    refused = await relay.open(
        session, "127.0.0.1", port
    )  # the rule names the host, not the address
    assert refused.reply.status == ConnectStatus.NOT_ALLOWED


async def test_ip_rule_checks_and_dials_the_resolved_address(nursery, relay, make_agent):
    port = await serve(nursery, echo)
    session = await start(nursery, relay, make_agent([f"127.0.0.0/8:{port}"]))
    tunnel = await relay.open(session, "localhost", port)
    assert tunnel.reply.status == ConnectStatus.OK
    assert tunnel.reply.message == f"127.0.0.1:{port}"
    other_port = await relay.open(session, "localhost", port + 1 if port < 65535 else port - 1)
    assert other_port.reply.status == ConnectStatus.NOT_ALLOWED


async def test_dns_failure(nursery, relay, make_agent):
    session = await start(nursery, relay, make_agent(["no-such-host.invalid:*"], request_timeout=5))
    tunnel = await relay.open(session, "no-such-host.invalid", 5432)
    assert tunnel.reply.status == ConnectStatus.DNS_FAILURE
    assert tunnel.reply.message.startswith("DNS lookup failed for no-such-host.invalid: ")


async def test_connection_refused(nursery, relay, make_agent):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    session = await start(nursery, relay, make_agent())
    tunnel = await relay.open(session, "127.0.0.1", port)
    assert tunnel.reply.status == ConnectStatus.CONNECTION_REFUSED
    assert tunnel.reply.message == f"Connection refused: 127.0.0.1:{port}"


def _loopback6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _loopback6(), reason="no IPv6 loopback")
async def test_ipv6_literals_in_any_form_are_checked_and_dialed(nursery, relay, make_agent):
    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="::1"))
    port = listeners[0].socket.getsockname()[1]
    session = await start(nursery, relay, make_agent([f"[::1]:{port}"]))
    for form in ("::1", "0:0:0::1", "::0001"):
        tunnel = await relay.open(session, form, port)
        assert tunnel.reply.status == ConnectStatus.OK, form
        assert tunnel.reply.message == f"[::1]:{port}"
        await tunnel.stream.send_all(b"v6")
        await tunnel.stream.send_eof()
        assert tunnel.leftover + await read_all(tunnel.stream) == b"v6"
    refused = await relay.open(session, "::2", port)
    assert refused.reply.status == ConnectStatus.NOT_ALLOWED


async def test_a_target_that_does_not_answer_times_out(nursery, relay, make_agent):
    # A listener whose accept queue is full: the agent's SYN goes unanswered.
    with socket.socket() as blackhole, socket.socket() as filler:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(0)
        port = blackhole.getsockname()[1]
        filler.connect(("127.0.0.1", port))
        session = await start(nursery, relay, make_agent(connect_timeout=0.5))
        tunnel = await relay.open(session, "127.0.0.1", port)
    assert tunnel.reply.status == ConnectStatus.TIMEOUT
    assert tunnel.reply.message == f"Connection timed out: 127.0.0.1:{port}"


async def test_dial_slots_count_a_turn_taken_after_the_last_slot_came_back(nursery):
    slots = _DialSlots(2)
    key = ("127.0.0.1", 5432)
    assert slots.try_take(key) and slots.try_take(key)
    assert not slots.try_take(key)

    async def wait_for_a_turn() -> None:
        await slots.take(key)

    nursery.start_soon(wait_for_a_turn)
    await trio.testing.wait_all_tasks_blocked()
    slots.give_back(key)  # wakes the waiter, which has not run yet
    slots.give_back(key)  # the last slot in use came back
    await trio.testing.wait_all_tasks_blocked()
    slots.give_back(key)  # the waiter's
    assert slots.try_take(key) and slots.try_take(key)
    assert not slots.try_take(key)


async def test_a_request_in_pieces_is_read_to_its_end(nursery, relay, make_agent):
    port = await serve(nursery, echo)
    session = await start(nursery, relay, make_agent())
    stream = await session.open_stream()
    request = encode_connect_request(ConnectRequest("127.0.0.1", port))
    await stream.send_all(request[:3])
    await trio.sleep(0.05)  # the agent has read the first piece
    await stream.send_all(request[3:] + b"early")
    await stream.send_eof()
    reply = await read_all(stream)
    assert reply.startswith(bytes([ConnectStatus.OK]))
    assert reply.endswith(b"early")


async def test_bad_request_is_answered_and_the_session_goes_on(nursery, relay, make_agent, caplog):
    port = await serve(nursery, echo)
    session = await start(nursery, relay, make_agent())
    stream = await session.open_stream()
    await stream.send_all(b"\x09garbage")
    reply = await read_all(stream)
    assert reply[0] == ConnectStatus.BAD_REQUEST
    assert b"unsupported connect request version 9" in reply
    assert (await relay.open(session, "127.0.0.1", port)).reply.status == ConnectStatus.OK


async def test_relay_reset_aborts_the_target(nursery, relay, make_agent):
    closed = trio.Event()

    async def wait_for_close(stream):
        try:
            await read_all(stream)
        except trio.BrokenResourceError:
            pass
        closed.set()

    port = await serve(nursery, wait_for_close)
    session = await start(nursery, relay, make_agent())
    tunnel = await relay.open(session, "127.0.0.1", port)
    tunnel.stream.reset()
    await closed.wait()


async def test_target_reset_resets_the_stream(nursery, relay, make_agent):
    async def reset(stream):
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        await stream.receive_some()
        await stream.aclose()

    port = await serve(nursery, reset)
    session = await start(nursery, relay, make_agent())
    tunnel = await relay.open(session, "127.0.0.1", port)
    await tunnel.stream.send_all(b"x")
    with pytest.raises(trio.BrokenResourceError):
        await read_all(tunnel.stream)


async def test_many_concurrent_streams(nursery, relay, make_agent):
    port = await serve(nursery, echo)
    session = await start(nursery, relay, make_agent())

    async def one(i):
        tunnel = await relay.open(session, "127.0.0.1", port)
        payload = os.urandom(1000 + i * 100)
        await tunnel.stream.send_all(payload)
        await tunnel.stream.send_eof()
        assert tunnel.leftover + await read_all(tunnel.stream) == payload

    async with trio.open_nursery() as streams:
        for i in range(100):
            streams.start_soon(one, i)


async def test_wrong_secret(nursery, relay, make_agent):
    with pytest.raises(AuthenticationFailed) as info:
        await nursery.start(make_agent(secret="wrong-secret").run)
    assert str(info.value) == "Relay rejected the bridge credentials: invalid bridge credentials"
    assert info.value.status == WelcomeStatus.AUTH_FAILED


@pytest.mark.parametrize(
    "welcome, error, text",
    [
        (Welcome(WelcomeStatus.BUSY, "try later"), RelayUnavailable, "BUSY"),
        (Welcome(WelcomeStatus.INTERNAL_ERROR, "oops"), RelayUnavailable, "INTERNAL_ERROR"),
        (
            Welcome(WelcomeStatus.UNSUPPORTED_VERSION, "v3 only", version=3),
            RelayRejected,
            "version 3, this agent versions 1, 2",
        ),
        # The relay names a version this agent speaks too: retried, never a reason to stop.
        (
            Welcome(WelcomeStatus.UNSUPPORTED_VERSION, "odd", version=1),
            RelayUnavailable,
            "yet speaks version 1",
        ),
        (Welcome(WelcomeStatus.MALFORMED, "bad"), RelayRejected, "MALFORMED"),
        (Welcome(WelcomeStatus.OK, "", version=3), RelayRejected, "version 3"),
    ],
)
async def test_relay_refusals(nursery, relay, make_agent, welcome, error, text):
    relay.welcome = lambda hello: welcome
    with pytest.raises(error, match=text):
        await nursery.start(make_agent().run_session)


async def test_fingerprint_pin(nursery, relay, make_agent, certificates):
    pinned = client_ssl_context(fingerprint=certificate_fingerprint(certificates.cert_der))
    await start(nursery, relay, make_agent(ssl_context=pinned))


async def test_wrong_pin_never_sends_the_secret(nursery, relay, make_agent):
    pinned = client_ssl_context(fingerprint="sha256:" + "00" * 32)
    with pytest.raises(RelayUnavailable) as info:
        await nursery.start(make_agent(ssl_context=pinned).run_session)
    prefix = f"Refusing the relay at 127.0.0.1:{relay.port}: relay certificate sha256:"
    assert str(info.value).startswith(prefix)
    assert str(info.value).endswith("does not match the pinned sha256:" + "00" * 32)
    assert relay.connections == 1 and relay.hellos == []


async def test_untrusted_relay_certificate(nursery, relay, make_agent):
    with pytest.raises(
        RelayUnavailable, match="TLS handshake with the relay at 127.0.0.1:.* failed"
    ):
        await nursery.start(make_agent(ssl_context=client_ssl_context()).run_session)
    assert relay.hellos == []


async def test_relay_not_listening(make_agent):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    agent = Agent(f"tls://127.0.0.1:{port}", BRIDGE_ID, SECRET, ["db:1"], client_ssl_context())
    with pytest.raises(RelayUnavailable, match=f"Cannot connect to the relay at 127.0.0.1:{port}"):
        await agent.run_session()


async def test_session_end_is_reported(nursery, relay, make_agent, caplog):
    done = trio.Event()
    errors = []

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        try:
            await make_agent().run_session(task_status=task_status)
        except RelayUnavailable as exc:
            errors.append(exc)
        done.set()

    await nursery.start(run)
    session = await relay.next_session()
    await session.aclose()
    await done.wait()
    assert "Disconnected from the relay" in caplog.text


async def test_secret_never_logged_nor_in_reprs(nursery, relay, make_agent, caplog):
    caplog.set_level(logging.DEBUG)
    port = await serve(nursery, echo)
    agent = make_agent()
    session = await start(nursery, relay, agent)
    await relay.open(session, "127.0.0.1", port)
    await relay.open(session, "127.0.0.1", 1)
    with pytest.raises(AuthenticationFailed):
        await nursery.start(make_agent(secret=SECRET + "x").run)
    assert SECRET not in caplog.text
    assert SECRET not in repr(agent) and SECRET not in repr(agent.__dict__.get("_hello"))


def test_agent_arguments():
    context = client_ssl_context()
    with pytest.raises(ValueError, match="allow-list is empty"):
        Agent("tls://relay", BRIDGE_ID, SECRET, [], context)
    agent = Agent("wss://relay", BRIDGE_ID, SECRET, ["db:1"], context, proxy="proxy:3128")
    assert str(agent.relay_url) == "wss://relay:443/bridge"
    assert str(agent.proxy) == "http://proxy:3128"
    with pytest.raises(ValueError, match="invalid relay URL 'tls://relay/bridge'"):
        Agent("tls://relay/bridge", BRIDGE_ID, SECRET, ["db:1"], context)
    with pytest.raises(ValueError, match="invalid allow-list entry"):
        Agent("tls://relay", BRIDGE_ID, SECRET, ["db"], context)
    agent = Agent("tls://relay", BRIDGE_ID, SECRET, AllowList.any(), context)
    assert agent.relay_url.port == 4000


# -- HTTP proxy and WebSocket -------------------------------------------------------------


async def test_tls_through_a_proxy(nursery, relay, certificates, caplog):
    caplog.set_level(logging.DEBUG)
    proxy = ConnectProxy(username="me", password="pr0xy-pass")
    await nursery.start(proxy.serve)
    port = await serve(nursery, echo)
    context = client_ssl_context(ca_file=certificates.ca_file)
    url = f"tls://localhost:{relay.port}"
    agent = Agent(url, BRIDGE_ID, SECRET, ["127.0.0.1:*"], context, proxy=proxy.url)
    session = await start(nursery, relay, agent)
    tunnel = await relay.open(session, "127.0.0.1", port, b"ping")
    assert tunnel.leftover + await tunnel.stream.receive_some() == b"ping"
    assert proxy.tunnels == 1 and proxy.requests[0][0] == f"localhost:{relay.port}"
    connecting = next(r for r in caplog.records if r.getMessage() == "Connecting to the relay")
    assert connecting.fields["proxy"] == f"127.0.0.1:{proxy.port}"
    assert "pr0xy-pass" not in caplog.text and "pr0xy-pass" not in repr(agent.__dict__)


async def test_proxy_refusal(nursery, relay):
    proxy = ConnectProxy(username="me", password="pr0xy-pass")
    await nursery.start(proxy.serve)
    url = f"tls://127.0.0.1:{relay.port}"
    proxy_url = f"127.0.0.1:{proxy.port}"  # no credentials
    agent = Agent(url, BRIDGE_ID, SECRET, ["db:1"], client_ssl_context(), proxy=proxy_url)
    with pytest.raises(RelayUnavailable) as info:
        await agent.run_session()
    assert str(info.value) == (
        f"Cannot connect to the relay at 127.0.0.1:{relay.port}: "
        f"proxy 127.0.0.1:{proxy.port} refused CONNECT 127.0.0.1:{relay.port}: "
        "407 Proxy Authentication Required "
        "(give credentials in the proxy URL: http://USER:PASSWORD@HOST:PORT)"
    )
    assert relay.connections == 0


@pytest.fixture
async def ws_relay(nursery, certificates):
    """A real relay taking agents over WebSocket: (relay, its port, bridge ID, secret)."""
    store = MemoryStore()
    bridge_id, secret = store.create_bridge("office", cost=4)
    relay = Relay(store, certificates.server_context(), config=RelayConfig(bcrypt_cost=4))
    listeners = await nursery.start(relay.serve_websocket, "127.0.0.1", 0)
    return relay, listeners[0].socket.getsockname()[1], bridge_id, secret


async def test_websocket_through_a_proxy(nursery, ws_relay, certificates, caplog):
    relay, port, bridge_id, secret = ws_relay
    proxy = ConnectProxy(username="me", password="pr0xy-pass")
    await nursery.start(proxy.serve)
    target = await serve(nursery, echo)
    context = client_ssl_context(ca_file=certificates.ca_file)
    url = f"wss://localhost:{port}/bridge"
    agent = Agent(url, bridge_id, secret, ["127.0.0.1:*"], context, proxy=proxy.url)
    await nursery.start(agent.run)
    payload = os.urandom(2 * 1024 * 1024)
    async with await relay.connect("office", "127.0.0.1", target) as tunnel:

        async def send():
            await tunnel.send_all(payload)
            await tunnel.send_eof()

        nursery.start_soon(send)
        assert hashlib.sha256(await read_all(tunnel)).digest() == hashlib.sha256(payload).digest()
    assert proxy.tunnels == 1
    assert secret not in caplog.text and "pr0xy-pass" not in caplog.text


async def test_websocket_refusals(nursery, ws_relay, certificates):
    relay, port, bridge_id, secret = ws_relay
    context = client_ssl_context(ca_file=certificates.ca_file)
    agent = Agent(f"wss://localhost:{port}/other", bridge_id, secret, ["db:1"], context)
    with pytest.raises(RelayUnavailable) as info:
        await agent.run_session()
    assert str(info.value) == (
        f"Cannot connect to the relay at wss://localhost:{port}/other: "
        "WebSocket upgrade to /other refused: 404 Not Found"
    )
    listeners = await nursery.start(relay.serve, "127.0.0.1", 0)  # plain TLS, not WebSocket
    tls_port = listeners[0].socket.getsockname()[1]
    agent = Agent(f"wss://localhost:{tls_port}", bridge_id, secret, ["db:1"], context)
    with pytest.raises(RelayUnavailable, match="closed during the WebSocket upgrade to /bridge"):
        await agent.run_session()
    agent = Agent(f"wss://localhost:{port}", bridge_id, secret + "x", ["db:1"], context)
    with pytest.raises(AuthenticationFailed):
        await agent.run()


async def never_answer(stream, peer) -> None:
    """A WebSocket agent handler that never answers the agent's handshake."""
    await trio.sleep_forever()


async def silent_websocket_relay(nursery, certificates) -> str:
    """A WebSocket listener that upgrades connections and then says nothing; its wss:// URL."""
    listeners = await nursery.start(
        serve_websocket_agents,
        never_answer,
        "127.0.0.1",
        0,
        certificates.server_context(),
    )
    return f"wss://localhost:{listeners[0].socket.getsockname()[1]}"


async def test_websocket_handshake_timeout(nursery, certificates):
    url = await silent_websocket_relay(nursery, certificates)
    context = client_ssl_context(ca_file=certificates.ca_file)
    agent = Agent(
        url, BRIDGE_ID, SECRET, ["db:1"], context, config=AgentConfig(handshake_timeout=0.2)
    )
    with pytest.raises(RelayUnavailable, match="did not finish the handshake in time"):
        await agent.run_session()


async def test_drain_while_connecting_over_websocket(nursery, certificates):
    url = await silent_websocket_relay(nursery, certificates)
    agent = Agent(
        url, BRIDGE_ID, SECRET, ["db:1"], client_ssl_context(ca_file=certificates.ca_file)
    )
    async with trio.open_nursery() as inner:
        inner.start_soon(agent.run)
        await trio.testing.wait_all_tasks_blocked()
        agent.drain()
    assert agent.sessions == 0


# -- trust failures: a configuration error at first, retried once the agent has worked -------


async def test_a_wrong_pin_before_any_session_is_a_configuration_error(relay, make_agent):
    pinned = client_ssl_context(fingerprint="sha256:" + "00" * 32)
    with trio.fail_after(10), pytest.raises(RelayNotTrusted, match="does not match the pinned"):
        await make_agent(ssl_context=pinned).run()
    assert relay.hellos == []  # the secret never left


async def test_a_trust_failure_after_a_session_is_retried(
    nursery, relay, make_agent, tmp_path, caplog
):
    agent = make_agent(max_backoff=0.2)
    await nursery.start(agent.run)
    session = await relay.next_session()
    (other := tmp_path / "other").mkdir()
    relay.context = make_certificates(other).server_context()  # a new certificate
    await session.aclose()

    def untrusted():
        return [
            r
            for r in caplog.records
            if r.levelno == logging.ERROR and "trust the relay with" in r.fields.get("reason", "")
        ]

    with trio.fail_after(10):
        while len(untrusted()) < 2:  # retried, with backoff
            await trio.sleep(0.02)
    assert not agent.draining and agent.sessions == 1  # still trying, not stopped
    agent.drain()
