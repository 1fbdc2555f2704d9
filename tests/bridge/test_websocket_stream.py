# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from functools import partial

import pytest
import trio
import trio.testing
import trio_websocket

import mux
from bridge.protocol.connect import (
    ConnectReply,
    ConnectRequestParser,
    ConnectStatus,
    encode_connect_reply,
)
from bridge.protocol.handshake import Hello, WelcomeParser, WelcomeStatus, encode_hello
from bridge.transport.http_proxy import ProxyURL
from bridge.transport.prefixed_stream import PrefixedStream
from bridge.transport.tls import FingerprintMismatch, certificate_fingerprint, client_ssl_context
from bridge.transport.tls_stream import TLSStream
from bridge.transport.websocket import (
    WebSocketConfig,
    WebSocketError,
    WebSocketStream,
    open_websocket_stream,
    serve_websocket_agents,
)
from relay import MemoryStore, Relay, RelayConfig

from .bridge_support import clog, echo, serve, tls_socketpair
from .connect_proxy import ConnectProxy


@pytest.fixture
def client_context(certificates):
    return client_ssl_context(ca_file=certificates.ca_file)


class Server:
    """serve_websocket_agents on 127.0.0.1, handing each (stream, peer) to the test."""

    def __init__(self) -> None:
        self.port = 0
        self._send, self._receive = trio.open_memory_channel[tuple[WebSocketStream, str]](100)

    async def start(self, nursery: trio.Nursery, certificates, handler=None) -> Server:
        listeners = await nursery.start(
            serve_websocket_agents,
            handler or self._hand_over,
            "127.0.0.1",
            0,
            certificates.server_context(),
        )
        self.port = listeners[0].socket.getsockname()[1]
        return self

    def url(self, path: str = "/bridge") -> str:
        return f"wss://localhost:{self.port}{path}"

    async def _hand_over(self, stream: WebSocketStream, peer: str) -> None:
        await self._send.send((stream, peer))
        await trio.sleep_forever()  # the stream stays open until the test is done with it

    async def accepted(self) -> tuple[WebSocketStream, str]:
        return await self._receive.receive()


@pytest.fixture
async def server(nursery, certificates) -> Server:
    return await Server().start(nursery, certificates)


async def test_passes_trios_two_way_stream_checks(server, client_context) -> None:
    async with contextlib.AsyncExitStack() as clients:

        async def make_pair() -> tuple[WebSocketStream, WebSocketStream]:
            client = await clients.enter_async_context(
                open_websocket_stream(server.url(), client_context)
            )
            accepted, _ = await server.accepted()
            return client, accepted

        await trio.testing.check_two_way_stream(make_pair, None)


async def test_passes_trios_clogged_stream_checks(nursery, certificates) -> None:
    """WebSocket streams over TLS over a Unix socket pair, each direction clogged at a message
    boundary: `wait_send_all_might_not_block` waits for the peer, closing wakes a blocked send."""
    config = WebSocketConfig()

    async def make_pair(*, clogged: bool = False) -> tuple[WebSocketStream, WebSocketStream]:
        client_tls, server_tls, buffers = await tls_socketpair(certificates)
        sizes = config._sizes()
        accepted: list[WebSocketStream] = []

        async def accept() -> None:
            request = await trio_websocket.wrap_server_stream(nursery, server_tls, **sizes)
            connection = await request.accept()
            accepted.append(WebSocketStream(connection, server_tls, config=config))

        async with trio.open_nursery() as handshake:
            handshake.start_soon(accept)
            connection = await trio_websocket.wrap_client_stream(
                nursery, client_tls, "localhost", "/bridge", **sizes
            )
        client = WebSocketStream(connection, client_tls, config=config)
        server = accepted[0]
        if clogged:
            for stream, (fd, size) in zip((client, server), buffers):
                # One message per TLS record: its payload and frame header fit in one.
                await clog(partial(_send_one_message, stream), fd, size)
        return client, server

    with trio.fail_after(30):
        await trio.testing.check_two_way_stream(make_pair, partial(make_pair, clogged=True))


async def _send_one_message(stream: WebSocketStream, record: bytes) -> None:
    await stream.send_all(record[:16000])


async def test_large_writes_arrive_intact(server, client_context) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 7)  # 4 messages of at most 1 MiB
    expected = hashlib.sha256(payload).hexdigest()

    async def pump(sender: WebSocketStream, receiver: WebSocketStream) -> str:
        digest, received = hashlib.sha256(), 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.send_all, payload)
            while received < len(payload):
                chunk = await receiver.receive_some(65_536 + received % 3)  # pieces of messages
                digest.update(chunk)
                received += len(chunk)
        return digest.hexdigest()

    async with open_websocket_stream(server.url(), client_context) as client:
        accepted, _ = await server.accepted()
        assert await pump(client, accepted) == expected
        assert await pump(accepted, client) == expected
    small = WebSocketConfig(max_message_size=100_000, message_queue_size=1)
    async with open_websocket_stream(server.url(), client_context, config=small) as client:
        accepted, _ = await server.accepted()
        assert await pump(client, accepted) == expected


