# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""A SOCKS5 front door (RFC 1928, CONNECT only) to the relay's tunnels.

A client asks for `<target-host>.bridge-<bridge name or ID>` and the connection is tunneled
to target-host through that bridge, so any SOCKS-capable client (curl `--socks5-hostname`,
`socks5h://` proxy URLs, ssh `ProxyCommand`) reaches private services unchanged. The relay
has no egress of its own: IP addresses and other hostnames are refused. Optional RFC 1929
username/password authentication.

Replies (RFC 1928 codes):

    0x01 general failure             malformed request, bridge at its limits, relay draining,
                                     the agent failed
    0x02 not allowed by ruleset      not HOST.bridge-BRIDGE (an IP address, another hostname,
                                     an invalid target), or the agent's allow-list refused it
    0x03 network unreachable         unknown bridge, or none of its agents is connected
    0x04 host unreachable            the agent's DNS lookup failed, or the target timed out or
                                     was unreachable
    0x05 connection refused          the target refused the connection
    0x07 command not supported       BIND, UDP ASSOCIATE
    0x08 address type not supported  not IPv4, domain name or IPv6

Timeouts get 0x04 rather than 0x06 (TTL expired), which clients show as a routing problem.
Each refusal is logged once on the `relay.socks` logger with its reason.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import logging
import re
import time
from typing import Any

import attrs
import trio

from bridge.ops.metrics import TunnelMetrics
from bridge.protocol.addresses import format_host_port, format_socket_address
from bridge.protocol.connect import ConnectRequest, ConnectStatus
from bridge.protocol.refusal import Refused
from bridge.transport.splice import reset_stream, splice_tunnel
from relay.audit import Caller
from relay.errors import (
    BridgeNotConnected,
    RelayError,
    RelayShuttingDown,
    TargetNotAllowed,
    TargetUnreachable,
    UnknownBridge,
)
from relay.handover import hand_over
from relay.limits import LoginLimiter, source_of
from relay.os_limits import listen_backlog

log = logging.getLogger("relay.socks")

MARKER = ".bridge-"
_BRIDGE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_COMMANDS = {1: "CONNECT", 2: "BIND", 3: "UDP ASSOCIATE"}
_NO_AUTH, _USER_PASSWORD, _NO_METHOD = 0x00, 0x02, 0xFF
_USAGE = "ask for HOST.bridge-BRIDGE and let the proxy resolve it (socks5h://, --socks5-hostname)"


