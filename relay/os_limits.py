# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""What the operating system lets the relay hold during a burst of connections: the listen
backlog of its listeners and its number of open file descriptors."""

from __future__ import annotations

import resource

#: Where Linux keeps the ceiling of every listen backlog.
SOMAXCONN_PATH = "/proc/sys/net/core/somaxconn"
#: The backlog asked for where the ceiling cannot be read (the kernel lowers it to its own).
_FALLBACK_BACKLOG = 4096


def listen_backlog() -> int:
    """The listen backlog for the relay's listeners (agents, forwards, SOCKS): the kernel's
    ceiling, `net.core.somaxconn` (4096 on current Linux), so that a burst of connections
    waits in the kernel rather than being refused. Raise the sysctl to hold larger bursts."""
    try:
        with open(SOMAXCONN_PATH) as file:
            return max(1, int(file.read()))
    except (OSError, ValueError):
        return _FALLBACK_BACKLOG


def raise_open_files_limit() -> tuple[int, int]:
    """Raises the soft limit of open file descriptors (RLIMIT_NOFILE) to the hard one, so
    that every connection of a burst gets a descriptor; returns (soft, hard) as they are
    afterwards. Raises nothing: a limit that cannot be raised is left as it is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            return soft, hard
        soft = hard
    return soft, hard
