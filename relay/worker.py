# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""A worker's side of ``bridge-relay serve --workers N``: its link to the parent.

The parent (`relay.workers`) binds the listeners and starts the workers with the listening
sockets and one end of a Unix SOCK_SEQPACKET socket pair inherited, described in the
environment variable `ENV` (JSON). Over the pair (`relay.worker_messages`) the worker
says when it serves, which bridges it holds, offers connections it should not serve itself,
takes the ones handed to it, and sends its metrics when asked.
"""

from __future__ import annotations

import array
import json
import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from relay.errors import StoreError
from relay.forward import ForwardSpec, forward_connection
from relay.socks import serve_handed_over
from relay.worker_messages import (
    MAX_MESSAGE,
    WITH_DESCRIPTOR,
    Handover,
    Kind,
    Message,
    MessageError,
    decode,
    hold,
    metrics_pieces,
    release,
)

log = logging.getLogger("relay.worker")

#: The environment variable that makes ``bridge-relay serve`` a worker of its parent.
ENV = "RELAY_WORKER"
#: Room for the descriptors of one packet; a packet is meant to carry at most one.
_ANCILLARY = socket.CMSG_SPACE(4 * array.array("i").itemsize)


@attrs.frozen(kw_only=True)
class WorkerSetup:
    """What the parent gives a worker: its index, its serial number (each worker started
    gets the next), the node name to register, the inherited descriptors."""

    index: int
    serial: int
    node: str
    control: int
    agent: list[int]
    websocket: list[int] = attrs.field(factory=list)
    forwards: list[list[int]] = attrs.field(factory=list)
    socks: list[int] = attrs.field(factory=list)
    peer: list[int] = attrs.field(factory=list)

    @property
    def siblings(self) -> str:
        """The prefix of the node names of this host's workers (``{node}/``)."""
        return self.node.rpartition("/")[0] + "/"

    def to_env(self) -> str:
        """The value of `ENV` for this worker."""
        return json.dumps(attrs.asdict(self), separators=(",", ":"))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerSetup | None:
        """The setup in `env`, None when it has none. Raises ValueError when malformed."""
        text = env.get(ENV)
        if not text:
            return None
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{ENV}: {exc}") from None

    def descriptors(self) -> list[int]:
        """Every descriptor the worker inherits (the parent passes these)."""
        return [
            self.control,
            *self.agent,
            *self.websocket,
            *(fd for fds in self.forwards for fd in fds),
            *self.socks,
            *self.peer,
        ]


def listeners_of(fds: list[int]) -> list[trio.SocketListener]:
    """Inherited listening sockets as Trio listeners."""
    return [
        trio.SocketListener(trio.socket.from_stdlib_socket(socket.socket(fileno=fd))) for fd in fds
    ]


@attrs.frozen(kw_only=True)
class LinkConfig:
    """max_offers: connections offered to the parent at once (more wait)."""

    max_offers: int = 256


class _Offer:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.taken = False


