# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Helpers for the relay tests: a relay on loopback, agents, certificates."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import attrs
import trio

import mux
from bridge.agent.agent import Agent, AgentError
from bridge.protocol.connect import ConnectRequestParser
from bridge.protocol.handshake import Hello, WelcomeParser, WelcomeStatus, encode_hello
from bridge.transport.prefixed_stream import PrefixedStream
from bridge.transport.tls import client_ssl_context
from relay import Relay, RelayConfig
from relay.certificates import server_ssl_context

from ..settle import settled

COST = 4  # bcrypt cost in tests


@attrs.frozen
class CertFiles:
    cert: Path
    key: Path
    fingerprint: str

    def server_context(self):
        return server_ssl_context(self.cert, self.key)

    def client_context(self):
        return client_ssl_context(fingerprint=self.fingerprint)


class RelayHarness:
    """A relay serving on 127.0.0.1 for one test, plus helpers to run agents and targets."""

    def __init__(self, nursery: trio.Nursery, store, cert_files: CertFiles, **config) -> None:
        self.nursery = nursery
        self.store = store
        self.cert_files = cert_files
        defaults = {
            "handshake_timeout": 2.0,
            "connect_timeout": 5.0,
            "bcrypt_cost": COST,
            "store_poll_interval": 0.05,
        }
        config = RelayConfig(**{**defaults, **config})
        self.relay = Relay(store, cert_files.server_context(), config=config)
        self.port = 0

    async def start(self) -> RelayHarness:
        listeners = await self.nursery.start(self.relay.serve, "127.0.0.1", 0)
        self.port = listeners[0].socket.getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.port}"

    def create_bridge(self, name: str) -> tuple[str, str]:
        return self.store.create_bridge(name, cost=COST)

    def agent(self, bridge_id: str, secret: str, allow: list[str]) -> Agent:
        return Agent(self.url, bridge_id, secret, allow, self.cert_files.client_context())

    async def start_agent(self, bridge_id: str, secret: str, allow: list[str]) -> RunningAgent:
        """Run an agent until it ends; `done` is set when its session is over."""
        running = RunningAgent(self.agent(bridge_id, secret, allow))
        await self.nursery.start(running.run)
        return running

    async def wait_disconnected(self, bridge: str) -> None:
        await settled(lambda: not self.relay.is_connected(bridge))

    async def wait_sessions(self, bridge: str, count: int) -> None:
        await settled(lambda: len(self.relay.registry.sessions(bridge)) == count)


class RunningAgent:
    """Runs an agent (reconnecting) until killed or refused; `error` tells why it ended."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.done = trio.Event()
        self.scope = trio.CancelScope()
        self.error: AgentError | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self.scope:
                await self.agent.run(task_status=task_status)
        except AgentError as exc:
            if not self.agent.sessions:
                raise  # refused from the start: `nursery.start` raises it
            self.error = exc  # e.g. its bridge was deleted: refused when it reconnected
        finally:
            self.done.set()

    def kill(self) -> None:
        self.scope.cancel()


async def receive_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some(65536):
        data += chunk
    return bytes(data)


async def run_scripted_agent(
    port: int,
    client_context,
    bridge_id: str,
    secret: str,
    answer,
    *,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Authenticate like an agent, then run `answer(stream, request, session)` for each
    stream the relay opens. Returns when the session ends."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    tls = trio.SSLStream(tcp, client_context)
    await tls.send_all(encode_hello(Hello(bridge_id, secret)))
    parser = WelcomeParser()
    while (welcome := parser.feed(await tls.receive_some())) is None:
        pass
    assert welcome.status == WelcomeStatus.OK, welcome
    async with mux.open_session(PrefixedStream(tls, parser.leftover), client=True) as session:
        task_status.started(session)
        async with trio.open_nursery() as nursery:
            async for stream in session:

                async def serve(stream=stream):
                    requests = ConnectRequestParser()
                    while (request := requests.feed(await stream.receive_some())) is None:
                        pass
                    await answer(stream, request, session)

                nursery.start_soon(serve)


@contextlib.contextmanager
def captured_logs(name: str) -> Iterator[list[logging.LogRecord]]:
    """The records of logger `name` (and its children), whatever the logging configuration."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger, handler = logging.getLogger(name), Keep(logging.DEBUG)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
