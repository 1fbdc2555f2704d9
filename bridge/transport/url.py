# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The one parser of the URLs a client dials (``tls://`` and ``wss://``): `split_url`."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

import attrs

__all__ = ["URLParts", "split_url"]


@attrs.frozen
class URLParts:
    """A dialable URL, split: the scheme, host, port (the scheme's default when the URL has
    none), the path (empty for none or ``/``), the query and the fragment (empty for none)."""

    scheme: str
    host: str
    port: int
    path: str
    query: str
    fragment: str


def split_url(text: str, default_ports: Mapping[str, int], invalid: str) -> URLParts:
    """Split ``text`` (surrounding blanks ignored), a URL of one of the schemes in
    ``default_ports`` with a host, an optional port (not 0) and no user information.

    Raises ValueError(``invalid``) otherwise: the caller words what a valid URL looks like
    and checks what it accepts beyond this (a path, a query).
    """
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        raise ValueError(invalid) from None
    if (
        parts.scheme not in default_ports
        or not parts.hostname
        or parts.username is not None
        or port == 0
    ):
        raise ValueError(invalid)
    return URLParts(
        parts.scheme,
        parts.hostname,
        default_ports[parts.scheme] if port is None else port,
        "" if parts.path in ("", "/") else parts.path,
        parts.query,
        parts.fragment,
    )
