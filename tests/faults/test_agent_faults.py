# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The agent under faults: real relay and agent processes, the agent dialing the relay through
a `FaultProxy`, transfers through a relay forward to targets in this test, each completed one
checked by SHA-256."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import time
from functools import partial

import attrs
import trio

from ..e2e.e2e_support import Launcher, Process, Relay, free_port, relay_cli

CHUNK = 64 * 1024
ENDLESS = 1 << 40  # bytes: a transfer that only a fault ends

# Fast reconnects for every agent here; keepalive stays slow unless a test is about it.
FAST = {"RECONNECT_MAX_BACKOFF": "1", "KEEPALIVE_INTERVAL": "5", "KEEPALIVE_TIMEOUT": "5"}
CONNECTED = r"\tHandling incoming proxy connections"


async def in_thread(fn, *args, **kwargs):
    """A blocking helper of e2e_support, off the event loop (the targets run on it)."""
    return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))


# -- targets and transfers ---------------------------------------------------------------------


@attrs.define
class Target:
    """A TCP server in this test: echoes, or with ``die_after`` aborts (RST) once it has
    received that many bytes."""

    port: int = 0
    open: int = 0
    die_after: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, nursery: trio.Nursery) -> Target:
        listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]
        return self

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.open += 1
        received = 0
        try:
            while data := await stream.receive_some(CHUNK):
                received += len(data)
                if self.die_after is not None and received >= self.die_after:
                    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                    return
                await stream.send_all(data)
            await stream.send_eof()
        except trio.BrokenResourceError:
            pass
        finally:
            self.open -= 1
            stream.socket.close()


@attrs.define
class Transfer:
    """Random bytes to an echo through a forward, read back and compared by SHA-256."""

    size: int
    pace: float = 0.0  # seconds between chunks
    sent: int = 0
    received: int = 0
    progress: trio.Event = attrs.field(factory=trio.Event)  # 256 KiB came back
    outcome: str | None = None  # "complete", "corrupt", "short" or the error

    async def run(self, port: int) -> None:
        sent, received = hashlib.sha256(), hashlib.sha256()
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream, trio.open_nursery() as nursery:

                async def send() -> None:
                    while self.sent < self.size:
                        chunk = os.urandom(min(CHUNK, self.size - self.sent))
                        await stream.send_all(chunk)
                        sent.update(chunk)
                        self.sent += len(chunk)
                        await trio.sleep(self.pace)
                    await stream.send_eof()

                nursery.start_soon(send)
                while data := await stream.receive_some(CHUNK):
                    received.update(data)
                    self.received += len(data)
                    if self.received >= 4 * CHUNK:
                        self.progress.set()
                nursery.cancel_scope.cancel()
        except* (OSError, trio.BrokenResourceError) as group:
            self.outcome = f"error: {group.exceptions[0]!r}"
        if self.outcome is not None:
            pass
        elif self.received < self.size:
            self.outcome = "short"
        else:
            self.outcome = "complete" if sent.digest() == received.digest() else "corrupt"

    @property
    def cut(self) -> bool:
        """Ended early, with an error or an early EOF (never with wrong bytes)."""
        return self.outcome == "short" or self.outcome.startswith("error: ")


async def transfer_all(port: int, *sizes: int) -> None:
    """Transfers of these sizes at once; every one must complete intact."""
    transfers = [Transfer(size) for size in sizes]
    async with trio.open_nursery() as nursery:
        for t in transfers:
            nursery.start_soon(t.run, port)
    assert [t.outcome for t in transfers] == ["complete"] * len(sizes)


# -- processes ---------------------------------------------------------------------------------


async def start_tunnel(
    launch: Launcher,
    fault_proxy,
    *targets: Target,
    relay_port: int | None = None,
    wait: bool = True,
    **env: str,
):
    """A relay forwarding to the targets, a proxy in front of it, an agent dialing the proxy."""
    args = ["--listen", f"127.0.0.1:{relay_port}"] if relay_port else []
    relay = await in_thread(launch.relay, *(t.address for t in targets), args=args)
    proxy = fault_proxy(relay.agent_port)
    allow = [t.address for t in targets] or ["127.0.0.1:1"]
    agent = await in_thread(
        launch.agent, relay, allow, wait=wait, RELAY_URL=proxy.url, **(FAST | env)
    )
    return relay, proxy, agent