async def test_peer_closing_normally_is_eof(server, client_context) -> None:
    async with open_websocket_stream(server.url(), client_context) as client:
        accepted, peer = await server.accepted()
        assert peer.startswith("127.0.0.1:") and peer != f"127.0.0.1:{server.port}"
        await client.send_all(b"last words")
        await client.aclose()
        assert await accepted.receive_some() == b"last words"
        assert await accepted.receive_some() == b""
        assert await accepted.receive_some() == b""
        with pytest.raises(trio.BrokenResourceError, match="1000 NORMAL_CLOSURE"):
            await accepted.send_all(b"too late")


async def test_oversized_message_breaks_the_connection(server, client_context) -> None:
    async with open_websocket_stream(server.url(), client_context) as client:
        accepted, _ = await server.accepted()
        await client.connection.send_message(b"x" * (1024 * 1024 + 1))
        with pytest.raises(trio.BrokenResourceError, match="1009 MESSAGE_TOO_BIG"):
            await accepted.receive_some()


async def test_text_messages_are_refused(server, client_context) -> None:
    async with open_websocket_stream(server.url(), client_context) as client:
        accepted, _ = await server.accepted()
        await client.connection.send_message("text")
        with pytest.raises(trio.BrokenResourceError, match="text message"):
            await accepted.receive_some()


def dropped(caplog) -> list[str]:
    """The reasons of the server's "Connection dropped" lines."""
    return [r.fields["reason"] for r in caplog.records if r.getMessage() == "Connection dropped"]


async def test_other_paths_are_refused(server, client_context, caplog) -> None:
    caplog.set_level(logging.INFO, logger="bridge")
    with pytest.raises(WebSocketError) as caught:
        async with open_websocket_stream(server.url("/other"), client_context):
            pass  # pragma: no cover
    assert str(caught.value) == "WebSocket upgrade to /other refused: 404 Not Found"
    assert caught.value.status == 404
    await trio.testing.wait_all_tasks_blocked()
    assert dropped(caplog) == ["WebSocket upgrade to '/other' refused with 404"]
    async with open_websocket_stream(server.url("/bridge?v=1"), client_context):
        await server.accepted()


async def test_errors_leave_the_block_as_raised(server, client_context) -> None:
    with pytest.raises(KeyError):
        async with open_websocket_stream(server.url(), client_context):
            raise KeyError("from the body")


async def _tls_then_close(certificates, tcp: trio.SocketStream) -> None:
    async with TLSStream.wrap(tcp, certificates.server_context(), server_side=True) as tls:
        with contextlib.suppress(trio.BrokenResourceError):
            await tls.do_handshake()
            await tls.receive_some()


async def test_a_plain_tls_port_fails_the_upgrade_at_once(
    nursery, certificates, client_context
) -> None:
    port = await serve(nursery, partial(_tls_then_close, certificates))
    config = WebSocketConfig(handshake_timeout=600)
    with pytest.raises(WebSocketError, match="closed during the WebSocket upgrade to /bridge"):
        async with open_websocket_stream(f"wss://localhost:{port}", client_context, config=config):
            pass  # pragma: no cover


async def _tls_then_silence(certificates, tcp: trio.SocketStream) -> None:
    async with TLSStream.wrap(tcp, certificates.server_context(), server_side=True) as tls:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await tls.do_handshake()
            while await tls.receive_some():
                pass


async def test_upgrade_timeout(nursery, certificates, client_context) -> None:
    port = await serve(nursery, partial(_tls_then_silence, certificates))
    config = WebSocketConfig(handshake_timeout=0.2)
    expected = r"^no answer to the WebSocket upgrade to /bridge within 0\.2 s$"
    with pytest.raises(WebSocketError, match=expected):
        async with open_websocket_stream(f"wss://localhost:{port}", client_context, config=config):
            pass  # pragma: no cover


async def test_pinned_certificate(server, certificates) -> None:
    pinned = client_ssl_context(fingerprint=certificate_fingerprint(certificates.cert_der))
    async with open_websocket_stream(f"wss://127.0.0.1:{server.port}/bridge", pinned) as client:
        accepted, _ = await server.accepted()
        await client.send_all(b"pinned")
        assert await accepted.receive_some() == b"pinned"
    wrong = client_ssl_context(fingerprint="sha256:" + "00" * 32)
    with pytest.raises(FingerprintMismatch):
        async with open_websocket_stream(server.url(), wrong):
            pass  # pragma: no cover


