# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The relay's limits (pending connections, failed logins, per-bridge streams), several agents
per bridge, and draining, in process on loopback."""

import logging

import pytest
import trio

import mux
from bridge.protocol.connect import ConnectReply, ConnectStatus, encode_connect_reply
from bridge.protocol.handshake import Hello, WelcomeParser, WelcomeStatus, encode_hello
from relay import BridgeBusy, MemoryStore, RelayShuttingDown, TargetUnreachable, credentials
from relay.limits import LoginLimiter, Repeats, source_of

from ..settle import settled
from .relay_support import RelayHarness, receive_all, run_scripted_agent

TIME_LIMIT = 20


@pytest.fixture
def relay_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="relay")
    return caplog


def messages(caplog, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("relay") and text in r.getMessage()]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- bookkeeping ---------------------------------------------------------------------------------


def test_sources_are_ipv4_addresses_and_ipv6_prefixes():
    assert source_of("203.0.113.7:5123") == "203.0.113.7"
    assert source_of("[2001:db8:1:2:3:4:5:6]:443") == "2001:db8:1:2::/64"
    assert source_of("[::ffff:203.0.113.7]:1") == "203.0.113.7"
    assert source_of("[fe80::1%eth0]:4000") == "fe80::/64"


def test_login_limiter_is_a_token_bucket_in_a_bounded_lru():
    clock = Clock()
    limiter = LoginLimiter(6, 2, clock=clock)  # 6 per minute: one more every 10 s
    assert [limiter.charge("a") for _ in range(7)] == [True] * 6 + [False]  # charged up front
    assert not limiter.allows("a")
    limiter.refund("a")  # a login that succeeded costs nothing
    assert limiter.charge("a") and not limiter.allows("a")
    assert [limiter.failed("a") for _ in range(6)] == [False] * 6  # logged in the summary
    clock.now += 10
    assert limiter.allows("a") and limiter.charge("a") and not limiter.allows("a")
    assert limiter.summaries(60) == []  # its window has not ended yet
    clock.now += 51
    assert limiter.summaries(60) == [("a", 7, 61)]  # one refusal, six failures
    assert limiter.summaries(60) == []
    limiter.failed("b")
    limiter.failed("c")
    assert len(limiter) == 2 and limiter.allows("a")  # forgotten: a full bucket again


def test_repeats_log_the_first_and_sum_up_the_rest():
    clock = Clock()
    repeats = Repeats(10, clock=clock)
    assert repeats.note("x") and not repeats.note("x") and not repeats.note("x")
    assert repeats.note("y")
    clock.now += 10
    assert repeats.summaries() == [("x", 2, 10)]
    assert repeats.note("x")


# -- agents --------------------------------------------------------------------------------------


async def login(harness: RelayHarness, bridge_id: str, secret: str) -> WelcomeStatus:
    tcp = await trio.open_tcp_stream("127.0.0.1", harness.port)
    async with trio.SSLStream(tcp, harness.cert_files.client_context()) as tls:
        await tls.send_all(encode_hello(Hello(bridge_id, secret)))
        parser = WelcomeParser()
        while (welcome := parser.feed(await tls.receive_some())) is None:
            pass
        return welcome.status


async def closed_by_relay(stream: trio.SocketStream) -> bool:
    """Reads until the relay closes the connection (EOF, or a reset)."""
    try:
        while await stream.receive_some():
            pass
    except trio.BrokenResourceError:
        pass
    return True


async def test_failed_logins_are_limited_per_source(nursery, cert_files, relay_logs, monkeypatch):
    checks = []
    real_checkpw = credentials._checkpw
    monkeypatch.setattr(
        credentials, "_checkpw", lambda *args: checks.append(1) or real_checkpw(*args)
    )
    harness = await RelayHarness(
        nursery, MemoryStore(), cert_files, auth_failures_per_minute=3, log_interval=0.5
    ).start()
    bridge_id, secret = harness.create_bridge("prod")
    unknown = "4b3c4ef2-0c52-4e8a-9d0c-1d6f3c7e2a11"
    with trio.fail_after(TIME_LIMIT):
        assert await login(harness, bridge_id, secret) == WelcomeStatus.OK
        for _ in range(3):
            assert await login(harness, bridge_id, "wrong") == WelcomeStatus.AUTH_FAILED
        checked = len(checks)
        for bad_id, bad_secret in [(bridge_id, "wrong"), (unknown, secret), (bridge_id, "x")]:
            assert await login(harness, bad_id, bad_secret) == WelcomeStatus.BUSY
        assert len(checks) == checked  # refused without bcrypt
        # Credentials verified before still get in from the same address.
        assert await login(harness, bridge_id, secret) == WelcomeStatus.OK
        await settled(lambda: messages(relay_logs, "Authentication failures from 127.0.0.1"))
    [summary] = messages(relay_logs, "Authentication failures from 127.0.0.1")
    assert summary.getMessage().startswith("Authentication failures from 127.0.0.1: 6 in the last")
    assert len(messages(relay_logs, "Authentication failed")) == 3
    assert secret not in relay_logs.text


async def test_pending_connections_are_bounded_and_timed_out(
    nursery, cert_files, relay_logs, echo_port
):
    harness = await RelayHarness(
        nursery, MemoryStore(), cert_files, max_pending=3, handshake_timeout=1.0
    ).start()
    bridge_id, secret = harness.create_bridge("prod")
    with trio.fail_after(TIME_LIMIT):
        stalled = []
        for _ in range(3):  # the start of a TLS record, then nothing
            stalled.append(tcp := await trio.open_tcp_stream("127.0.0.1", harness.port))
            await tcp.send_all(b"\x16\x03\x01")
        await settled(lambda: harness.relay.pending == 3)
        extra = await trio.open_tcp_stream("127.0.0.1", harness.port)
        assert await closed_by_relay(extra)
        # Closed while the three are still pending: they are dropped at the deadline only.
        assert harness.relay.pending == 3
        for tcp in stalled:
            assert await closed_by_relay(tcp)
        await harness.start_agent(bridge_id, secret, [f"127.0.0.1:{echo_port}"])
    assert len(messages(relay_logs, "Too many connections awaiting authentication")) == 1
    dropped = [
        r
        for r in messages(relay_logs, "Connection dropped")
        if r.fields["reason"] == "handshake timed out"
    ]
    assert len(dropped) == 3


async def test_per_bridge_limits_refuse_clearly(nursery, cert_files, echo_port, relay_logs):
    harness = await RelayHarness(
        nursery, MemoryStore(), cert_files, max_streams_per_bridge=3, connect_timeout=1.0
    ).start()
    bridge_id, secret = harness.create_bridge("prod")
    with trio.fail_after(TIME_LIMIT):
        await harness.start_agent(bridge_id, secret, [f"127.0.0.1:{echo_port}"])
        streams = [await harness.relay.connect("prod", "127.0.0.1", echo_port) for _ in range(3)]
        for _ in range(2):
            with pytest.raises(BridgeBusy, match="^Bridge prod: 3 streams open, the limit$"):
                await harness.relay.connect("prod", "127.0.0.1", echo_port)
        await streams[0].send_eof()
        assert await receive_all(streams[0]) == b""
        await streams[0].aclose()
        await settled(lambda: harness.relay.registry.open_streams("prod") < 3)
        await (await harness.relay.connect("prod", "127.0.0.1", echo_port)).aclose()
    assert len(messages(relay_logs, "Tunnel refused")) == 1  # once per burst


async def test_opens_beyond_the_pending_limit_wait_their_turn_and_all_succeed(nursery, cert_files):
    harness = await RelayHarness(
        nursery, MemoryStore(), cert_files, max_pending_opens=2, connect_timeout=15.0
    ).start()
    bridge_id, secret = harness.create_bridge("burst")
    releases = {f"host{index}": trio.Event() for index in range(5)}
    asked: list[str] = []

    async def answer_when_released(stream, request, session):
        asked.append(request.host)
        await releases[request.host].wait()
        await ok_then_echo(stream, request, session)

    with trio.fail_after(TIME_LIMIT):
        await nursery.start(
            run_scripted_agent,
            harness.port,
            harness.cert_files.client_context(),
            bridge_id,
            secret,
            answer_when_released,
        )
        slots = harness.relay.open_slots
        echoed: dict[int, bytes] = {}

        async def open_and_echo(index: int) -> None:
            stream = await harness.relay.connect("burst", f"host{index}", 5432)
            async with stream:
                await stream.send_all(b"hello %d" % index)
                await stream.send_eof()
                echoed[index] = await receive_all(stream)

        async with trio.open_nursery() as opens:
            for index in range(5):
                opens.start_soon(open_and_echo, index)
                # One at a time, so that the order they queue in is known.
                await settled(
                    lambda count=index + 1: (
                        slots.held(bridge_id) + slots.waiting(bridge_id) == count
                    )
                )
            assert (slots.held(bridge_id), slots.waiting(bridge_id)) == (2, 3)
            await settled(lambda: len(asked) == 2)
            assert sorted(asked) == ["host0", "host1"]  # the others wait, unrefused
            for answered in range(5):
                # Each answer hands its slot to the open that has waited longest.
                releases[f"host{answered}"].set()
                await settled(lambda count=min(5, answered + 3): len(asked) == count)
        assert echoed == {index: b"hello %d" % index for index in range(5)}
        assert asked[2:] == ["host2", "host3", "host4"]  # first come, first served
        assert slots.held(bridge_id) == 0 and not slots.full(bridge_id)


async def test_an_open_waiting_for_a_slot_is_refused_only_at_its_deadline(nursery, cert_files):
    harness = await RelayHarness(
        nursery, MemoryStore(), cert_files, max_pending_opens=1, connect_timeout=1.0
    ).start()
    bridge_id, secret = harness.create_bridge("slow")

    async def never_answer(stream, request, session):
        await trio.sleep_forever()

    with trio.fail_after(TIME_LIMIT):
        await nursery.start(
            run_scripted_agent,
            harness.port,
            harness.cert_files.client_context(),
            bridge_id,
            secret,
            never_answer,
        )
        slots = harness.relay.open_slots
        outcomes: dict[str, str] = {}

        async def opening(name: str) -> None:
            try:
                await harness.relay.connect("slow", "db", 5432)
            except (TargetUnreachable, BridgeBusy) as exc:
                outcomes[name] = str(exc)

        async with trio.open_nursery() as opens:
            opens.start_soon(opening, "holder")
            await settled(lambda: slots.held(bridge_id) == 1)
            opens.start_soon(opening, "next")
            await settled(lambda: slots.waiting(bridge_id) == 1)
            # Both wait behind the holder: the slot cannot reach both within their deadlines
            # (one connect_timeout each), since each holder keeps it up to one.
            opens.start_soon(opening, "last")
            await settled(lambda: slots.waiting(bridge_id) == 2)  # waiting, not refused
        no_answer = "No answer from bridge slow about db:5432 within 1 s"
        no_slot = (
            "Bridge slow: no slot for a new connection within 1 s "
            "(1 waiting for the agent's answer)"
        )
        assert outcomes["holder"].startswith(no_answer)
        # Which of the two gets the slot in time depends on the scheduler; one cannot.
        waited = [outcomes["next"], outcomes["last"]]
        assert no_slot in waited
        assert all(outcome == no_slot or outcome.startswith(no_answer) for outcome in waited)
        assert slots.held(bridge_id) == 0 and not slots.full(bridge_id)


# -- several agents per bridge -------------------------------------------------------------------


async def ok_then_echo(stream, request, session):
    reply = ConnectReply(ConnectStatus.OK, f"10.0.0.1:{request.port}")
    await stream.send_all(encode_connect_reply(reply))
    await stream.send_all(await receive_all(stream))
    await stream.send_eof()


@pytest.mark.parametrize("failure", ["session lost", "stream reset", "goaway"])
async def test_an_open_the_agent_never_answered_moves_to_another_agent(
    nursery, cert_files, failure
):
    harness = await RelayHarness(nursery, MemoryStore(), cert_files).start()
    bridge_id, secret = harness.create_bridge("ha")
    requests = []

    async def failing(stream, request, session):
        requests.append(request)
        if failure == "session lost":
            await session.aclose()
        else:
            stream.reset()

    context = harness.cert_files.client_context()
    with trio.fail_after(TIME_LIMIT):
        first = await nursery.start(
            run_scripted_agent, harness.port, context, bridge_id, secret, failing
        )
        if failure == "goaway":
            await first.go_away()
        await nursery.start(
            run_scripted_agent, harness.port, context, bridge_id, secret, ok_then_echo
        )
        for i in range(3):
            stream = await harness.relay.connect("ha", "db", 5432)
            await stream.send_all(b"payload %d" % i)
            await stream.send_eof()
            assert await receive_all(stream) == b"payload %d" % i
            await stream.aclose()
    # A lost session is gone; one that resets is tried first again (its load is lowest).
    assert len(requests) == {"session lost": 1, "stream reset": 3, "goaway": 0}[failure]


async def test_short_connections_are_spread_over_the_agents(harness, echo_port):
    bridge_id, secret = harness.create_bridge("ha")
    allow = [f"127.0.0.1:{echo_port}"]
    with trio.fail_after(TIME_LIMIT):
        for _ in range(2):
            await harness.start_agent(bridge_id, secret, allow)
        for _ in range(10):
            await harness.relay.probe("ha", "127.0.0.1", echo_port)
    sessions = harness.relay.registry.sessions("ha")
    # Each opened its control stream, then 5 tunnels.
    assert [s.mux.statistics().streams_opened_total for s in sessions] == [6, 6]


# -- draining ------------------------------------------------------------------------------------


async def test_drain_stops_accepting_and_waits_for_open_streams(harness, echo_port, relay_logs):
    bridge_id, secret = harness.create_bridge("prod")
    with trio.fail_after(TIME_LIMIT):
        await harness.start_agent(bridge_id, secret, [f"127.0.0.1:{echo_port}"])
        stream = await harness.relay.connect("prod", "127.0.0.1", echo_port)
        drained = trio.Event()

        async def drain():
            await harness.relay.drain()
            drained.set()

        harness.nursery.start_soon(drain)
        await trio.sleep(0.1)
        with pytest.raises(RelayShuttingDown):
            await harness.relay.connect("prod", "127.0.0.1", echo_port)
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", harness.port)
        assert not drained.is_set()
        await stream.send_all(b"still served")
        await stream.send_eof()
        assert await receive_all(stream) == b"still served"
        await stream.aclose()
        await drained.wait()
        # The agent was told to move: with no other node to go to, it let the session go
        # itself once its stream was done (an older agent's session would stay, for the
        # caller to close).
        assert not harness.relay.is_connected("prod")


async def test_an_agent_that_stops_answering_is_dropped_by_keepalive(
    nursery, cert_files, relay_logs
):
    harness = await RelayHarness(
        nursery,
        MemoryStore(),
        cert_files,
        mux=mux.Config(keepalive_interval=0.2, ping_timeout=0.2),
    ).start()
    bridge_id, secret = harness.create_bridge("prod")
    with trio.fail_after(TIME_LIMIT):
        tcp = await trio.open_tcp_stream("127.0.0.1", harness.port)
        async with trio.SSLStream(tcp, harness.cert_files.client_context()) as frozen:
            await frozen.send_all(encode_hello(Hello(bridge_id, secret)))  # then reads nothing
            await harness.wait_sessions("prod", 1)
            await harness.wait_sessions("prod", 0)
    [gone] = messages(relay_logs, "Bridge disconnected")
    assert gone.levelno == logging.WARNING and "keepalive" in gone.fields["reason"]