class Reply(enum.IntEnum):
    """SOCKS5 reply codes (RFC 1928, section 6)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


def _check_credentials(instance: Any, attribute: Any, value: tuple[str, str] | None) -> None:
    if value is not None and (
        len(value) != 2 or not all(1 <= len(part.encode()) <= 255 for part in value)
    ):
        raise ValueError("SOCKS username and password must each be 1 to 255 bytes of UTF-8")


@attrs.frozen(kw_only=True)
class SocksConfig:
    """handshake_timeout: seconds a client has for its greeting, authentication and request.
    credentials: (username, password) clients must give (RFC 1929); None: no authentication.
    auth_failures_per_minute: wrong passwords one source address (IPv4 address, IPv6 /64) may
        try per minute, in a burst of as many; beyond, it is locked out: every attempt, the
        right password too, fails unchecked until the minute has given it a try back.
    log_interval: lockouts are summed up in one log line per source per this many seconds.
    """

    handshake_timeout: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    auth_failures_per_minute: int = attrs.field(default=10, validator=attrs.validators.gt(0))
    log_interval: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    credentials: tuple[str, str] | None = attrs.field(
        default=None,
        converter=attrs.converters.optional(tuple),
        validator=_check_credentials,
        repr=False,
    )


def parse_bridge_host(name: str) -> tuple[str, str] | None:
    """`<target-host>.bridge-<bridge>` -> (bridge, target host); None for any other name.

    The marker is matched case-insensitively and a trailing dot is ignored."""
    name = name[:-1] if name.endswith(".") else name
    at = name.lower().rfind(MARKER)
    if at < 1:
        return None
    target, bridge = name[:at], name[at + len(MARKER) :]
    return (bridge, target) if _BRIDGE.fullmatch(bridge) else None


class _Dropped(Exception):
    """The client is not speaking SOCKS5 or went away: close without an answer."""


@attrs.frozen
class _Answer:
    """What a refused client is sent (a method, auth or request reply), and its name for the
    log line."""

    name: str
    data: bytes


_NO_ACCEPTABLE_METHODS = _Answer("NO_ACCEPTABLE_METHODS", bytes([5, _NO_METHOD]))
_AUTH_FAILED = _Answer("AUTH_FAILED", b"\x01\x01")
_LOCKED_OUT = _Answer("LOCKED_OUT", _AUTH_FAILED.data)  # RFC 1929 has one failure reply
#: Source addresses the authentication rate limit remembers (least recently failed forgotten).
_RATE_LIMIT_SOURCES = 10_000


def _reply(code: Reply) -> bytes:
    """A request reply; the bound address is left as 0.0.0.0:0."""
    return bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0])


def _refuse(code: Reply, reason: str, **fields: Any) -> Refused[_Answer]:
    return Refused(_Answer(code.name, _reply(code)), reason, **fields)


@attrs.frozen
class _Request:
    bridge: str
    host: str
    port: int

    @property
    def target(self) -> str:
        return format_host_port(self.host, self.port)


async def serve_socks(
    relay,
    host: str | None,
    port: int,
    *,
    config: SocksConfig = SocksConfig(),
    metrics: TunnelMetrics | None = None,
    listeners: list[trio.SocketListener] | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept SOCKS5 clients on host:port (or on `listeners`, bound elsewhere) until cancelled
    (port 0: any free port) and tunnel their connections through `relay`. Under workers, a
    worker without any session leaves the clients to those with one, and a request for a
    bridge another worker holds is handed to it after the handshake (see
    `relay.handover`). `task_status.started` gets the listeners, which close
    when the relay stops accepting (connections in go on). `metrics` counts SOCKS
    authentication failures and requests for targets that are not bridge hosts (the relay
    counts the tunnels themselves)."""
    if listeners is None:
        listeners = await trio.open_tcp_listeners(port, host=host, backlog=listen_backlog())
    metrics = metrics or TunnelMetrics()
    limiter = LoginLimiter(config.auth_failures_per_minute, _RATE_LIMIT_SOURCES)

    async def handle(client: trio.SocketStream) -> None:
        try:
            await _serve_client(relay, config, metrics, limiter, client)
        except Exception:
            log.exception("SOCKS connection failed")

    # Under workers, one without any session leaves the clients to those with one.
    async def ready() -> None:
        if relay.handover is not None:
            await relay.handover.wait_to_accept(None)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_report_lockouts, limiter, config)
        await relay.serve_listeners(handle, listeners, ready=ready, task_status=task_status)
        nursery.cancel_scope.cancel()


async def _report_lockouts(limiter: LoginLimiter, config: SocksConfig) -> None:
    """One log line per locked-out source and interval, instead of one per attempt."""
    interval = config.log_interval
    while True:
        await trio.sleep(min(1.0, interval))
        for source, count, seconds in limiter.summaries(interval):
            _log(
                logging.WARNING,
                f"SOCKS authentication failures from {source}: {count} in the last "
                f"{seconds:.0f} s, locked out",
                source=source,
                failures=count,
                limit=f"{config.auth_failures_per_minute} per minute",
            )


