# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Where the agent dials: ``tls://host[:port]`` (port 4000 by default)."""

from __future__ import annotations

from urllib.parse import urlsplit

import attrs

DEFAULT_PORT = 4000
SCHEMES = ("tls",)


@attrs.frozen
class RelayURL:
    scheme: str
    host: str
    port: int = DEFAULT_PORT

    @classmethod
    def parse(cls, text: str) -> RelayURL:
        """Raises ValueError with a one-line message saying what a valid URL looks like."""
        expected = "expected tls://HOST[:PORT], e.g. tls://relay.example.com:4000"
        try:
            parts = urlsplit(text.strip())
            port = parts.port
        except ValueError:
            raise ValueError(f"invalid relay URL {text!r}: {expected}") from None
        if parts.scheme == "wss":
            raise ValueError(f"relay URL {text!r}: wss:// is not supported yet; {expected}")
        if (
            parts.scheme not in SCHEMES
            or not parts.hostname
            or parts.username is not None
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or port == 0
        ):
            raise ValueError(f"invalid relay URL {text!r}: {expected}")
        return cls(parts.scheme, parts.hostname, DEFAULT_PORT if port is None else port)

    @property
    def address(self) -> str:
        """``host:port`` as logged (IPv6 hosts in brackets)."""
        return format_address(self.host, self.port)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.address}"


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
