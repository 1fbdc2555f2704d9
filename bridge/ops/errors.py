# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The words a user reads for a failed operation: one phrasing for every message both ends
print about an OS error ("Connection refused", "No such file or directory"), and about a
connection that broke."""

from __future__ import annotations

import errno
import os
import socket
import ssl

import trio

import mux

__all__ = ["connection_failure", "failure_reason", "os_reason"]


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


#: What a connection breaking raises: a closed or broken stream, a mux session's end, an
#: OS error.
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, mux.MuxError, OSError)


def connection_failure(exc: BaseException) -> BaseException | None:
    """The first error, if `exc` (maybe a group) is only a connection breaking (`_BROKEN`);
    None if anything else is in it (a bug, to be logged with its traceback)."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [connection_failure(e) for e in exc.exceptions]
        return leaves[0] if leaves and all(leaves) else None
    return exc if isinstance(exc, _BROKEN) else None


def failure_reason(exc: BaseException) -> str:
    """One line for a connection that broke with `exc`: a TLS error (`exc` or its cause) as
    ``TLS error: REASON``, an OS error in the OS's words (`os_reason`), else its message
    (or its cause's, or its type's name). Never raises."""
    cause = exc.__cause__ or exc.__context__
    for error in (exc, cause):
        if isinstance(error, ssl.SSLError):
            return f"TLS error: {error.reason or error}"
    if isinstance(exc, OSError):
        return os_reason(exc)
    return str(exc) or (str(cause) if cause else "") or type(exc).__name__
