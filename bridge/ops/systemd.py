# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""systemd's notify protocol (sd_notify), without a dependency: datagrams to NOTIFY_SOCKET.

``Notifier.from_environ()`` is a no-op when the service does not run under systemd with
``Type=notify``, so callers never need to check. ``run_watchdog`` sends ``WATCHDOG=1`` from
the Trio event loop itself, so a loop that stops running stops the pings and systemd
restarts the service.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

import trio

log = logging.getLogger("bridge.systemd")


class Notifier:
    """Sends notify messages to one socket; ``Notifier(None)`` sends nothing."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.address = address or None
        #: The watchdog interval systemd expects pings within, in microseconds; None if off.
        self.watchdog_usec = watchdog_usec

    @classmethod
    def from_environ(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """From NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (the watchdog is ours only if
        WATCHDOG_PID is unset or names this process)."""
        env = os.environ if env is None else env
        watchdog_usec = None
        pid = env.get("WATCHDOG_PID", "").strip()
        if not pid or pid == str(os.getpid()):
            try:
                watchdog_usec = int(env.get("WATCHDOG_USEC", "")) or None
            except ValueError:
                pass
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_usec=watchdog_usec)

    @property
    def enabled(self) -> bool:
        """Whether NOTIFY_SOCKET was set: without it every notification is a no-op."""
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of WATCHDOG_USEC), or None without a watchdog."""
        if not self.enabled or not self.watchdog_usec or self.watchdog_usec <= 0:
            return None
        return self.watchdog_usec / 2e6

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; False (and a debug log) on failure."""
        if self.address is None:
            return False
        message = "\n".join(line.replace("\n", " ") for line in lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)  # never stall the event loop on a full socket
                sock.sendto(message, self.address)
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (and a status line). Returns whether it was sent; never raises."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """``STATUS=text``. Returns whether it was sent; never raises."""
        return self.notify(f"STATUS={text}")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1`` (and a status line). Returns whether it was sent; never raises."""
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``. Returns whether it was sent; never raises."""
        return self.notify("WATCHDOG=1")


async def run_watchdog(
    notifier: Notifier, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Send ``WATCHDOG=1`` every half WATCHDOG_USEC, forever; returns at once without a watchdog."""
    interval = notifier.watchdog_interval
    task_status.started()
    if interval is None:
        return
    while True:
        notifier.watchdog()
        await trio.sleep(interval)