async def wait_for(process: Process, pattern: str, **kwargs) -> re.Match[str]:
    return await in_thread(process.wait_for, pattern, **kwargs)


async def wait_until(predicate, what: str, timeout: float) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# -- the tests ---------------------------------------------------------------------------------


async def test_relay_killed_and_restarted(launch, fault_proxy, nursery):
    """kill -9 of the relay mid-transfer: the cut transfers fail, nothing hangs, and the agent
    is back within 5 s of the relay's restart on the same port."""
    target = await Target().start(nursery)
    port = free_port()
    relay, proxy, agent = await start_tunnel(launch, fault_proxy, target, relay_port=port)
    transfers = [Transfer(ENDLESS, pace=0.01) for _ in range(4)]
    with trio.fail_after(30):
        async with trio.open_nursery() as running:
            for t in transfers:
                running.start_soon(t.run, relay.forwards[target.address])
            for t in transfers:
                await t.progress.wait()
            await in_thread(relay.process.stop)  # SIGKILL
    assert all(t.cut for t in transfers), transfers
    await wait_until(lambda: target.open == 0, "the agent to drop the target connections", 10)
    # A failed attempt while the relay is down, then another: retried, not given up.
    await wait_for(
        agent, r"\tWARNING\tReconnecting in [01]\.\d s\t.*\"reason\": ", count=2, timeout=10
    )

    restarted: Relay = await in_thread(
        launch.relay, target.address, args=["--listen", f"127.0.0.1:{port}"]
    )
    listening = time.monotonic()
    await wait_for(restarted.process, r'\tBridge connected\t.*"e2e"', timeout=10)
    assert time.monotonic() - listening < 5
    await wait_for(agent, CONNECTED, count=2)
    await transfer_all(restarted.forwards[target.address], 3 * 1024 * 1024, 1, 200_000)


async def test_blackholed_link(launch, fault_proxy, nursery):
    """A link that silently stops: keepalive notices within interval + timeout; once traffic
    passes again the agent is back."""
    target = await Target().start(nursery)
    relay, proxy, agent = await start_tunnel(
        launch, fault_proxy, target, KEEPALIVE_INTERVAL="1", KEEPALIVE_TIMEOUT="1"
    )
    forward = relay.forwards[target.address]
    await transfer_all(forward, 1024 * 1024)

    proxy.blackhole()
    blackholed = time.monotonic()
    await wait_for(agent, r"\tDisconnected from the relay\t.*keepalive", timeout=15)
    assert time.monotonic() - blackholed < 1 + 1 + 3  # interval + timeout, and a margin
    proxy.pass_traffic()
    await wait_for(agent, CONNECTED, count=2, timeout=20)
    await wait_for(relay.process, r'\tBridge disconnected\t.*"e2e"')  # the old session
    await transfer_all(forward, 2 * 1024 * 1024, 100_000)
    assert "Traceback" not in launch.logs()


async def test_target_dying_resets_only_its_stream(launch, fault_proxy, nursery):
    echo = await Target().start(nursery)
    fragile = await Target(die_after=256 * 1024).start(nursery)
    relay, proxy, agent = await start_tunnel(launch, fault_proxy, echo, fragile)
    dying = Transfer(ENDLESS, pace=0.005)
    others = [Transfer(3 * 1024 * 1024, pace=0.005) for _ in range(4)]
    with trio.fail_after(30):
        async with trio.open_nursery() as running:
            for t in others:
                running.start_soon(t.run, relay.forwards[echo.address])
            await others[0].progress.wait()
            running.start_soon(dying.run, relay.forwards[fragile.address])
    assert dying.cut, dying
    assert [t.outcome for t in others] == ["complete"] * 4
    assert not re.search(r"Disconnected|Reconnecting", agent.stderr())
    await transfer_all(relay.forwards[echo.address], 500_000)


