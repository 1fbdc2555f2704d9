# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Password guessing against a real relay's SOCKS5 listener: the guessing address is locked
out (even the right password fails from it), logged once per interval, while a client on
another address logs in and reaches its target."""

from __future__ import annotations

import re
import time
from functools import partial

import trio

from .quota_support import (
    ATTACKER,
    VICTIM,
    echo,
    receive_exactly,
    socks_login,
    tracebacks,
)

USER, PASSWORD = b"operator", b"correct horse battery staple"
GUESS_TIME = 5.0
FAILURES_PER_MINUTE = 10  # SocksConfig's default


async def test_socks_password_guessing_is_locked_out(launch, bridge, nursery):
    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    echo_port = listeners[0].socket.getsockname()[1]
    target = f"127.0.0.1:{echo_port}"
    relay = await trio.to_thread.run_sync(
        partial(
            launch.relay,
            args=[
                "--socks",
                "127.0.0.1:0",
                "--socks-user",
                USER.decode(),
                "--socks-password",
                PASSWORD.decode(),
            ],
        )
    )
    socks = int(
        relay.process.wait_for(r"^socks: listening on 127\.0\.0\.1:(\d+)$", stream="stdout")[1]
    )
    await trio.to_thread.run_sync(launch.agent, relay, [target])

    guesses = accepted = 0
    started = time.monotonic()

    async def guesser(worker: int) -> None:
        nonlocal guesses, accepted
        while time.monotonic() - started < GUESS_TIME:
            ok, stream = await socks_login(
                socks, ATTACKER, USER, b"guess-%d-%d" % (worker, guesses)
            )
            await trio.aclose_forcefully(stream)
            guesses += 1
            accepted += ok

    async with trio.open_nursery() as attack:
        for worker in range(4):
            attack.start_soon(guesser, worker)
    elapsed = time.monotonic() - started
    # Locked out: from the guessing address even the right password fails...
    right_from_attacker, stream = await socks_login(socks, ATTACKER, USER, PASSWORD)
    await trio.aclose_forcefully(stream)
    # ...while a client elsewhere logs in and reaches its target through the bridge.
    right_from_victim, stream = await socks_login(socks, VICTIM, USER, PASSWORD)
    async with stream:
        host = f"127.0.0.1.bridge-{bridge.name}".encode()
        await stream.send_all(
            b"\x05\x01\x00\x03" + bytes([len(host)]) + host + echo_port.to_bytes(2, "big")
        )
        reply = await receive_exactly(stream, 10)
        await stream.send_all(b"ping")
        echoed = await receive_exactly(stream, 4)
    log = relay.process.stderr()
    refusals = log.count("SOCKS request refused")
    summaries = len(re.findall(r"SOCKS authentication failures from 127\.0\.0\.2: \d+", log))
    print(
        f"\n{guesses} guesses in {elapsed:.1f} s ({guesses / elapsed:.0f}/s) from one address: "
        f"{refusals} checked and logged, the rest locked out ({summaries} summary lines); "
        f"right password from there: {'accepted' if right_from_attacker else 'refused'}, "
        f"from another address: {'accepted' if right_from_victim else 'refused'}"
    )
    assert accepted == 0
    assert not right_from_attacker
    assert right_from_victim and reply[1] == 0 and echoed == b"ping"
    assert refusals <= FAILURES_PER_MINUTE + 1  # the burst, and maybe one token refilled
    assert tracebacks(log) == 0
    nursery.cancel_scope.cancel()