async def _serve_client(
    relay,
    config: SocksConfig,
    metrics: TunnelMetrics,
    limiter: LoginLimiter,
    client: trio.SocketStream,
) -> None:
    async with client:
        try:
            peer = format_socket_address(client.socket.getpeername())
        except OSError:
            return
        try:
            with trio.fail_after(config.handshake_timeout):
                request = await _handshake(client, config, metrics, limiter, peer)
        except Refused as refusal:
            await _send_refusal(client, refusal, peer)
            return
        except trio.TooSlowError:
            _log(
                logging.INFO,
                "SOCKS connection dropped",
                client=peer,
                reason=f"no complete request within {config.handshake_timeout:g} s",
            )
            return
        except (_Dropped, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            _log(
                logging.INFO,
                "SOCKS connection dropped",
                client=peer,
                reason=str(exc) or "connection reset",
            )
            return
        user = None if config.credentials is None else config.credentials[0]
        details = {"host": request.host, "port": request.port, "user": user}
        if await hand_over(relay, client, request.bridge, "socks", details):
            return
        await _tunnel(relay, client, request, peer, user, details)


async def serve_handed_over(
    relay, client: trio.SocketStream, bridge: str, details: dict[str, Any]
) -> None:
    """Serve a SOCKS client another worker did the handshake with (see `relay.handover`):
    `details` holds its request's ``host``, ``port`` and ``user``. Closes `client`; raises
    nothing for a client or tunnel that breaks."""
    async with client:
        try:
            peer = format_socket_address(client.socket.getpeername())
            request = _Request(bridge, str(details["host"]), int(details["port"]))
        except (OSError, KeyError, TypeError, ValueError):
            return
        user = details.get("user")
        await _tunnel(relay, client, request, peer, user if isinstance(user, str) else None)


async def _send_refusal(client: trio.SocketStream, refusal: Refused[_Answer], peer: str) -> None:
    if refusal.status is not _LOCKED_OUT:  # those are summed up per interval
        _log(
            logging.WARNING,
            "SOCKS request refused",
            client=peer,
            **refusal.fields,
            reply=refusal.status.name,
            reason=refusal.message,
        )
    try:
        await client.send_all(refusal.status.data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _tunnel(
    relay,
    client: trio.SocketStream,
    request: _Request,
    peer: str,
    user: str | None,
    details: dict[str, Any] | None = None,
) -> None:
    """Open the tunnel of `request`, answer the client, splice; the caller closes `client`.
    With `details` (a client this worker did the handshake with), a worker that began to
    drain during the open hands the client to the bridge's next holder instead of refusing
    it (nothing reached the target)."""
    try:
        remote = await _open(relay, request, Caller("socks", user=user, address=peer))
    except _Draining as draining:
        if details is None or not await hand_over(relay, client, request.bridge, "socks", details):
            await _send_refusal(client, draining.refusal, peer)
        return
    except Refused as refusal:
        await _send_refusal(client, refusal, peer)
        return
    started = time.monotonic()
    async with remote:
        try:
            await client.send_all(_reply(Reply.SUCCEEDED))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            sent, received, clean = 0, 0, False
            reset_stream(remote)
        else:
            sent, received, clean = await splice_tunnel(client, remote)
    _log(
        logging.INFO,
        "SOCKS connection closed",
        client=peer,
        bridge=request.bridge,
        target=request.target,
        bytes=sent + received,
        bytes_sent=sent,
        bytes_received=received,
        duration=round(time.monotonic() - started, 3),
        clean=clean,
    )


class _Draining(Exception):
    """An open found the relay draining: nothing reached the target. `refusal` is the reply
    to send if the client is not handed over."""

    def __init__(self, refusal: Refused[_Answer]) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


async def _open(relay, request: _Request, caller: Caller) -> trio.abc.HalfCloseableStream:
    """The tunnel for `request`; the relay's refusals become SOCKS replies (`_Draining` for
    one another worker might still serve)."""
    fields = {"bridge": request.bridge, "target": request.target}
    try:
        return await relay.connect(request.bridge, request.host, request.port, caller=caller)
    except (UnknownBridge, BridgeNotConnected) as exc:
        raise _refuse(Reply.NETWORK_UNREACHABLE, str(exc), **fields) from None
    except RelayShuttingDown as exc:
        raise _Draining(_refuse(Reply.GENERAL_FAILURE, str(exc), **fields)) from None
    except TargetNotAllowed as exc:
        raise _refuse(Reply.NOT_ALLOWED, str(exc), **fields) from None
    except TargetUnreachable as exc:
        refused = exc.status == ConnectStatus.CONNECTION_REFUSED
        code = Reply.CONNECTION_REFUSED if refused else Reply.HOST_UNREACHABLE
        raise _refuse(code, str(exc), **fields) from None
    except (RelayError, ValueError) as exc:
        raise _refuse(Reply.GENERAL_FAILURE, str(exc), **fields) from None


async def _handshake(
    client: trio.SocketStream,
    config: SocksConfig,
    metrics: TunnelMetrics,
    limiter: LoginLimiter,
    peer: str,
) -> _Request:
    """Greeting, authentication, request: the tunnel asked for, or `Refused` / `_Dropped`."""
    version, count = await _receive(client, 2)
    if version != 5:
        hint = ": SOCKS4 is not supported, use SOCKS5" if version == 4 else ""
        raise _Dropped(f"not a SOCKS5 client (first byte {version:#04x}){hint}")
    methods = await _receive(client, count)
    wanted = _NO_AUTH if config.credentials is None else _USER_PASSWORD
    if wanted not in methods:
        if config.credentials is None:
            reason = "the client offered no method this proxy accepts (it needs no password)"
        else:
            reason = "the client offered no username/password (socks5h://USER:PASSWORD@...)"
        raise Refused(_NO_ACCEPTABLE_METHODS, reason)
    await client.send_all(bytes([5, wanted]))
    if config.credentials is not None:
        await _authenticate(client, config.credentials, metrics, limiter, source_of(peer))
    return await _read_request(client, metrics)


async def _authenticate(
    client: trio.SocketStream,
    credentials: tuple[str, str],
    metrics: TunnelMetrics,
    limiter: LoginLimiter,
    source: str,
) -> None:
    """RFC 1929. Both parts are compared in constant time (as digests, to hide lengths).
    A source over its limit of failures is refused without a check (`_LOCKED_OUT`)."""
    version, length = await _receive(client, 2)
    if version != 1:
        raise Refused(_AUTH_FAILED, f"malformed authentication (version {version})")
    username = await _receive(client, length)
    password = await _receive(client, (await _receive(client, 1))[0])
    if not limiter.charge(source):  # counted in the interval's summary
        metrics.auth_failures.inc(listener="socks")
        raise Refused(_LOCKED_OUT, "too many failed logins from this address: locked out")
    ok = _same(username, credentials[0]) & _same(password, credentials[1])
    if not ok:
        metrics.auth_failures.inc(listener="socks")
        limiter.failed(source)
        raise Refused(_AUTH_FAILED, "wrong username or password")
    limiter.refund(source)  # only failures use the budget up
    await client.send_all(b"\x01\x00")


def _same(given: bytes, expected: str) -> bool:
    digest = hashlib.sha256
    return hmac.compare_digest(digest(given).digest(), digest(expected.encode()).digest())


async def _read_request(client: trio.SocketStream, metrics: TunnelMetrics) -> _Request:
    version, command, _, kind = await _receive(client, 4)
    if version != 5:
        raise _refuse(Reply.GENERAL_FAILURE, f"malformed request (version {version})")
    if kind == 1:
        host = str(ipaddress.IPv4Address(await _receive(client, 4)))
    elif kind == 4:
        host = str(ipaddress.IPv6Address(await _receive(client, 16)))
    elif kind == 3:
        raw = await _receive(client, (await _receive(client, 1))[0])
        host = "".join(chr(c) if 0x20 < c < 0x7F else "?" for c in raw)  # fit for the log
    else:
        raise _refuse(Reply.ADDRESS_TYPE_NOT_SUPPORTED, f"address type {kind} is not supported")
    port = int.from_bytes(await _receive(client, 2), "big")
    target = format_host_port(host, port)
    if command != 1:
        name = _COMMANDS.get(command, f"command {command}")
        raise _refuse(
            Reply.COMMAND_NOT_SUPPORTED, f"only CONNECT is supported, not {name}", target=target
        )
    if kind != 3:
        reason = f"an IP address names no bridge: {_USAGE}"
    elif (parsed := parse_bridge_host(host)) is None:
        reason = f"not a bridge host (the relay reaches nothing directly): {_USAGE}"
    else:
        bridge, host = parsed
        try:
            ConnectRequest(host, port)  # what the agent will be sent must be valid
        except ValueError as exc:
            reason = f"invalid target: {exc}"
        else:
            return _Request(bridge, host, port)
    metrics.refused.inc(reason="not_a_bridge_host")
    raise _refuse(Reply.NOT_ALLOWED, reason, target=target)


async def _receive(client: trio.SocketStream, size: int) -> bytes:
    """Exactly `size` bytes (at most 255: every SOCKS field is bounded by its length byte),
    never reading past them: what follows the request belongs to the tunnel."""
    data = bytearray()
    while len(data) < size:
        chunk = await client.receive_some(size - len(data))
        if not chunk:
            raise _Dropped("closed during the handshake")
        data += chunk
    return bytes(data)


def _log(level: int, message: str, **fields: Any) -> None:
    log.log(level, message, extra={"fields": fields})
