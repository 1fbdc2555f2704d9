# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""A hostile agent answers `bridge-relay test` with terminal escape sequences and forged
lines: the operator's terminal and the relay's log get them escaped, never raw."""

from __future__ import annotations

import trio

from bridge.protocol.connect import (
    ConnectReply,
    ConnectRequestParser,
    ConnectStatus,
    encode_connect_reply,
)

from ..e2e.e2e_support import relay_cli
from .quota_support import ATTACKER, add_bridge, hostile_agent, tracebacks

# Clear the screen, retitle the terminal, then a forged line and a forged log record.
EVIL = (
    "\x1b[2J\x1b]0;owned\x07refused\n"
    "OK: hostile reached db:5432 via 10.0.0.1:5432\r\n"
    "2026-01-01T00:00:00.000Z\tINFO\tBridge connected\x9b31m"
)


async def test_agent_text_reaches_the_operator_escaped(launch, bridge, nursery):
    bridge_id, secret = await trio.to_thread.run_sync(add_bridge, bridge.data_dir, "hostile")
    relay = await trio.to_thread.run_sync(launch.relay)
    outputs = []
    async with hostile_agent(relay.agent_port, bridge_id, secret, ATTACKER) as session:

        async def answer(status: ConnectStatus) -> None:
            stream = await session.accept_stream()
            parser = ConnectRequestParser()
            while parser.feed(await stream.receive_some()) is None:
                pass
            await stream.send_all(encode_connect_reply(ConnectReply(status, EVIL)))

        for status in (ConnectStatus.NOT_ALLOWED, ConnectStatus.OK):
            nursery.start_soon(answer, status)
            outputs.append(
                await trio.to_thread.run_sync(
                    relay_cli, bridge.data_dir, "test", "hostile", "db:5432"
                )
            )
    refused, accepted = outputs
    print(f"\nbridge-relay test printed:\n{refused.stderr!r}\n{accepted.stdout!r}")
    assert refused.returncode == 1 and accepted.returncode == 0
    for text in (refused.stderr, accepted.stdout):
        assert text.count("\n") == 1 and text.endswith("\n")  # one line, no forged ones
        assert text.isprintable() or text[:-1].isprintable()
        assert "\\x1b[2J" in text and "\\n" in text
    log = relay.process.stderr()
    # Tabs separate a record's parts: any other control character would be the agent's.
    assert all(line.replace("\t", " ").isprintable() for line in log.splitlines())
    assert all(line.count("\t") <= 3 for line in log.splitlines())
    assert "\x1b" not in log and "\x9b" not in log and "[2J" in log
    assert tracebacks(log) == 0
    nursery.cancel_scope.cancel()
