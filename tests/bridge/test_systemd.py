# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0

import os
import socket

import pytest
import trio

from bridge.ops.systemd import Notifier, run_watchdog


@pytest.fixture
def listener(tmp_path):
    """A datagram socket standing in for systemd's NOTIFY_SOCKET: (address, socket)."""
    path = str(tmp_path / "notify")
    if len(path) > 100:
        path = f"/tmp/trio-bridge-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.setblocking(False)
        yield path, sock
    os.unlink(path)


def received(sock) -> list[bytes]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096))
        except BlockingIOError:
            return messages


def test_messages(listener):
    path, sock = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("Connected to relay.example:4000")
    assert notifier.status("Reconnecting in 2.1 s: connection refused\nsecond line")
    assert notifier.stopping()
    assert notifier.watchdog()
    assert received(sock) == [
        b"READY=1\nSTATUS=Connected to relay.example:4000",
        b"STATUS=Reconnecting in 2.1 s: connection refused second line",
        b"STOPPING=1",
        b"WATCHDOG=1",
    ]


def test_abstract_namespace():
    name = f"trio-bridge-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert Notifier.from_environ({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(100) == b"READY=1"


def test_without_systemd_nothing_is_sent():
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled and notifier.watchdog_interval is None
    assert not notifier.ready() and not notifier.watchdog()


def test_a_missing_socket_is_not_an_error(tmp_path):
    assert not Notifier(str(tmp_path / "gone")).ready()


@pytest.mark.parametrize(
    "env, interval",
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(env, interval):
    assert (
        Notifier.from_environ({"NOTIFY_SOCKET": "/run/notify", **env}).watchdog_interval == interval
    )


async def test_run_watchdog_pings_from_the_loop(listener, autojump_clock):
    path, sock = listener
    notifier = Notifier(path, watchdog_usec=200_000)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_watchdog, notifier)
        await trio.sleep(1.05)
        nursery.cancel_scope.cancel()
    assert received(sock) == [b"WATCHDOG=1"] * 11


async def test_run_watchdog_without_a_watchdog_returns():
    async with trio.open_nursery() as nursery:
        await nursery.start(run_watchdog, Notifier(None, watchdog_usec=200_000))
        await nursery.start(run_watchdog, Notifier("/run/notify"))
