# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0

from __future__ import annotations

import base64
import hashlib
import os
from functools import partial

import pytest
import trio

from bridge.transport.http_proxy import (
    ProxyError,
    ProxyURL,
    bypasses_proxy,
    open_tcp_stream,
    open_via_proxy,
    proxy_for,
)
from bridge.transport.tls import client_ssl_context
from bridge.transport.tls_stream import TLSStream

from .bridge_support import echo, serve
from .connect_proxy import ConnectProxy

# -- proxy URLs and their selection -------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("http://proxy.corp:3128", ProxyURL("proxy.corp", 3128)),
        ("http://proxy.corp", ProxyURL("proxy.corp", 80)),
        ("proxy.corp:3128", ProxyURL("proxy.corp", 3128)),
        ("HTTP://Proxy.Corp:3128/", ProxyURL("proxy.corp", 3128)),
        ("http://[::1]:3128", ProxyURL("::1", 3128)),
        ("http://me:s%40cret@10.0.0.1:3128", ProxyURL("10.0.0.1", 3128, "me", "s@cret")),
        ("http://me@10.0.0.1:3128", ProxyURL("10.0.0.1", 3128, "me", None)),
    ],
)
def test_proxy_urls(text: str, expected: ProxyURL) -> None:
    assert ProxyURL.parse(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("https://proxy:3128", "only http:// proxies are supported"),
        ("socks5://proxy:1080", "only http:// proxies are supported"),
        ("http://proxy:99999", "expected http://[USER:PASSWORD@]HOST[:PORT]"),
        ("http://proxy:3128/path", "invalid proxy URL 'http://proxy:3128/path'"),
        ("http://:3128", "invalid proxy URL"),
        ("http://me:hunter2@proxy:x", "invalid proxy URL 'http://***@proxy:x'"),
    ],
)
def test_invalid_proxy_urls(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("*", r"\*")) as caught:
        ProxyURL.parse(text)
    assert "hunter2" not in str(caught.value)


def test_proxy_password_is_never_shown() -> None:
    proxy = ProxyURL.parse("http://me:hunter2@proxy.corp:3128")
    assert "hunter2" not in repr(proxy) and "hunter2" not in str(proxy)
    assert str(proxy) == "http://proxy.corp:3128" and proxy.address == "proxy.corp:3128"


@pytest.mark.parametrize(
    "host, port, no_proxy, bypassed",
    [
        ("relay.example.com", 443, "*", True),
        ("relay.example.com", 443, "", False),
        ("relay.example.com", 443, "relay.example.com", True),
        ("relay.example.com", 443, "RELAY.example.com.", True),
        ("relay.example.com.", 443, "relay.example.com", True),
        ("relay.example.com", 443, "example.com", True),
        ("relay.example.com", 443, ".example.com", True),
        ("example.com", 443, ".example.com", True),
        ("relay.example.com", 443, "*.example.com", True),
        ("relay.example.com", 443, "ample.com", False),
        ("relay.example.com", 443, "other.com, example.org", False),
        ("relay.example.com", 443, "other.com  example.com", True),
        ("relay.example.com", 443, "other.com,,relay.example.com", True),
        ("relay.example.com", 443, "relay.example.com:443", True),
        ("relay.example.com", 4000, "relay.example.com:443", False),
        ("relay.example.com", 443, "relay.example.com:https", False),
        ("10.1.2.3", 4000, "10.1.2.3", True),
        ("10.1.2.3", 4000, "10.0.0.0/8", True),
        ("10.1.2.3", 4000, "10.0.0.0/8:4000", True),
        ("10.1.2.3", 4000, "10.0.0.0/8:443", False),
        ("10.1.2.3", 4000, "192.168.0.0/16,localhost", False),
        ("10.1.2.3", 4000, "3.com", False),
        ("::1", 443, "::1", True),
        ("::1", 443, "[::1]:443", True),
        ("::1", 443, "[::1]:80", False),
        ("fd00::5", 443, "fd00::/8", True),
        ("fd00::5", 443, "10.0.0.0/8", False),
    ],
)
def test_no_proxy_matching(host: str, port: int, no_proxy: str, bypassed: bool) -> None:
    assert bypasses_proxy(host, port, no_proxy) is bypassed


def test_proxy_selection_from_environment_and_flags() -> None:
    env = {"HTTPS_PROXY": "http://upper:3128", "NO_PROXY": "internal.corp"}
    assert proxy_for("relay.example.com", 443, {}) is None
    assert proxy_for("relay.example.com", 443, env) == ProxyURL("upper", 3128)
    lower_first = {**env, "https_proxy": "lower:8080"}
    assert proxy_for("relay.example.com", 443, lower_first) == ProxyURL("lower", 8080)
    assert proxy_for("relay.internal.corp", 443, env) is None
    assert proxy_for("relay.internal.corp", 443, env, no_proxy="") == ProxyURL("upper", 3128)
    assert proxy_for("relay.example.com", 443, env, proxy="flag:1") == ProxyURL("flag", 1)
    assert proxy_for("relay.internal.corp", 443, env, proxy="flag:1") is None
    assert proxy_for("relay.example.com", 443, env, proxy="") is None
    assert proxy_for("relay.example.com", 443, {"HTTP_PROXY": "http://plain:3128"}) is None
    with pytest.raises(ValueError, match="invalid proxy URL"):
        proxy_for("relay.internal.corp", 443, {**env, "HTTPS_PROXY": "https://x"})


# -- CONNECT --------------------------------------------------------------------------------


