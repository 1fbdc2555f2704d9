# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Where the agent dials: ``tls://host[:port]`` (port 4000 by default), or
``wss://host[:port][/path]`` (WebSocket: port 443 and path /bridge by default); a
comma-separated list of them for a relay of several nodes (`parse_relay_urls`)."""

from __future__ import annotations

import attrs

from bridge.protocol.addresses import format_host_port
from bridge.transport.url import split_url
from bridge.transport.websocket import DEFAULT_PATH

DEFAULT_PORT = 4000
DEFAULT_PORTS = {"tls": DEFAULT_PORT, "wss": 443}
SCHEMES = tuple(DEFAULT_PORTS)
#: What a valid relay URL looks like, for error messages.
EXPECTED = (
    "expected tls://HOST[:PORT] or wss://HOST[:PORT]/bridge, e.g. tls://relay.example.com:4000"
)


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
        invalid = f"invalid relay URL {text!r}: {EXPECTED}"
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


def parse_relay_urls(text: str) -> tuple[RelayURL, ...]:
    """A comma-separated list of relay URLs, e.g. ``tls://relay1:4000,tls://relay2:4000``:
    blanks around entries and empty entries are ignored, a URL given twice is kept once, the
    order is kept (the agent shuffles it anyway).

    Raises ValueError with a one-line message when there is no URL, or naming the entry that
    is not a valid URL (and its position, in a list of several).
    """
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    if not entries:
        raise ValueError(f"no relay URL given: {EXPECTED}")
    urls: list[RelayURL] = []
    for index, entry in enumerate(entries, 1):
        try:
            url = RelayURL.parse(entry)
        except ValueError:
            if len(entries) == 1:
                raise
            where = f"entry {index} of {len(entries)}"
            raise ValueError(f"invalid relay URL {entry!r} ({where}): {EXPECTED}") from None
        if url not in urls:
            urls.append(url)
    return tuple(urls)