async def test_untrusted_certificate_fails_tls(server, caplog) -> None:
    caplog.set_level(logging.INFO, logger="bridge")
    with pytest.raises(trio.BrokenResourceError, match="CERTIFICATE_VERIFY_FAILED"):
        async with open_websocket_stream(server.url(), client_ssl_context()):
            pass  # pragma: no cover
    await trio.testing.wait_all_tasks_blocked()
    assert dropped(caplog) == ["TLS error: TLSV1_ALERT_UNKNOWN_CA"]


async def test_websocket_urls_are_checked(client_context) -> None:
    for url in ("tls://relay:4000", "wss://", "wss://relay:0/bridge", "wss://me:pw@relay/bridge"):
        with pytest.raises(
            ValueError, match=r"invalid WebSocket URL .*: expected wss://HOST\[:PORT\]"
        ):
            async with open_websocket_stream(url, client_context):
                pass  # pragma: no cover


async def _echo_streams(stream: WebSocketStream, peer: str) -> None:
    async def echo_stream(s: mux.Stream) -> None:
        async with s:
            while data := await s.receive_some():
                await s.send_all(data)
            await s.send_eof()

    async with mux.open_session(stream, client=False) as session, trio.open_nursery() as nursery:
        with contextlib.suppress(mux.SessionClosed):
            async for s in session:
                nursery.start_soon(echo_stream, s)


async def test_mux_session_over_websocket(nursery, certificates, client_context) -> None:
    server = await Server().start(nursery, certificates, _echo_streams)
    payloads = [os.urandom(512 * 1024 + i) for i in range(8)]

    async def round_trip(session: mux.Session, payload: bytes, digests: list[str]) -> None:
        async with await session.open_stream() as s:
            async with trio.open_nursery() as pumps:

                async def send() -> None:
                    await s.send_all(payload)
                    await s.send_eof()

                pumps.start_soon(send)
                digest = hashlib.sha256()
                while data := await s.receive_some():
                    digest.update(data)
            digests.append(digest.hexdigest())

    digests: list[str] = []
    async with open_websocket_stream(server.url(), client_context) as ws:
        async with mux.open_session(ws, client=True) as session, trio.open_nursery() as streams:
            for payload in payloads:
                streams.start_soon(round_trip, session, payload, digests)
    assert sorted(digests) == sorted(hashlib.sha256(p).hexdigest() for p in payloads)


async def test_through_a_connect_proxy(nursery, server, client_context) -> None:
    proxy = ConnectProxy(username="me", password="secret")
    await nursery.start(proxy.serve)
    url = ProxyURL("127.0.0.1", proxy.port, "me", "secret")
    async with open_websocket_stream(server.url(), client_context, proxy=url) as client:
        accepted, _ = await server.accepted()
        await client.send_all(b"via the proxy")
        assert await accepted.receive_some() == b"via the proxy"
    assert proxy.tunnels == 1
    assert proxy.requests[0][0] == f"localhost:{server.port}"


async def test_relay_admits_an_agent_over_websocket(nursery, certificates, client_context) -> None:
    store = MemoryStore()
    bridge_id, secret = store.create_bridge("office", cost=4)
    relay = Relay(store, certificates.server_context(), config=RelayConfig(bcrypt_cost=4))
    listeners = await nursery.start(relay.serve_websocket, "127.0.0.1", 0)
    server = Server()
    server.port = listeners[0].socket.getsockname()[1]
    target_port = await serve(nursery, echo)

    async def serve_tunnel(session: mux.Session) -> None:
        stream = await session.accept_stream()
        parser = ConnectRequestParser()
        while (request := parser.feed(await stream.receive_some())) is None:
            pass
        assert (request.host, request.port) == ("127.0.0.1", target_port)
        await stream.send_all(encode_connect_reply(ConnectReply(ConnectStatus.OK, "127.0.0.1")))
        async with await trio.open_tcp_stream("127.0.0.1", target_port) as target:
            await target.send_all(parser.leftover or await stream.receive_some())
            await stream.send_all(await target.receive_some())

    async with open_websocket_stream(server.url(), client_context) as ws:
        await ws.send_all(encode_hello(Hello(bridge_id, secret, {})))
        welcome_parser = WelcomeParser()
        while (welcome := welcome_parser.feed(await ws.receive_some())) is None:
            pass
        assert welcome.status == WelcomeStatus.OK
        transport = PrefixedStream(ws, welcome_parser.leftover)
        async with (
            mux.open_session(transport, client=True) as session,
            trio.open_nursery() as agent,
        ):
            agent.start_soon(serve_tunnel, session)
            async with await relay.connect("office", "127.0.0.1", target_port) as tunnel:
                await tunnel.send_all(b"hello through the relay")
                assert await tunnel.receive_some() == b"hello through the relay"
            assert [agent.peer.split(":")[0] for agent in relay.registry] == ["127.0.0.1"]
