# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The relay against a hand-written agent that answers connect requests however it is told."""

import pytest
import trio

from bridge.protocol.connect import (
    ConnectReply,
    ConnectStatus,
    encode_connect_reply,
)
from relay import MemoryStore, TargetUnreachable, TunnelError

from .relay_support import RelayHarness, receive_all, run_scripted_agent

TIME_LIMIT = 20


@pytest.fixture
async def scripted(nursery, cert_files):
    """Starts a relay (short connect timeout) and a scripted agent answering with `answer`."""

    async def start(answer):
        harness = RelayHarness(nursery, MemoryStore(), cert_files, connect_timeout=0.5)
        await harness.start()
        bridge_id, secret = harness.create_bridge("scripted")
        client_context = harness.cert_files.client_context()
        await nursery.start(
            run_scripted_agent,
            harness.port,
            client_context,
            bridge_id,
            secret,
            lambda stream, request, session: answer(stream, request),
        )
        return harness.relay

    return start


async def test_reply_and_first_target_bytes_in_one_frame(scripted):
    async def answer(stream, request):
        reply = encode_connect_reply(ConnectReply(ConnectStatus.OK, f"10.0.0.7:{request.port}"))
        await stream.send_all(reply + b"* OK ready\r\n")
        await stream.send_all(await receive_all(stream))
        await stream.send_eof()

    with trio.fail_after(TIME_LIMIT):
        relay = await scripted(answer)
        assert await relay.probe("scripted", "imap", 143) == "10.0.0.7:143"
        stream = await relay.connect("scripted", "imap", 143)
        first = await stream.receive_some()
        assert first == b"* OK ready\r\n"
        await stream.send_all(b"a LOGOUT\r\n")
        await stream.send_eof()
        assert await receive_all(stream) == b"a LOGOUT\r\n"


@pytest.mark.parametrize(
    "behaviour, error, message",
    [
        ("garbage", TunnelError, "sent an invalid reply"),
        ("eof", TunnelError, "without answering"),
        ("reset", TunnelError, "reset the connection to db:5432"),
        ("silence", TargetUnreachable, "No answer from bridge scripted about db:5432"),
        ("dns", TargetUnreachable, "DNS lookup failed for db"),
        ("bad_request", TunnelError, "Bad connect request"),
    ],
)
async def test_agent_failures_become_errors(scripted, behaviour, error, message):
    async def answer(stream, request):
        if behaviour == "garbage":
            await stream.send_all(b"\x63\x00\x00")
        elif behaviour == "eof":
            await stream.send_eof()
        elif behaviour == "reset":
            stream.reset()
        elif behaviour == "silence":
            await trio.sleep_forever()
        elif behaviour == "dns":
            reply = ConnectReply(ConnectStatus.DNS_FAILURE, "DNS lookup failed for db")
            await stream.send_all(encode_connect_reply(reply))
        else:
            reply = ConnectReply(ConnectStatus.BAD_REQUEST, "Bad connect request")
            await stream.send_all(encode_connect_reply(reply))

    with trio.fail_after(TIME_LIMIT):
        relay = await scripted(answer)
        with pytest.raises(error, match=message):
            await relay.connect("scripted", "db", 5432)
        assert relay.is_connected("scripted")
