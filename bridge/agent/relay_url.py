# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Where the agent dials: ``tls://host[:port]`` (port 4000 by default), or
``wss://host[:port][/path]`` (WebSocket: port 443 and path /bridge by default)."""

from __future__ import annotations

import attrs

from bridge.protocol.addresses import format_host_port
from bridge.transport.url import split_url
from bridge.transport.websocket import DEFAULT_PATH

DEFAULT_PORT = 4000
DEFAULT_PORTS = {"tls": DEFAULT_PORT, "wss": 443}
SCHEMES = tuple(DEFAULT_PORTS)


@attrs.frozen
class RelayURL:
    """Where the agent dials: the scheme (``tls`` or ``wss``), host, port, and the WebSocket path
    for wss://. Build one with `RelayURL.parse`; ``str()`` gives the URL back."""

    scheme: str
    host: str
    port: int = DEFAULT_PORT
    #: The WebSocket path of a wss:// URL; empty for tls://.
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> RelayURL:
        """Raises ValueError with a one-line message saying what a valid URL looks like."""
        expected = "expected tls://HOST[:PORT] or wss://HOST[:PORT]/bridge, e.g. tls://relay.example.com:4000"
        invalid = f"invalid relay URL {text!r}: {expected}"
        parts = split_url(text, DEFAULT_PORTS, invalid)
        if (parts.path and parts.scheme == "tls") or parts.query or parts.fragment:
            raise ValueError(invalid)
        path = (parts.path or DEFAULT_PATH) if parts.scheme == "wss" else parts.path
        return cls(parts.scheme, parts.host, parts.port, path)

    @property
    def address(self) -> str:
        """``host:port`` as logged (IPv6 hosts in brackets)."""
        return format_host_port(self.host, self.port)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.address}{self.path}"