async def _tls_echo(certificates, tcp: trio.SocketStream) -> None:
    tls = TLSStream.wrap(tcp, certificates.server_context(), server_side=True)
    async with tls:
        try:
            await tls.do_handshake()
            while data := await tls.receive_some():
                await tls.send_all(data)
        except trio.BrokenResourceError:
            pass


@pytest.fixture
async def tls_echo_port(nursery, certificates) -> int:
    return await serve(nursery, partial(_tls_echo, certificates))


async def _start_proxy(nursery, **credentials) -> ConnectProxy:
    proxy = ConnectProxy(**credentials)
    await nursery.start(proxy.serve)
    return proxy


async def test_tls_through_the_proxy(nursery, certificates, tls_echo_port) -> None:
    proxy = await _start_proxy(nursery)
    tcp = await open_via_proxy(proxy.url, "127.0.0.1", tls_echo_port)
    context = client_ssl_context(ca_file=certificates.ca_file)
    payload = os.urandom(3 * 1024 * 1024)
    async with TLSStream.wrap(tcp, context, server_side=False, server_hostname="localhost") as tls:
        await tls.do_handshake()
        digest, received = hashlib.sha256(), 0
        async with trio.open_nursery() as pumps:
            pumps.start_soon(tls.send_all, payload)
            while received < len(payload):
                chunk = await tls.receive_some()
                digest.update(chunk)
                received += len(chunk)
    assert digest.digest() == hashlib.sha256(payload).digest()
    assert proxy.tunnels == 1
    target, headers = proxy.requests[0]
    assert target == f"127.0.0.1:{tls_echo_port}" and headers["host"] == target
    assert "proxy-authorization" not in headers


async def test_credentials_are_sent(nursery, tls_echo_port) -> None:
    proxy = await _start_proxy(nursery, username="me", password="p@ss:word")
    url = ProxyURL("127.0.0.1", proxy.port, "me", "p@ss:word")
    async with await open_tcp_stream("127.0.0.1", tls_echo_port, proxy=url):
        pass
    assert proxy.tunnels == 1
    authorization = proxy.requests[0][1]["proxy-authorization"]
    assert base64.b64decode(authorization.removeprefix("Basic ")) == b"me:p@ss:word"


async def test_missing_credentials_give_a_clear_error(nursery, tls_echo_port) -> None:
    proxy = await _start_proxy(nursery, username="me", password="secret")
    with pytest.raises(ProxyError) as caught:
        await open_via_proxy(f"http://127.0.0.1:{proxy.port}", "127.0.0.1", tls_echo_port)
    assert str(caught.value) == (
        f"proxy 127.0.0.1:{proxy.port} refused CONNECT 127.0.0.1:{tls_echo_port}: "
        "407 Proxy Authentication Required "
        "(give credentials in the proxy URL: http://USER:PASSWORD@HOST:PORT)"
    )
    with pytest.raises(ProxyError, match=r"407 .* \(check the user name and password") as caught:
        await open_via_proxy(f"http://me:wrong@127.0.0.1:{proxy.port}", "127.0.0.1", tls_echo_port)
    assert "wrong" not in str(caught.value)
    assert proxy.tunnels == 0


async def test_unreachable_target_and_proxy(nursery) -> None:
    proxy = await _start_proxy(nursery)
    closed = trio.socket.socket()
    await closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    with pytest.raises(ProxyError, match=rf"refused CONNECT 127.0.0.1:{port}: 502 Bad Gateway$"):
        await open_via_proxy(proxy.url, "127.0.0.1", port)
    with pytest.raises(ProxyError, match=rf"^cannot connect to the proxy 127.0.0.1:{port}: "):
        await open_via_proxy(f"http://127.0.0.1:{port}", "relay", 443)
    closed.close()


async def _answer(response: bytes, tcp: trio.SocketStream) -> None:
    async with tcp:
        await tcp.receive_some(4096)
        await tcp.send_all(response)


@pytest.mark.parametrize(
    "response, message",
    [
        (b"", "closed the connection without answering CONNECT relay:443"),
        (b"HTTP/1.1 200 OK\r\nX: 1", "closed the connection without answering CONNECT relay:443"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "sent an invalid answer to CONNECT relay:443: "),
        (
            b"HTTP/1.1 200 OK\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",
            "answered CONNECT relay:443 with over 16 KiB of headers",
        ),
        (b"HTTP/1.1 200 OK\r\n\r\nearly", "sent data before the tunnel to relay:443 was used"),
        (b"HTTP/1.1 503 \r\n\r\n", "refused CONNECT relay:443: 503 Service Unavailable"),
        (b"HTTP/1.1 599 \x1b[31m\r\n\r\n", "refused CONNECT relay:443: 599 \\x1b[31m"),
    ],
)
async def test_bad_proxy_answers(nursery, response: bytes, message: str) -> None:
    port = await serve(nursery, partial(_answer, response))
    with pytest.raises(ProxyError) as caught:
        await open_via_proxy(ProxyURL("127.0.0.1", port), "relay", 443)
    assert str(caught.value).startswith(f"proxy 127.0.0.1:{port} {message}")


async def test_informational_answers_are_skipped(nursery) -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"
    port = await serve(nursery, partial(_answer, answer))
    async with await open_via_proxy(ProxyURL("127.0.0.1", port), "relay", 443):
        pass


async def test_direct_connection_without_a_proxy(nursery) -> None:
    port = await serve(nursery, echo)
    async with await open_tcp_stream("127.0.0.1", port) as tcp:
        await tcp.send_all(b"ping")
        assert await tcp.receive_some() == b"ping"
