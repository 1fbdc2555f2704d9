# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The local control channel of a running relay: a Unix socket in the data dir (mode 0600).

One JSON object per line each way, one request per connection:
`{"op": "status"}` -> `{"ok": true, "bridges": {ID: [{"peer": ..., ...}, ...]}}`;
`{"op": "test", "bridge": B, "host": H, "port": P}` -> `{"ok": true, "address": ...}` or
`{"ok": false, "error": "<the agent's message>", "kind": "TargetNotAllowed"}`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
from functools import partial
from pathlib import Path
from typing import Any

import trio

from bridge.ops.accept import serve_listeners
from bridge.ops.errors import os_reason
from relay.audit import Caller
from relay.errors import RelayError

log = logging.getLogger("relay.admin")

SOCKET_NAME = "relay.sock"
#: Each worker of ``serve --workers`` answers on its own socket: relay-worker-PID.sock.
WORKER_SOCKET_GLOB = "relay-worker-*.sock"
MAX_LINE = 64 * 1024
PROBE_LABEL = "bridge-relay test"


def worker_socket_name(pid: int | None = None) -> str:
    """The control socket's name for the worker process `pid` (default: this one)."""
    return f"relay-worker-{os.getpid() if pid is None else pid}.sock"


def socket_paths(data_dir: Path) -> list[Path]:
    """The control sockets of the relay serving `data_dir`: its own, or its workers'."""
    return [data_dir / SOCKET_NAME, *sorted(data_dir.glob(WORKER_SOCKET_GLOB))]


class AdminUnavailable(RelayError):
    """No relay answers on this control socket."""


async def serve_admin(relay, path: str | os.PathLike[str], *, task_status=trio.TASK_STATUS_IGNORED):
    """Answer control requests on the Unix socket `path` until cancelled.

    `task_status` gets the listener, or None when the socket cannot be set up (the relay
    then runs without a control channel and says so in the log).
    """
    path = Path(path)
    listener = await _bind(path)
    if listener is None:
        task_status.started(None)
        return
    inode = os.stat(path).st_ino
    try:
        await serve_listeners(
            partial(_handle, relay), [listener], shed=relay.note_shed, task_status=task_status
        )
    finally:
        try:
            if os.stat(path).st_ino == inode:
                path.unlink()
        except OSError:
            pass


async def _bind(path: Path) -> trio.SocketListener | None:
    if path.is_socket():
        try:
            probe = await trio.open_unix_socket(str(path))
        except OSError:
            path.unlink(missing_ok=True)  # left behind by a relay that did not exit cleanly
        else:
            await probe.aclose()
            _unavailable(path, "another relay is serving this data dir")
            return None
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(str(path))
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        sock.listen()
    except OSError as exc:
        sock.close()
        _unavailable(path, os_reason(exc))
        return None
    return trio.SocketListener(sock)


def _unavailable(path: Path, reason: str) -> None:
    log.warning(
        "Control socket disabled: 'bridges list' and 'test' cannot reach this relay",
        extra={"fields": {"path": str(path), "reason": reason}},
    )


async def _handle(relay, stream: trio.SocketStream) -> None:
    async with stream:
        try:
            # A client gets as long to send its request as an agent gets for its handshake.
            with trio.fail_after(relay.config.handshake_timeout):
                line = await read_line(stream)
            reply = await _dispatch(relay, json.loads(line))
        except trio.TooSlowError:
            return
        except (ValueError, KeyError, TypeError) as exc:
            reply = {"ok": False, "error": f"bad request: {exc}", "kind": "BadRequest"}
        except trio.BrokenResourceError:
            return
        try:
            await stream.send_all(json.dumps(reply).encode() + b"\n")
        except trio.BrokenResourceError:
            pass


async def _dispatch(relay, request: dict[str, Any]) -> dict[str, Any]:
    op = request["op"]
    if op == "status":
        bridges: dict[str, list[dict[str, Any]]] = {}
        for session in relay.registry:
            bridges.setdefault(session.bridge_id, []).append(session.describe())
        return {"ok": True, "bridges": bridges}
    if op == "test":
        bridge, host, port = str(request["bridge"]), str(request["host"]), int(request["port"])
        try:
            address = await relay.probe(bridge, host, port, caller=Caller("test", PROBE_LABEL))
        except RelayError as exc:
            return {"ok": False, "error": str(exc), "kind": type(exc).__name__}
        return {"ok": True, "address": address}
    raise ValueError(f"unknown op {op!r}")


async def read_line(stream: trio.abc.ReceiveStream) -> bytes:
    """One line from `stream`, without its newline (bytes after it are dropped). Raises
    ValueError for a line longer than MAX_LINE, `trio.BrokenResourceError` when the stream
    ends first. Cancelled, the bytes read so far are lost."""
    buffer = bytearray()
    while b"\n" not in buffer:
        if len(buffer) > MAX_LINE:
            raise ValueError(f"line longer than {MAX_LINE} bytes")
        data = await stream.receive_some(MAX_LINE)
        if not data:
            raise trio.BrokenResourceError("connection closed before a full line")
        buffer += data
    return bytes(buffer[: buffer.index(b"\n")])


async def request(path: str | os.PathLike[str], message: dict[str, Any]) -> dict[str, Any]:
    """Send one request to the relay serving `path`; AdminUnavailable if none does."""
    try:
        stream = await trio.open_unix_socket(str(path))
    except OSError as exc:
        raise AdminUnavailable(f"no relay is running on {path}: {os_reason(exc)}") from None
    async with stream:
        try:
            await stream.send_all(json.dumps(message).encode() + b"\n")
            return json.loads(await read_line(stream))
        except trio.BrokenResourceError as exc:
            raise AdminUnavailable(f"the relay on {path} closed the connection: {exc}") from None