async def test_sigterm_drains_the_open_transfer(launch, fault_proxy, nursery):
    target = await Target().start(nursery)
    relay, proxy, agent = await start_tunnel(launch, fault_proxy, target, DRAIN_TIMEOUT="20")
    transfer = Transfer(4 * 1024 * 1024, pace=0.02)  # about 1.3 s
    async with trio.open_nursery() as running:
        running.start_soon(transfer.run, relay.forwards[target.address])
        await transfer.progress.wait()
        agent.popen.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
    assert transfer.outcome == "complete"
    assert await in_thread(agent.wait, 25) == 0
    assert time.monotonic() - stopped < 20
    log = agent.stderr()
    assert re.search(r'\tINFO\tDraining\t\{"open_connections": 1, "timeout": 20.0\}', log), log
    assert re.search(r'\tINFO\tDrained\t\{"finished": 1, "cut": 0\}', log), log


async def test_second_signal_stops_at_once(launch, fault_proxy, nursery):
    target = await Target().start(nursery)
    relay, proxy, agent = await start_tunnel(launch, fault_proxy, target, DRAIN_TIMEOUT="60")
    transfer = Transfer(ENDLESS, pace=0.01)
    with trio.fail_after(20):
        async with trio.open_nursery() as running:
            running.start_soon(transfer.run, relay.forwards[target.address])
            await transfer.progress.wait()
            agent.popen.send_signal(signal.SIGTERM)
            await wait_for(agent, r"\tDraining\t")
            agent.popen.send_signal(signal.SIGTERM)
            assert await in_thread(agent.wait, 10) == 1
    assert transfer.cut, transfer
    assert re.search(
        r'\tWARNING\tStopping at once\t\{"signal": "SIGTERM", "cut": 1\}', agent.stderr()
    )


async def test_sd_notify(launch, fault_proxy, tmp_path):
    """READY once connected, WATCHDOG from the loop, STATUS on reconnects, STOPPING on drain."""
    path = tmp_path / "notify"
    if len(bytes(path)) > 100:  # beyond sun_path
        path = f"/tmp/trio-bridge-notify-{os.getpid()}"
    messages: list[str] = []
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        await sock.bind(str(path))

        async def collect() -> None:
            while True:
                messages.append((await sock.recv(4096)).decode())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            relay, proxy, agent = await start_tunnel(
                launch, fault_proxy, NOTIFY_SOCKET=str(path), WATCHDOG_USEC="200000"
            )
            connected = f"STATUS=Connected to 127.0.0.1:{proxy.port}"
            await wait_until(lambda: messages.count("WATCHDOG=1") >= 3, "3 watchdog pings", 10)
            proxy.cut()
            await wait_until(
                lambda: any(m.startswith("STATUS=Reconnecting in ") for m in messages),
                "a reconnect status",
                10,
            )
            proxy.pass_traffic()
            await wait_until(lambda: connected in messages, "the status after reconnecting", 15)
            agent.popen.send_signal(signal.SIGTERM)
            assert await in_thread(agent.wait, 15) == 0
            nursery.cancel_scope.cancel()
    os.unlink(path)
    assert [m for m in messages if m.startswith("READY=1")] == [f"READY=1\n{connected}"]
    assert "STOPPING=1\nSTATUS=Draining 0 open connections" in messages
    assert messages.index(connected) > messages.index(f"READY=1\n{connected}")


async def test_wrong_credentials_exit_78_without_retrying(launch, fault_proxy, bridge):
    relay, proxy, agent = await start_tunnel(
        launch, fault_proxy, wait=False, BRIDGE_SECRET="x" * 43
    )
    assert await in_thread(agent.wait, 20) == 78
    log = agent.stderr()
    assert "\tERROR\tRelay rejected the bridge credentials: invalid bridge credentials" in log
    assert "Reconnecting" not in log and "x" * 43 not in log
    assert proxy.accepted == 1


async def test_deleted_bridge_exits_78(launch, fault_proxy, bridge):
    """The relay closes a deleted bridge's session; the agent's next handshake is refused."""
    relay, proxy, agent = await start_tunnel(launch, fault_proxy)
    deleted = await in_thread(relay_cli, bridge.data_dir, "bridges", "delete", "--yes", bridge.name)
    assert deleted.returncode == 0, deleted.stderr
    assert await in_thread(agent.wait, 20) == 78
    assert "(the relay said: bridge deleted)" in agent.stderr()
