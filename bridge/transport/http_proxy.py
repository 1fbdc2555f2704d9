# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Reaching the relay through an HTTP proxy (``CONNECT``), chosen like curl does.

``HTTPS_PROXY`` (or ``https_proxy``) names the proxy, ``http://[USER:PASSWORD@]HOST[:PORT]``;
``NO_PROXY`` lists the hosts reached directly. Whatever runs over the tunnel (TLS, or TLS
and WebSocket) is unchanged: `open_tcp_stream` returns the same `trio.SocketStream` with or
without a proxy. Proxy passwords never appear in a repr, a message or a log line.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

import attrs
import h11
import trio

from bridge import __version__
from bridge.ops.errors import os_reason
from bridge.ops.logs import printable
from bridge.protocol.addresses import format_host_port
from bridge.transport.http_status import status_phrase

#: The proxy's answer to CONNECT (status line and headers) may not be longer than this.
MAX_RESPONSE_HEAD = 16 * 1024

_USERINFO = re.compile(r"^(\s*(?:[A-Za-z][A-Za-z0-9+.-]*://)?)[^/?#]*@")


class ProxyError(ConnectionError):
    """The proxy could not be reached, or it did not open the tunnel."""


@attrs.frozen
class ProxyURL:
    """An HTTP proxy: ``http://[USER:PASSWORD@]HOST[:PORT]`` (port 80 by default)."""

    host: str
    port: int = 80
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)

    @classmethod
    def parse(cls, text: str) -> ProxyURL:
        """Raises ValueError with a one-line message (any password in ``text`` masked)."""
        shown = _USERINFO.sub(r"\1***@", text.strip())
        problem = f"invalid proxy URL {shown!r}: expected http://[USER:PASSWORD@]HOST[:PORT]"
        raw = text.strip() if "://" in text else f"http://{text.strip()}"
        try:
            parts = urlsplit(raw)
            port = parts.port
        except ValueError:
            raise ValueError(problem) from None
        if parts.scheme != "http":
            raise ValueError(f"{problem} (only http:// proxies are supported)")
        extra = parts.path not in ("", "/") or parts.query or parts.fragment
        if not parts.hostname or port == 0 or extra:
            raise ValueError(problem)
        username, password = parts.username, parts.password
        return cls(
            parts.hostname,
            80 if port is None else port,
            None if username is None else unquote(username),
            None if password is None else unquote(password),
        )

    @property
    def address(self) -> str:
        """``host:port``, as shown in messages and logs."""
        return format_host_port(self.host, self.port)

    def __str__(self) -> str:
        return f"http://{self.address}"


def proxy_for(
    host: str,
    port: int,
    env: Mapping[str, str],
    *,
    proxy: str | None = None,
    no_proxy: str | None = None,
) -> ProxyURL | None:
    """The proxy to reach host:port through, or None to connect directly.

    ``proxy`` (a ``--proxy`` flag) replaces ``https_proxy`` / ``HTTPS_PROXY`` from ``env``, and
    an empty one means no proxy; ``no_proxy`` replaces ``no_proxy`` / ``NO_PROXY``. Raises
    ValueError for an invalid proxy URL, even when ``NO_PROXY`` exempts the host.
    """
    parsed, exempt = proxy_settings(env, proxy=proxy, no_proxy=no_proxy)
    return None if parsed is None or bypasses_proxy(host, port, exempt) else parsed


def proxy_settings(
    env: Mapping[str, str], *, proxy: str | None = None, no_proxy: str | None = None
) -> tuple[ProxyURL | None, str]:
    """The proxy (None: none) and the ``NO_PROXY`` list (empty: none), for `proxy_for` and
    for clients of several hosts, which call `bypasses_proxy` per host.

    ``proxy`` (a ``--proxy`` flag) replaces ``https_proxy`` / ``HTTPS_PROXY`` from ``env``, and
    an empty one means no proxy; ``no_proxy`` replaces ``no_proxy`` / ``NO_PROXY``. Raises
    ValueError for an invalid proxy URL.
    """
    if proxy is None:
        proxy = _first(env, "https_proxy", "HTTPS_PROXY")
    if no_proxy is None:
        no_proxy = _first(env, "no_proxy", "NO_PROXY")
    if not proxy or not proxy.strip():
        return None, no_proxy or ""
    return ProxyURL.parse(proxy), no_proxy or ""


def bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Whether the ``NO_PROXY`` list exempts host:port from the proxy.

    Entries are separated by commas or spaces: ``*`` (every host), a domain
    (``example.com``, ``.example.com`` and ``*.example.com`` all match it and its
    subdomains), an IP address or CIDR (for hosts given as IP addresses), any of these
    with ``:PORT`` (IPv6 in brackets) to exempt that port only. Case and trailing dots
    are ignored; names are not resolved.
    """
    host = host.lower().rstrip(".")
    address = _ip_address(host)
    for entry in no_proxy.replace(" ", ",").split(","):
        entry = entry.strip().lower()
        if entry == "*":
            return True
        name, entry_port = _split_port(entry)
        if not name or entry_port not in (None, port):
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
        else:
            name = name.lstrip("*.").rstrip(".")
            if name and (host == name or host.endswith(f".{name}")):
                return True
    return False


async def open_tcp_stream(
    host: str, port: int, *, proxy: ProxyURL | None = None
) -> trio.SocketStream:
    """`trio.open_tcp_stream`, through ``proxy`` when one is given (see `open_via_proxy`).

    Raises OSError (`ProxyError` for the proxy's failures) when no connection comes about.
    Cancelled, it closes whatever it had opened."""
    if proxy is None:
        return await trio.open_tcp_stream(host, port)
    return await open_via_proxy(proxy, host, port)


async def open_via_proxy(proxy: ProxyURL | str, host: str, port: int) -> trio.SocketStream:
    """A TCP stream to host:port tunneled by the HTTP proxy with ``CONNECT``.

    Sends Basic credentials when the proxy URL has a user name. Raises `ProxyError` (an
    OSError) when the proxy cannot be reached, refuses, or answers something that is not
    HTTP. Bound it with a cancel scope: it waits as long as the proxy does.
    """
    if isinstance(proxy, str):
        proxy = ProxyURL.parse(proxy)
    target = format_host_port(host, port)
    try:
        tcp = await trio.open_tcp_stream(proxy.host, proxy.port)
    except OSError as exc:
        raise ProxyError(f"cannot connect to the proxy {proxy.address}: {os_reason(exc)}") from None
    try:
        await _connect(tcp, proxy, target)
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    return tcp


async def _connect(tcp: trio.SocketStream, proxy: ProxyURL, target: str) -> None:
    headers = [("Host", target), ("User-Agent", f"trio-bridge/{__version__}")]
    if proxy.username is not None:
        credentials = f"{proxy.username}:{proxy.password or ''}".encode()
        headers.append(("Proxy-Authorization", "Basic " + base64.b64encode(credentials).decode()))
    http = h11.Connection(h11.CLIENT)
    request = h11.Request(method="CONNECT", target=target, headers=headers)
    where = f"proxy {proxy.address}"
    received = 0
    try:
        await tcp.send_all(http.send(request) + http.send(h11.EndOfMessage()))
        while not isinstance(event := http.next_event(), h11.Response):
            if event is h11.NEED_DATA:  # else a 1xx answer: the real one follows
                if received == MAX_RESPONSE_HEAD:
                    too_long = f"over {MAX_RESPONSE_HEAD // 1024} KiB of headers"
                    raise ProxyError(f"{where} answered CONNECT {target} with {too_long}")
                if not (data := await tcp.receive_some(MAX_RESPONSE_HEAD - received)):
                    raise ProxyError(
                        f"{where} closed the connection without answering CONNECT {target}"
                    )
                received += len(data)
                http.receive_data(data)
    except trio.BrokenResourceError as exc:
        raise ProxyError(f"lost the connection to the {where}: {exc}") from None
    except h11.RemoteProtocolError as exc:
        raise ProxyError(f"{where} sent an invalid answer to CONNECT {target}: {exc}") from None
    status = event.status_code
    if not 200 <= status < 300:
        reason = (
            event.reason.decode("ascii", "replace") or status_phrase(status) or "(no reason given)"
        )
        reason = printable(reason)
        hint = ""
        if status == 407:
            hint = (
                " (check the user name and password in the proxy URL)"
                if proxy.username is not None
                else " (give credentials in the proxy URL: http://USER:PASSWORD@HOST:PORT)"
            )
        raise ProxyError(f"{where} refused CONNECT {target}: {status} {reason}{hint}")
    if http.trailing_data[0]:
        raise ProxyError(f"{where} sent data before the tunnel to {target} was used")


def _first(env: Mapping[str, str], *names: str) -> str | None:
    return next((env[name] for name in names if env.get(name)), None)


def _split_port(entry: str) -> tuple[str, int | None]:
    """``name``, ``name:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 -> (name, port);
    a port that is not a number gives an empty name (an entry that matches nothing)."""
    if entry.startswith("["):
        name, _, rest = entry[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest
    elif entry.count(":") == 1:
        name, _, port_text = entry.partition(":")
    else:
        name, port_text = entry, ""
    if not port_text:
        return name, None
    return (name, int(port_text)) if port_text.isascii() and port_text.isdigit() else ("", None)


def _ip_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
