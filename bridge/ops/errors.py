# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The words a user reads for a failed operation: one phrasing for every message both ends
print about an OS error ("Connection refused", "No such file or directory")."""

from __future__ import annotations

import errno
import os
import socket
import ssl

__all__ = ["os_reason"]


def os_reason(exc: BaseException) -> str:
    """The OS's words for `exc` ("Connection refused"), without ``[Errno N]`` or the address
    that trio adds to a failed connect ("Error connecting to ...").

    When `exc` sums up several attempts (``trio.open_tcp_stream`` tries one address after
    another and raises an `OSError` whose cause holds each attempt's error), the distinct
    reasons of those attempts, joined with ``"; "``. Otherwise ``str(exc)``: a non-OS error
    (or one without the OS's words) reads as it is. Never raises.
    """
    if isinstance(exc, OSError) and (words := _words(exc)):
        return words
    cause = exc.__cause__
    causes = cause.exceptions if isinstance(cause, BaseExceptionGroup) else [cause]
    attempts = [c for c in causes if isinstance(c, OSError) and c.errno]
    reasons = dict.fromkeys(_words(c) or str(c) for c in attempts)
    return "; ".join(reasons) or str(exc)


def _words(exc: OSError) -> str | None:
    """The OS's text for the error number; a resolver's or TLS library's own text, whose
    numbers are not the OS's."""
    if isinstance(exc, (socket.gaierror, socket.herror, ssl.SSLError)):
        return exc.strerror
    if exc.errno is not None and exc.errno in errno.errorcode:
        return os.strerror(exc.errno)
    return exc.strerror
