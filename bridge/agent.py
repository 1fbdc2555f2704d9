# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The agent: dials the relay, authenticates, and serves the streams the relay opens.

Per stream: read the `ConnectRequest`, check the allow-list against the resolved addresses,
dial exactly a checked address, answer with a `ConnectReply`, then copy bytes both ways with
half-close carried through.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import struct
import time
from typing import Any, Iterable

import attrs
import trio

import mux

from . import __version__, logs
from .allowlist import AllowList
from .connect import (
    MAX_MESSAGE,
    MAX_REQUEST,
    ConnectError,
    ConnectReply,
    ConnectRequest,
    ConnectRequestParser,
    ConnectStatus,
    encode_connect_reply,
)
from .handshake import (
    PROTOCOL_VERSION,
    HandshakeError,
    Hello,
    Welcome,
    WelcomeParser,
    WelcomeStatus,
    encode_hello,
)
from .prefixed_stream import PrefixedStream
from .relay_url import RelayURL, format_address
from .tls import FingerprintMismatch, PinnedSSLContext, check_fingerprint
from .tls_stream import TLSStream

log = logging.getLogger("bridge.agent")

_positive = [attrs.validators.instance_of((int, float)), attrs.validators.gt(0)]


@attrs.frozen(kw_only=True)
class AgentConfig:
    """Durations are seconds."""

    #: TCP connect to the relay, and to each target address.
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: TLS handshake plus Hello/Welcome.
    handshake_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: The relay must send a stream's connect request within this, and DNS must answer within it.
    request_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: How much one read from a target or a stream asks for.
    copy_size: int = attrs.field(default=256 * 1024, validator=attrs.validators.ge(64 * 1024))
    #: Settings of the yamux session; None for mux's defaults.
    mux_config: mux.Config | None = None


class AgentError(Exception):
    """The agent could not (or can no longer) serve the relay."""


class RelayUnavailable(AgentError):
    """The relay could not be reached, failed TLS, broke the handshake, or asked to retry later."""


class RelayRejected(AgentError):
    """The relay refused this agent for a reason retrying will not fix."""

    def __init__(self, message: str, status: WelcomeStatus) -> None:
        super().__init__(message)
        self.status = status


class AuthenticationFailed(RelayRejected):
    """The relay rejected the bridge ID or secret."""


