# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""`bridge-relay demo`: relay, agent, a private HTTP server and a forward, in one process.

Everything listens on loopback and lives in a temporary directory: the relay's self-signed
certificate (pinned by the agent), an in-memory bridge store, and nothing else.
"""

from __future__ import annotations

import signal
import tempfile
import time

import h11
import trio

from bridge.agent.agent import Agent
from bridge.transport.tls import client_ssl_context
from relay.certificates import ensure_self_signed, fingerprint, server_ssl_context
from relay.config import RelayConfig
from relay.errors import RelayError
from relay.forward import ForwardSpec, serve_forward
from relay.relay import Relay
from relay.store import MemoryStore

BRIDGE_NAME = "demo"
DEMO_COST = 4  # bcrypt cost: the demo's secret is thrown away with the process
REQUESTS = ("/", "/hello", "/orders/42")
LOOPBACK = "127.0.0.1"


def _say(text: str = "") -> None:
    print(text, flush=True)


async def run_demo(interactive: bool) -> None:
    """The ``bridge-relay demo`` command: a relay, an agent, an HTTP server behind it and a
    forward on loopback in a temporary directory; prints requests going through and how to
    connect. With `interactive`, stays up until SIGINT or SIGTERM. Cancelled, it stops
    everything and removes the directory."""
    with tempfile.TemporaryDirectory(prefix="bridge-relay-demo-") as data_dir:
        cert, key = ensure_self_signed(data_dir)
        store = MemoryStore()
        bridge_id, secret = store.create_bridge(BRIDGE_NAME, cost=DEMO_COST)
        config = RelayConfig(bcrypt_cost=DEMO_COST)
        relay = Relay(store, server_ssl_context(cert, key), config=config)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on_signal, signals, nursery.cancel_scope)
                await _show(nursery, relay, bridge_id, secret, fingerprint(cert))
                if interactive:
                    _say("\nThe tunnel stays up until you press Ctrl-C.")
                    await trio.sleep_forever()
                _say(
                    "\nThe demo is over and the tunnel is gone (run in a terminal without "
                    "--once, it stays up until Ctrl-C)."
                )
                nursery.cancel_scope.cancel()


async def _show(nursery: trio.Nursery, relay: Relay, bridge_id: str, secret: str, pin: str):
    relay_port = _port(await nursery.start(relay.serve, LOOPBACK, 0))
    _say(f"relay:  listening for agents on {LOOPBACK}:{relay_port} (TLS, certificate {pin})")

    target_port = _port(await nursery.start(serve_http))
    _say(
        f"target: a small HTTP server on {LOOPBACK}:{target_port}, standing in for a private "
        "service"
    )

    allow = [f"{LOOPBACK}:{target_port}"]
    agent = Agent(
        f"tls://{LOOPBACK}:{relay_port}",
        bridge_id,
        secret,
        allow,
        client_ssl_context(fingerprint=pin),
    )
    await nursery.start(agent.run)
    _say(
        f"agent:  bridge {BRIDGE_NAME!r} ({bridge_id}) dialed out and authenticated; "
        f"ALLOW={allow[0]}"
    )

    spec = ForwardSpec(BRIDGE_NAME, LOOPBACK, target_port)
    forward_port = _port(await nursery.start(serve_forward, relay, spec))
    _say(f"forward {spec}: listening on {LOOPBACK}:{forward_port}")
    _say()
    _say("Connect through the tunnel:")
    _say(f"  hostname: {LOOPBACK}")
    _say(f"  port:     {forward_port}")
    _say(f"  curl http://{LOOPBACK}:{forward_port}/hello")
    _say()
    _say("Traffic through the tunnel (client -> forward -> relay -> agent -> target):")
    for path in REQUESTS:
        sent, response, seconds = await _get(forward_port, path)
        head, _, body = response.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode(errors="replace") or "no response"
        _say(
            f"  GET {path:<11} -> {status}: sent {sent} bytes, received {len(response)} bytes, "
            f"round trip {seconds * 1000:.1f} ms"
        )
    _say(f"  the target said: {body.decode(errors='replace').strip()}")
    try:
        await relay.connect(BRIDGE_NAME, LOOPBACK, 22)
    except RelayError as exc:
        _say(f"  {LOOPBACK}:22 (not in ALLOW) -> refused by the agent: {exc}")


def _port(listeners: list[trio.SocketListener]) -> int:
    return listeners[0].socket.getsockname()[1]


async def _cancel_on_signal(signals, scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
        return


async def _get(port: int, path: str) -> tuple[int, bytes, float]:
    """One HTTP/1.1 request through the forward: (bytes sent, the response, seconds)."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nConnection: close\r\n\r\n"
    ).encode()
    started = time.monotonic()
    stream = await trio.open_tcp_stream(LOOPBACK, port)
    async with stream:
        await stream.send_all(request)
        response = bytearray()
        while data := await stream.receive_some(65536):
            response += data
    return len(request), bytes(response), time.monotonic() - started


async def serve_http(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A tiny HTTP server on loopback: answers every request with a short text."""
    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    await trio.serve_listeners(_answer, listeners, task_status=task_status)


async def _answer(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    async with stream:
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Request):
                    break
                else:
                    return
            body = (
                f"Hello from the private network! You asked for {event.target.decode()} "
                f"at {time.strftime('%H:%M:%S')}.\n"
            ).encode()
            headers = [
                ("content-type", "text/plain; charset=utf-8"),
                ("content-length", str(len(body))),
                ("connection", "close"),
            ]
            response = h11.Response(status_code=200, headers=headers, reason=b"OK")
            await stream.send_all(conn.send(response))
            await stream.send_all(conn.send(h11.Data(data=body)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
        except (h11.ProtocolError, trio.BrokenResourceError):
            pass
