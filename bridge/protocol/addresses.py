# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""HOST:PORT as users type it (IPv6 in brackets), and back."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252}[A-Za-z0-9_.])?")


def parse_host_port(text: str, *, allow_zero: bool = False) -> tuple[str, int]:
    """`host:port`, `ip:port` or `[ipv6]:port` -> (host, port); ValueError says what is wrong."""
    problem = f"invalid HOST:PORT {text!r}"
    if ":" not in text:
        raise ValueError(f"{problem}: the port is missing (e.g. db.internal:5432)")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if not rest.startswith(":"):
            raise ValueError(f"{problem}: expected [IPV6]:PORT")
        port_text = rest[1:]
    else:
        host, _, port_text = text.rpartition(":")
        if ":" in host:
            raise ValueError(f"{problem}: write IPv6 addresses in brackets, e.g. [::1]:5432")
    if not host:
        raise ValueError(f"{problem}: the host is missing")
    if not _is_host(host):
        raise ValueError(f"{problem}: {host!r} is not a hostname or IP address")
    low = 0 if allow_zero else 1
    if not port_text.isascii() or not port_text.isdigit() or not low <= int(port_text) <= 65535:
        raise ValueError(f"{problem}: the port must be a number from {low} to 65535")
    return host, int(port_text)


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(_HOSTNAME.fullmatch(host))
    return True


def parse_listen_address(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """`HOST:PORT`, `[IPV6]:PORT`, or `PORT` / `:PORT` on `default_host` (loopback) ->
    (host, port); port 0 means any free port. ValueError says what is wrong."""
    if ":" not in text or text.startswith(":"):
        text = format_host_port(default_host, text.removeprefix(":"))
    return parse_host_port(text, allow_zero=True)


def format_host_port(host: str, port: int | str) -> str:
    """``host:port`` as users type it and logs show it: an IPv6 host in brackets
    (``[::1]:5432``). The inverse of `parse_host_port`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_socket_address(address: Any) -> str:
    """A socket address as ``getpeername()`` returns it, in the form of `format_host_port`
    (the IPv6 flow info and scope ID are left out); anything else (an AF_UNIX path) as
    ``str``."""
    if isinstance(address, tuple) and len(address) >= 2:
        return format_host_port(address[0], address[1])
    return str(address)
