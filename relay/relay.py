# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The relay: admits agents, keeps their sessions, and opens tunnels through them.

Each agent connection runs in its own task: TLS, `Hello`, credential check and `Welcome`
within `RelayConfig.handshake_timeout`, then a yamux session (the relay is the server) kept in
the `Registry` until it ends. Whatever an agent connection does wrong ends that connection
only. `Relay.connect` opens a stream through one of the bridge's sessions and sends the
`ConnectRequest`; the agent's refusal comes back as an exception carrying its own words.
"""

from __future__ import annotations

import logging
import ssl
import time
import uuid
from typing import Any

import trio

import mux
from bridge.connect import (
    ConnectError,
    ConnectReply,
    ConnectReplyParser,
    ConnectRequest,
    ConnectStatus,
    encode_connect_request,
)
from bridge.handshake import (
    PROTOCOL_VERSION,
    HandshakeError,
    Hello,
    HelloParser,
    UnsupportedVersion,
    Welcome,
    WelcomeStatus,
    encode_welcome,
)
from bridge.prefixed_stream import PrefixedStream

from .addresses import format_address, format_host_port
from .config import RelayConfig
from .credentials import Verifier
from .errors import (
    BridgeNotConnected,
    TargetNotAllowed,
    TargetUnreachable,
    TunnelError,
)
from .registry import AgentSession, Registry
from .store import BridgeRecord, Store

log = logging.getLogger("relay.relay")

AUTH_FAILED_MESSAGE = "invalid bridge credentials"
_READ_SIZE = 4096
_UNREACHABLE = {
    ConnectStatus.DNS_FAILURE,
    ConnectStatus.CONNECTION_REFUSED,
    ConnectStatus.TIMEOUT,
    ConnectStatus.UNREACHABLE,
}


def _extra(**fields: Any) -> dict[str, Any]:
    return {"fields": fields}


def _log(level: int, message: str, **fields: Any) -> None:
    log.log(level, message, extra=_extra(**fields))


class _Refused(Exception):
    """An agent connection is turned away; `status` and the message go into the Welcome."""

    def __init__(self, status: WelcomeStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Relay:
    """Serves agents on one or more listeners and tunnels connections through them.

    `store` holds the bridges (`SQLiteStore` or `MemoryStore`); `ssl_context` is the server
    context of the agent listener (see `relay.certificates.server_ssl_context`).
    """

    def __init__(
        self, store: Store, ssl_context: ssl.SSLContext, *, config: RelayConfig | None = None
    ) -> None:
        self.store = store
        self.ssl_context = ssl_context
        self.config = config or RelayConfig()
        self.registry = Registry()
        self._verifier = Verifier(cost=self.config.bcrypt_cost)

    def __repr__(self) -> str:
        return f"<Relay store={self.store!r} sessions={len(self.registry)}>"

    # -- agents --------------------------------------------------------------------------

    async def serve(
        self, host: str | None, port: int, *, task_status=trio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept agents over TLS on host:port until cancelled (port 0: any free port).

        `task_status.started` gets the list of `trio.SocketListener`s.
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_store)
            nursery.start_soon(self._verifier.prepare)
            await nursery.start(trio.serve_listeners, self._handle_tcp, listeners)
            task_status.started(listeners)

    async def _handle_tcp(self, tcp: trio.SocketStream) -> None:
        try:
            peer = format_address(tcp.socket.getpeername())
        except OSError:  # already gone
            await tcp.aclose()
            return
        tls = trio.SSLStream(tcp, self.ssl_context, server_side=True)
        await self.handle_agent(tls, peer)

    async def handle_agent(self, transport: trio.abc.Stream, peer: str) -> None:
        """Serve one agent connection arriving on `transport` (TLS already wrapped around
        it) until it ends. Never raises: a misbehaving connection is logged and dropped."""
        try:
            with trio.move_on_after(self.config.handshake_timeout) as deadline:
                admitted = await self._admit(transport, peer)
            if deadline.cancelled_caught:
                _log(logging.INFO, "Connection dropped", peer=peer, reason="handshake timed out")
            elif admitted is not None:
                await self._run_session(transport, peer, *admitted)
        except Exception as exc:
            if (broken := _connection_failure(exc)) is None:
                log.exception("Unexpected error on agent connection", extra=_extra(peer=peer))
            else:
                _log(logging.INFO, "Connection dropped", peer=peer, reason=_describe(broken))
        finally:
            await trio.aclose_forcefully(transport)

    async def _admit(
        self, transport: trio.abc.Stream, peer: str
    ) -> tuple[BridgeRecord, Hello, bytes] | None:
        """Reads the Hello and answers it. The (record, hello, leftover) of an admitted agent."""
        parser = HelloParser()
        try:
            while True:
                data = await transport.receive_some(_READ_SIZE)
                if not data:
                    _log(
                        logging.INFO,
                        "Connection dropped",
                        peer=peer,
                        reason="closed during the handshake",
                    )
                    return None
                if (hello := parser.feed(data)) is not None:
                    break
            record = await self._authenticate(hello, peer)
        except UnsupportedVersion as exc:
            refusal = _Refused(
                WelcomeStatus.UNSUPPORTED_VERSION, f"{exc}; this relay speaks {PROTOCOL_VERSION}"
            )
        except HandshakeError as exc:
            refusal = _Refused(WelcomeStatus.MALFORMED, f"malformed handshake: {exc}")
        except _Refused as exc:
            refusal = exc
        else:
            await transport.send_all(
                encode_welcome(Welcome(WelcomeStatus.OK, f"connected as bridge {record.name}"))
            )
            return record, hello, parser.leftover
        if refusal.status != WelcomeStatus.AUTH_FAILED:
            _log(logging.INFO, "Handshake refused", peer=peer, reason=refusal.message)
        await transport.send_all(encode_welcome(Welcome(refusal.status, refusal.message)))
        await transport.aclose()
        return None

    async def _authenticate(self, hello: Hello, peer: str) -> BridgeRecord:
        try:
            record = self.store.find(hello.bridge_id)
        except Exception:
            log.exception("Bridge store failed", extra=_extra(peer=peer))
            raise _Refused(WelcomeStatus.INTERNAL_ERROR, "internal error") from None
        if record is not None and record.id != hello.bridge_id:
            record = None  # agents authenticate by ID, not by name
        stored_hash = None if record is None else record.secret_hash
        if not await self._verifier.verify(hello.bridge_id, stored_hash, hello.secret.encode()):
            _log(
                logging.WARNING, "Authentication failed", bridge_id=_loggable_id(hello.bridge_id),
                peer=peer,
            )
            raise _Refused(WelcomeStatus.AUTH_FAILED, AUTH_FAILED_MESSAGE)
        assert record is not None
        return record

    async def _run_session(
        self, transport: trio.abc.Stream, peer: str, record: BridgeRecord, hello: Hello,
        leftover: bytes,
    ) -> None:
        if leftover:
            transport = PrefixedStream(transport, leftover)
        fields = {"bridge": record.name, "id": record.id, "peer": peer}
        agent = AgentSession(record.id, record.name, peer, record.secret_hash, info=hello.info)
        level = logging.INFO
        with agent.cancel_scope:
            async with mux.open_session(transport, client=False, config=self.config.mux) as session:
                agent.mux = session
                self.registry.add(agent)
                try:
                    _log(logging.INFO, "Bridge connected", **fields)
                    self._mark_seen(record.id)
                    self._revalidate(agent)  # the store may have changed while we verified
                    async for stream in session:  # agents never open streams
                        await trio.aclose_forcefully(stream)
                    agent.close_reason = agent.close_reason or "agent closed the connection"
                except (trio.BrokenResourceError, mux.MuxError) as exc:
                    agent.close_reason = agent.close_reason or _describe(exc)
                    level = logging.WARNING
                finally:
                    self.registry.remove(agent)
                    self._mark_seen(record.id)
                    _log(
                        level,
                        "Bridge disconnected",
                        **fields,
                        reason=agent.close_reason or "relay shutting down",
                        duration=round(time.time() - agent.connected_at, 3),
                    )

    def _mark_seen(self, bridge_id: str) -> None:
        try:
            self.store.mark_seen(bridge_id)
        except Exception as exc:
            _log(logging.WARNING, "Cannot record last seen time", id=bridge_id, reason=str(exc))

    # -- store changes -------------------------------------------------------------------

    async def _watch_store(self) -> None:
        seen = None
        while True:
            try:
                generation = self.store.generation()
            except Exception as exc:
                _log(logging.WARNING, "Cannot read the bridge store", reason=str(exc))
            else:
                if seen is not None and generation != seen:
                    self.revalidate()
                seen = generation
            await trio.sleep(self.config.store_poll_interval)

    def revalidate(self) -> None:
        """Close the sessions of bridges deleted or rotated since they were admitted."""
        for agent in list(self.registry):
            self._revalidate(agent)

    def _revalidate(self, agent: AgentSession) -> None:
        try:
            record = self.store.find(agent.bridge_id)
        except Exception as exc:
            _log(logging.WARNING, "Cannot read the bridge store", reason=str(exc))
            return
        if record is None:
            agent.close("bridge deleted")
        elif record.secret_hash != agent.secret_hash:
            agent.close("bridge secret rotated")

    # -- tunnels -------------------------------------------------------------------------

    def is_connected(self, bridge: str) -> bool:
        return bool(self.registry.sessions(bridge))

    async def connect(self, bridge: str, host: str, port: int) -> trio.abc.HalfCloseableStream:
        """A stream to host:port through `bridge` (its name or ID).

        Raises `BridgeNotConnected`, `TargetNotAllowed`, `TargetUnreachable` or another
        `TunnelError`, each carrying the agent's own message when it gave one; ValueError
        for a host or port that cannot be sent.
        """
        stream, _ = await self._open(bridge, host, port)
        return stream

    async def probe(self, bridge: str, host: str, port: int) -> str:
        """Check that `bridge` reaches host:port; returns the address the agent dialed."""
        stream, reply = await self._open(bridge, host, port)
        await trio.aclose_forcefully(stream)
        return reply.message or format_host_port(host, port)

    async def _open(
        self, bridge: str, host: str, port: int
    ) -> tuple[trio.abc.HalfCloseableStream, ConnectReply]:
        request = encode_connect_request(ConnectRequest(host, port))
        target = format_host_port(host, port)
        for agent in self.registry.candidates(bridge):
            try:
                return await self._open_on(agent, request, bridge, target)
            except mux.SessionClosed:
                continue  # that session is going away: try the next one
            except TunnelError as exc:
                _log(
                    logging.WARNING, "Tunnel refused",
                    bridge=agent.bridge_name, target=target, reason=str(exc),
                )
                raise
        _log(
            logging.WARNING, "Tunnel refused", bridge=bridge, target=target, reason="not connected"
        )
        raise BridgeNotConnected(bridge)

    async def _open_on(
        self, agent: AgentSession, request: bytes, bridge: str, target: str
    ) -> tuple[trio.abc.HalfCloseableStream, ConnectReply]:
        stream = await agent.mux.open_stream()
        try:
            with trio.move_on_after(self.config.connect_timeout) as deadline:
                await stream.send_all(request)
                parser = ConnectReplyParser()
                while (reply := parser.feed(data := await stream.receive_some(_READ_SIZE))) is None:
                    if not data:
                        raise TunnelError(f"Bridge {bridge} closed the connection to {target} "
                                          "without answering")
        except mux.StreamReset:
            await trio.aclose_forcefully(stream)
            raise TunnelError(f"Bridge {bridge} reset the connection to {target}") from None
        except ConnectError as exc:
            await _reset(stream)
            raise TunnelError(f"Bridge {bridge} sent an invalid reply: {exc}") from None
        except TunnelError:
            await _reset(stream)
            raise
        except BaseException:
            await _reset(stream)
            raise
        if deadline.cancelled_caught:
            await _reset(stream)
            raise TargetUnreachable(
                f"No answer from bridge {bridge} about {target} within "
                f"{self.config.connect_timeout:g} s",
                status=ConnectStatus.TIMEOUT,
            )
        if reply.status == ConnectStatus.OK:
            return (PrefixedStream(stream, parser.leftover) if parser.leftover else stream), reply
        await trio.aclose_forcefully(stream)
        message = reply.message or f"{reply.status.name.replace('_', ' ').lower()}: {target}"
        if reply.status == ConnectStatus.NOT_ALLOWED:
            raise TargetNotAllowed(message, status=reply.status)
        if reply.status in _UNREACHABLE:
            raise TargetUnreachable(message, status=reply.status)
        raise TunnelError(message, status=reply.status)


async def _reset(stream: Any) -> None:
    """Abort a stream: RST to the agent, which drops its side of the target connection."""
    try:
        stream.reset()
    except trio.BrokenResourceError:
        pass
    await trio.aclose_forcefully(stream)


def _loggable_id(claimed: str) -> str:
    """A claimed bridge ID fit for the log: IDs are UUIDs; anything else might be a secret
    pasted in the wrong place, so only its length is shown."""
    try:
        return str(uuid.UUID(claimed))
    except ValueError:
        return f"<not a bridge ID: {len(claimed)} characters>"


_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, mux.MuxError)


def _connection_failure(exc: BaseException) -> BaseException | None:
    """The first error, if `exc` (maybe a group) is only the connection breaking."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [_connection_failure(e) for e in exc.exceptions]
        return leaves[0] if leaves and all(leaves) else None
    return exc if isinstance(exc, _BROKEN) else None


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLError):
        return f"TLS error: {cause.reason or cause}"
    return str(exc) or (str(cause) if cause else "") or type(exc).__name__