class WorkerLink:
    """The worker's end of its socket pair; `Relay.handover` of the worker's relay.

    `run` reads the parent's messages and reports presence until cancelled or until the
    parent goes away. `drain` is set when the worker should drain (the parent says so, or
    it went away), `stop_now` when it should stop at once: the same two steps as a first
    and a second SIGTERM. (The parent does not signal its workers, so that a SIGTERM to
    the whole process group is not counted twice.)
    """

    def __init__(
        self,
        relay: Any,
        setup: WorkerSetup,
        forwards: list[ForwardSpec],
        *,
        socks: Callable[..., Any] = serve_handed_over,
        config: LinkConfig = LinkConfig(),
    ) -> None:
        self.relay = relay
        self.setup = setup
        self.forwards = forwards
        self.config = config
        self.parent_gone = trio.Event()
        self.drain = trio.Event()
        self.stop_now = trio.Event()
        self._socks = socks
        self._socket = trio.socket.from_stdlib_socket(socket.socket(fileno=setup.control))
        self._send_lock = trio.Lock()
        self._offers: dict[int, _Offer] = {}
        self._offer_slots = trio.Semaphore(config.max_offers)
        self._numbers = 0
        self._nursery: trio.Nursery | None = None
        self._ready = False
        self._retiring = False
        #: Bridges some worker holds (ID -> name), as the parent says.
        self._anywhere: dict[str, str] = {}
        #: Set (and replaced) when what `wait_to_accept` waits for may have changed: the
        #: parent's presence news, this worker's sessions, the link.
        self._changed = trio.Event()
        metrics = relay.metrics
        self._handovers = metrics.counter(
            "trio_bridge_handovers_total",
            "Connections handed to the worker that holds their bridge (out) or taken from "
            "another worker (in).",
            ["direction"],
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the link until cancelled; returns when the parent closed it."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._report_presence)
            nursery.start_soon(self._forget_gone_siblings)
            task_status.started()
            try:
                await self._receive_loop()
            finally:
                self._lost()
            nursery.cancel_scope.cancel()

    def ready(self, status: str | None = None) -> bool:
        """Tell the parent this worker serves (the `Notifier.ready` of a worker)."""
        if not self._ready and self._nursery is not None:
            self._ready = True
            self._nursery.start_soon(self._send, Message(Kind.READY))
        return True

    def status(self, text: str) -> bool:
        """A worker has no status of its own: the parent tells systemd."""
        return False

    def stopping(self, status: str | None = None) -> bool:
        """The worker drains: it tells the parent it holds nothing from now on."""
        if not self._retiring and self._nursery is not None:
            self._retiring = True
            self._nursery.start_soon(self._send, Message(Kind.RETIRING))
        return True

    async def offer(self, client: trio.SocketStream, handover: Handover) -> bool:
        """See `relay.handover.Handovers.offer`. A bridge that no worker of this host
        holds but another node of the cluster does is served here, through this worker's
        peer links (unless it drains)."""
        if self.parent_gone.is_set():
            return False
        if self._remote_only(handover):
            return False
        try:
            body = handover.encode()
        except MessageError:
            return False
        async with self._offer_slots:
            self._numbers = number = self._numbers % 0xFFFFFFFF + 1
            offer = self._offers[number] = _Offer()
            try:
                message = Message(Kind.OFFER, number, body)
                if not await self._send(message, client.socket.fileno()):
                    return False
                await offer.done.wait()
            finally:
                del self._offers[number]
        if offer.taken:
            self._handovers.inc(direction="out")
        return offer.taken

    def _remote_only(self, handover: Handover) -> bool:
        relay, bridge = self.relay, handover.bridge
        return (
            handover.kind != "peer"
            and not relay.stopping
            and relay.peering is not None
            and bridge not in self._anywhere
            and bridge not in self._anywhere.values()
            and bool(relay.peering.holders(bridge))
        )

    async def wait_to_accept(self, bridge: str | None) -> None:
        """See `relay.handover.Handovers.wait_to_accept`."""
        while self._leave_to_others(bridge):
            await self._changed.wait()

    def _leave_to_others(self, bridge: str | None) -> bool:
        """Whether another worker should accept the connections for `bridge` (None: for
        any bridge, a SOCKS client): this one holds no session of it (of any), and another
        does (the parent said so), and this one serves on."""
        relay = self.relay
        if relay.stopping or self.parent_gone.is_set():
            return False
        if bridge is None:
            return not len(relay.registry) and bool(self._anywhere)
        return not relay.registry.sessions(bridge) and (
            bridge in self._anywhere or bridge in self._anywhere.values()
        )

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- internals --------------------------------------------------------------------------

    async def _send(self, message: Message, fd: int | None = None) -> bool:
        ancillary = []
        if fd is not None:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        try:
            async with self._send_lock:
                await self._socket.sendmsg([message.encode()], ancillary)
        except (OSError, trio.ClosedResourceError):
            self.parent_gone.set()
            return False
        return True

    async def _receive_loop(self) -> None:
        while True:
            try:
                received = await receive_message(self._socket)
            except OSError as exc:
                log.warning("Link to the parent broken", extra={"fields": {"reason": str(exc)}})
                return
            except MessageError as exc:
                log.error(
                    "Invalid message from the parent: link closed",
                    extra={"fields": {"reason": str(exc)}},
                )
                return
            if received is None:
                return  # the parent closed its end
            await self._dispatch(*received)

    async def _dispatch(self, message: Message, fd: int | None) -> None:
        kind = message.kind
        if kind in (Kind.TAKEN, Kind.NOBODY):
            if (offer := self._offers.get(message.number)) is not None:
                offer.taken = kind == Kind.TAKEN
                offer.done.set()
        elif kind == Kind.DELIVER and fd is not None:
            await self._take(message, fd)
        elif kind == Kind.HELD:
            bridge_id, name = message.held()
            self._anywhere[bridge_id] = name
            self._wake()
        elif kind == Kind.UNHELD:
            self._anywhere.pop(message.body.decode("utf-8", "replace"), None)
            self._wake()
        elif kind == Kind.DRAIN:
            self.drain.set()
        elif kind == Kind.STOP:
            self.stop_now.set()
        elif kind == Kind.SCRAPE:
            text = self.relay.metrics.render().encode()
            for piece in metrics_pieces(message.number, text):
                await self._send(piece)

    async def _take(self, message: Message, fd: int) -> None:
        try:
            handover = message.handover()
        except MessageError as exc:
            os.close(fd)
            log.warning("Invalid handover: closed", extra={"fields": {"reason": str(exc)}})
            await self._send(Message(Kind.REFUSED, message.number))
            return
        relay = self.relay
        index = handover.details.get("index")
        if not isinstance(index, int):
            index = -1
        if handover.kind == "peer":
            refused = relay.peering is None or handover.bridge != relay.node
        else:  # a bridge held here, or (from a draining worker) on another node
            refused = not relay.is_connected(handover.bridge) or (
                handover.kind == "forward" and index not in range(len(self.forwards))
            )
        if relay.stopping or refused:
            os.close(fd)
            await self._send(Message(Kind.REFUSED, message.number))
            return
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(socket.socket(fileno=fd)))
        assert self._nursery is not None
        if handover.kind == "peer" and (peering := relay.peering) is not None:
            self._nursery.start_soon(self._serve, peering.serve_handed_over, stream)
        elif handover.kind == "forward":
            spec = self.forwards[index]
            self._nursery.start_soon(self._serve, forward_connection, relay, spec, stream)
        else:
            self._nursery.start_soon(
                self._serve, self._socks, relay, stream, handover.bridge, handover.details
            )
        self._handovers.inc(direction="in")
        await self._send(Message(Kind.ACCEPTED, message.number))

    async def _serve(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            await fn(*args)
        except Exception:
            log.exception("Handed-over connection failed")

    async def _report_presence(self) -> None:
        """HOLD and RELEASE as the bridges this worker has sessions of change (woken by the
        registry, no polling)."""
        registry = self.relay.registry
        told: dict[str, str] = {}
        while not self._retiring:
            seen = registry.version
            self._wake()
            held = {s.bridge_id: s.bridge_name for s in registry}
            for bridge_id in told.keys() - held.keys():
                await self._send(release(bridge_id))
            for bridge_id in held.keys() - told.keys():
                try:
                    await self._send(hold(bridge_id, held[bridge_id]))
                except MessageError:
                    continue
            told = held
            await registry.wait_change(seen)

    async def _forget_gone_siblings(self) -> None:
        """Every node timeout, remove from the store's node list the workers of this host
        that are gone (killed: they could not remove themselves), so that `bridge-relay
        nodes` does not list them for ever (a worker's name is never used again)."""
        relay, prefix = self.relay, self.setup.siblings
        timeout = relay.config.node_timeout
        while True:
            await trio.sleep(timeout)
            try:
                nodes = await relay._store.run(relay.store.list_nodes)
                for node in nodes:
                    if (
                        node.name.startswith(prefix)
                        and node.name != relay.node
                        and node.age is not None
                        and node.age >= timeout
                    ):
                        await relay._store.run(relay.store.remove_node, node.name, node.instance)
            except StoreError:
                pass  # the relay logs the store's state changes

    def _lost(self) -> None:
        self.parent_gone.set()
        self.drain.set()
        self._wake()
        for offer in self._offers.values():
            offer.done.set()  # not taken: served here
        self._socket.close()


async def receive_message(sock: trio.socket.SocketType) -> tuple[Message, int | None] | None:
    """The next message on a parent-worker link and the descriptor it carries, or None once
    the other end closed. Raises OSError when the link breaks, and MessageError for a
    truncated or invalid packet or a descriptor count that does not fit its kind (any
    descriptor received with it is closed first). Cancelling it loses nothing: a packet is
    either read whole or left in the socket."""
    data, ancillary, flags, _ = await sock.recvmsg(MAX_MESSAGE + 1, _ANCILLARY)
    fds = _descriptors(ancillary)
    if not data and not fds:
        return None
    try:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise MessageError("truncated packet")
        message = decode(data)
        if (message.kind in WITH_DESCRIPTOR) != (len(fds) == 1):
            raise MessageError(f"{message.kind.name} with {len(fds)} descriptors")
    except MessageError:
        for fd in fds:
            os.close(fd)
        raise
    return message, fds[0] if fds else None


def _descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % array.array("i").itemsize
            fds.extend(array.array("i", data[:usable]))
    return fds