class _Refused(Exception):
    """A stream's target cannot be served; carries the reply to send."""

    def __init__(self, status: ConnectStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _fields(**fields: Any) -> dict[str, Any]:
    return {"fields": fields}


def _printable(text: str) -> str:
    """Text from the network, made safe to put in a log line."""
    return "".join(c if c.isprintable() else "?" for c in text)


class Agent:
    """Serves one bridge: ``await nursery.start(agent.run)`` returns once authenticated.

    ``allow`` is an `AllowList` or allow-list entries; it must not be empty (use
    ``AllowList.any()`` to allow every target). ``ssl_context`` comes from
    `bridge.tls.client_ssl_context`.
    """

    def __init__(
        self,
        relay_url: str | RelayURL,
        bridge_id: str,
        secret: str,
        allow: AllowList | Iterable[str],
        ssl_context: ssl.SSLContext,
        *,
        config: AgentConfig | None = None,
    ) -> None:
        self.relay_url = relay_url if isinstance(relay_url, RelayURL) else RelayURL.parse(relay_url)
        self.allow = allow if isinstance(allow, AllowList) else AllowList.parse(allow)
        if not self.allow:
            raise ValueError("the allow-list is empty: give HOST:PORT entries, or AllowList.any()")
        info = {"agent": f"trio-bridge/{__version__}", "hostname": socket.gethostname()}
        self._hello = Hello(bridge_id, secret, info)
        self.bridge_id = bridge_id
        self.ssl_context = ssl_context
        self.config = config or AgentConfig()
        logs.register_secret(secret)

    def __repr__(self) -> str:
        return f"<Agent {self.bridge_id} -> {self.relay_url}>"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, authenticate, and serve streams until the session ends.

        Raises `AuthenticationFailed` or `RelayRejected` when the relay refuses this agent,
        `RelayUnavailable` when it cannot be reached or the handshake fails.
        """
        await self.run_session(task_status=task_status)

    async def run_session(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """One session: connect, authenticate, serve, return when the relay goes away."""
        transport, leftover = await self._connect()
        lost: mux.SessionClosed | None = None
        async with mux.open_session(
            PrefixedStream(transport, leftover), client=True, config=self.config.mux_config
        ) as session:
            log.info("Handling incoming proxy connections")
            task_status.started()
            async with trio.open_nursery() as nursery:
                try:
                    async for stream in session:
                        nursery.start_soon(self._serve_stream, stream)
                except mux.SessionClosed as exc:
                    lost = exc
        address = self.relay_url.address
        log.warning("Disconnected from bridge server", extra=_fields(address=address))
        if lost is not None:
            raise RelayUnavailable(f"Lost the connection to the relay at {address}: {lost}")

    # -- connecting to the relay ------------------------------------------------------------

    async def _connect(self) -> tuple[TLSStream, bytes]:
        """TCP, TLS and the handshake; returns the transport and the bytes after the Welcome."""
        url = self.relay_url
        log.info("Connecting to bridge server", extra=_fields(address=url.address))
        try:
            with trio.fail_after(self.config.connect_timeout):
                tcp = await trio.open_tcp_stream(url.host, url.port)
        except trio.TooSlowError:
            raise RelayUnavailable(f"Timed out connecting to the relay at {url.address}") from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise RelayUnavailable(f"Cannot connect to the relay at {url.address}: {reason}") from None
        pinned = isinstance(self.ssl_context, PinnedSSLContext)
        transport = TLSStream.wrap(
            tcp, self.ssl_context, server_side=False, server_hostname=None if pinned else url.host
        )
        try:
            with trio.fail_after(self.config.handshake_timeout):
                leftover = await self._handshake(transport)
        except trio.TooSlowError:
            await trio.aclose_forcefully(transport)
            message = f"The relay at {url.address} did not finish the handshake in time"
            raise RelayUnavailable(message) from None
        except BaseException:
            await trio.aclose_forcefully(transport)
            raise
        return transport, leftover

    async def _handshake(self, transport: TLSStream) -> bytes:
        """TLS, certificate pin, Hello, Welcome; returns the bytes received after the Welcome."""
        address = self.relay_url.address
        try:
            await transport.do_handshake()
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__ or exc
            reason = _tls_reason(cause)
            if isinstance(cause, ssl.SSLCertVerificationError):
                reason += " (trust the relay with --ca FILE or --fingerprint sha256:HEX)"
            raise RelayUnavailable(f"TLS handshake with the relay at {address} failed: {reason}") from None
        if isinstance(self.ssl_context, PinnedSSLContext):
            try:
                check_fingerprint(transport, self.ssl_context.fingerprint)
            except FingerprintMismatch as exc:
                raise RelayUnavailable(f"Refusing the relay at {address}: {exc}") from None
        parser = WelcomeParser()
        try:
            await transport.send_all(encode_hello(self._hello))
            while (welcome := parser.feed(data := await transport.receive_some())) is None:
                if not data:
                    message = f"The relay at {address} closed the connection during the handshake"
                    raise RelayUnavailable(message)
        except trio.BrokenResourceError as exc:
            raise RelayUnavailable(f"Lost the connection to the relay at {address}: {exc}") from None
        except HandshakeError as exc:
            raise RelayUnavailable(f"Invalid handshake from the relay at {address}: {exc}") from None
        _check_welcome(welcome, address)
        return parser.leftover

    # -- serving one stream -----------------------------------------------------------------

    async def _serve_stream(self, stream: mux.Stream) -> None:
        """Never raises: a stream's failure is that stream's alone."""
        try:
            async with stream:
                await self._serve_request(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the stream was reset or the session ended: nothing left to tell anyone
        except Exception:
            log.exception("Unexpected error on a stream", extra=_fields(stream=stream.stream_id))
            stream.reset()

    async def _serve_request(self, stream: mux.Stream) -> None:
        try:
            request, early = await self._read_request(stream)
        except ConnectError as exc:
            message = f"Bad connect request: {exc}"
            log.warning(message, extra=_fields(stream=stream.stream_id))
            await _reply(stream, ConnectStatus.BAD_REQUEST, message)
            return
        if request is None:
            return
        info = {"target": format_address(request.host, request.port), "stream": stream.stream_id}
        try:
            target, address = await self._open_target(request)
        except _Refused as refusal:
            log.warning(refusal.message, extra=_fields(**info))
            await _reply(stream, refusal.status, refusal.message)
            return
        async with target:
            await _reply(stream, ConnectStatus.OK, address)
            log.info("Proxying connection", extra=_fields(**info, address=address))
            started = time.monotonic()
            sent, received = await self._splice(stream, target, early)
            duration = round(time.monotonic() - started, 3)
            log.debug(
                "Connection closed",
                extra=_fields(**info, bytes_sent=sent, bytes_received=received, duration=duration),
            )

    async def _read_request(self, stream: mux.Stream) -> tuple[ConnectRequest | None, bytes]:
        """The stream's connect request and any bytes sent after it; None if it never came."""
        parser = ConnectRequestParser()
        with trio.move_on_after(self.config.request_timeout):
            while (request := parser.feed(data := await stream.receive_some(MAX_REQUEST))) is None:
                if not data:
                    return None, b""  # closed before asking for anything
            return request, parser.leftover
        log.warning("No connect request in time", extra=_fields(stream=stream.stream_id))
        stream.reset()
        return None, b""

    async def _open_target(self, request: ConnectRequest) -> tuple[trio.SocketStream, str]:
        """Allow-list, DNS, dial: returns the connected stream and the address dialed."""
        host, port = request.host, request.port
        refusal = _Refused(
            ConnectStatus.NOT_ALLOWED, f"Host not in allowed hosts list: {format_address(host, port)}"
        )
        if not self.allow.may_allow(host, port):
            raise refusal
        candidates = await self._resolve(host, port)
        allowed = set(self.allow.allowed_addresses(host, port, [c[4][0] for c in candidates]))
        for family, type_, proto, _, sockaddr in candidates:
            if sockaddr[0] not in allowed:
                continue
            address = format_address(sockaddr[0], port)
            sock = trio.socket.socket(family, type_, proto)
            try:
                with trio.fail_after(self.config.connect_timeout):
                    await sock.connect(sockaddr)
            except trio.TooSlowError:
                refusal = _Refused(ConnectStatus.TIMEOUT, f"Connection timed out: {address}")
            except OSError as exc:
                refusal = _connect_refusal(exc, address)
            except BaseException:
                sock.close()
                raise
            else:
                return trio.SocketStream(sock), address
            sock.close()
        raise refusal

    async def _resolve(self, host: str, port: int) -> list[tuple[Any, ...]]:
        """The host's addresses, resolved once: these (and only these) are checked and dialed."""
        try:
            with trio.fail_after(self.config.request_timeout):
                infos = await trio.socket.getaddrinfo(
                    host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
        except trio.TooSlowError:
            reason = "timed out"
        except (OSError, UnicodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
        else:
            inet = [info for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]
            return list({info[4][:2]: info for info in inet}.values())
        raise _Refused(ConnectStatus.DNS_FAILURE, f"DNS lookup failed for {host}: {reason}")

    async def _splice(self, stream: mux.Stream, target: trio.SocketStream, early: bytes) -> tuple[int, int]:
        """Copy both ways until both sides sent EOF; an error on either side aborts both.

        Returns the byte counts (to the target, from the target).
        """
        counts = [len(early), 0]
        size = self.config.copy_size

        async def pump(source: trio.abc.ReceiveStream, sink: trio.abc.HalfCloseableStream, i: int) -> None:
            while data := await source.receive_some(size):
                await sink.send_all(data)
                counts[i] += len(data)
            await sink.send_eof()

        try:
            if early:
                await target.send_all(early)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, stream, target, 0)
                nursery.start_soon(pump, target, stream, 1)
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            stream.reset()
            _abort(target)
        return counts[0], counts[1]


def _check_welcome(welcome: Welcome, address: str) -> None:
    """Raise unless the relay accepted this agent."""
    status = welcome.status
    if status == WelcomeStatus.OK and welcome.version == PROTOCOL_VERSION:
        return
    reason = f": {_printable(welcome.message)}" if welcome.message else ""
    if status == WelcomeStatus.AUTH_FAILED:
        raise AuthenticationFailed(f"Relay rejected the bridge credentials{reason}", status)
    if status in (WelcomeStatus.BUSY, WelcomeStatus.INTERNAL_ERROR):
        raise RelayUnavailable(f"The relay at {address} cannot take the bridge now ({status.name}){reason}")
    if status == WelcomeStatus.UNSUPPORTED_VERSION or welcome.version != PROTOCOL_VERSION:
        raise RelayRejected(
            f"The relay speaks bridge protocol version {welcome.version}, "
            f"this agent version {PROTOCOL_VERSION}{reason}",
            WelcomeStatus.UNSUPPORTED_VERSION,
        )
    raise RelayRejected(f"The relay rejected the handshake ({status.name}){reason}", status)


async def _reply(stream: mux.Stream, status: ConnectStatus, message: str) -> None:
    raw = message.encode()[:MAX_MESSAGE].decode(errors="ignore")
    await stream.send_all(encode_connect_reply(ConnectReply(status, raw)))


def _connect_refusal(exc: OSError, address: str) -> _Refused:
    if exc.errno == errno.ECONNREFUSED:
        return _Refused(ConnectStatus.CONNECTION_REFUSED, f"Connection refused: {address}")
    if exc.errno == errno.ETIMEDOUT:
        return _Refused(ConnectStatus.TIMEOUT, f"Connection timed out: {address}")
    return _Refused(ConnectStatus.UNREACHABLE, f"{exc.strerror or exc}: {address}")


def _abort(target: trio.SocketStream) -> None:
    """Make the target see a reset rather than a clean close."""
    try:
        target.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


def _tls_reason(exc: BaseException) -> str:
    reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
    return reason or type(exc).__name__
