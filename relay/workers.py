# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The parent of ``bridge-relay serve --workers N``: it holds the listeners, runs the workers,
routes handed-over connections, and alone talks to systemd.

It binds every listener once and starts N worker processes (the same command, with the
listening sockets and one end of a Unix socket pair inherited, `relay.worker.WorkerSetup`)
that accept on them: a connection waits in the listen backlog until some worker accepts it,
so none is lost while a worker restarts. It stays out of the data path: it only passes
descriptors on (`relay.worker_messages`), never bytes.

- A worker that exits unasked is started again after a short backoff (one log line).
- SIGHUP replaces the workers one at a time: the new one serves before the old one is
  told to drain (DRAIN: the worker's SIGTERM drain), the listeners stay open throughout.
- SIGTERM or SIGINT drains every worker once; a second one tells them to stop at once.
- Presence: each worker says which bridges it holds; a connection a worker offers (it has
  no session of its bridge, or it drains) goes to a holder, or waits, for up to the connect
  timeout, while the bridge is moving (its holder drains or died: its agents reconnect to
  another worker); a draining worker's connection for a bridge no worker holds goes to a
  serving worker, which may reach it on another node of a cluster; otherwise the offering
  worker serves it itself ("not connected").
- In a cluster, each worker is a node; the peer listener is bound here too, and a peer
  connection a worker offers goes to the worker its prelude names (`relay.peering`).
"""

from __future__ import annotations

import array
import collections
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import trio

from bridge.ops.metrics import Metrics
from bridge.ops.systemd import Notifier, run_watchdog
from relay import admin
from relay.worker import ENV, WorkerSetup, receive_message
from relay.worker_messages import (
    Kind,
    Message,
    MessageError,
    hold,
    release,
    worker_node,
)

log = logging.getLogger("relay.workers")


@attrs.frozen(kw_only=True)
class SupervisorConfig:
    """start_timeout: how long a new worker has to serve. restart_delay, max_restart_delay:
    the backoff before a worker that exited unasked is started again (doubling, reset after
    `healthy` seconds up). moving: how long connections for a bridge whose holder went away
    wait for another holder (the relay's connect timeout); `unknown`: how long those for a
    bridge no worker held wait (its agent may have just logged in to another worker, whose
    word is on its way). max_parked: connections waiting
    so, beyond which they are served by the worker that took them ("not connected").
    max_scrape: bytes of metrics text one worker may send."""

    start_timeout: float = 60.0
    restart_delay: float = 0.5
    max_restart_delay: float = 10.0
    healthy: float = 30.0
    moving: float = 15.0
    unknown: float = 0.25
    max_parked: int = 1024
    max_scrape: int = 16 * 1024 * 1024
    scrape_timeout: float = 5.0


@attrs.frozen(kw_only=True)
class Listeners:
    """The bound listeners, by role, as Trio listeners (the parent keeps them open)."""

    agent: list[trio.SocketListener]
    websocket: list[trio.SocketListener] = attrs.field(factory=list)
    forwards: list[list[trio.SocketListener]] = attrs.field(factory=list)
    socks: list[trio.SocketListener] = attrs.field(factory=list)
    peer: list[trio.SocketListener] = attrs.field(factory=list)


def _fds(listeners: list[trio.SocketListener]) -> list[int]:
    return [listener.socket.fileno() for listener in listeners]


#: Presence news queued for one worker; beyond, the oldest are dropped (a worker holds at
#: most one per bridge, and the poll in its accept loop bounds the harm of a lost one).
_MAX_OUTBOX = 65536
_SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class _Worker:
    """One worker process and the parent's end of its link."""

    def __init__(
        self, index: int, serial: int, node: str, process: trio.Process, sock: Any
    ) -> None:
        self.index = index
        self.serial = serial
        self.node = node
        self.process = process
        self.socket = sock
        self.ready = trio.Event()
        self.exited = trio.Event()
        self.held: dict[str, str] = {}  # bridge ID -> name
        self.retiring = False
        #: The parent sent SIGTERM for want of a link: an exit by it is the stop it asked for.
        self.terminated = False
        self.started = time.monotonic()
        self.send_lock = trio.Lock()
        self.deliveries: dict[int, _Delivery] = {}
        #: Presence news for this worker (HELD, UNHELD), sent in order by one task.
        self.outbox: collections.deque[Message] = collections.deque(maxlen=_MAX_OUTBOX)
        self.outbox_ready = trio.Event()
        self.scrapes: dict[int, _Scrape] = {}

    def holds(self, bridge: str) -> bool:
        return bridge in self.held or bridge in self.held.values()

    def fields(self, **more: Any) -> dict[str, Any]:
        return {"fields": {"worker": self.index, "pid": self.process.pid, **more}}


class _Delivery:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.accepted = False


class _Scrape:
    def __init__(self, limit: int) -> None:
        self.done = trio.Event()
        self.text = bytearray()
        self.limit = limit


class Supervisor:
    """Runs `count` workers of `argv` on `listeners` until a stop signal; see the module.

    `run` returns the exit status: 0 after a clean drain of every worker, 1 when one cut
    tunnels or could not start.
    """

    def __init__(
        self,
        argv: list[str],
        count: int,
        listeners: Listeners,
        node: str,
        notifier: Notifier,
        *,
        data_dir: Path | None = None,
        config: SupervisorConfig = SupervisorConfig(),
    ) -> None:
        self.argv = argv
        self.count = count
        self.listeners = listeners
        self.node = node
        self.notifier = notifier
        self.data_dir = data_dir
        self.config = config
        self.slots: list[_Worker | None] = [None] * count
        self.workers: set[_Worker] = set()  # every live worker, retiring ones included
        self.stopping = False
        self._serials = 0
        self._numbers = 0
        self._moving: dict[str, float] = {}  # bridge ID or name -> deadline
        self._parked = 0
        self._presence = trio.Event()  # set (and replaced) when any worker holds more
        self._failed = False
        self.metrics = _Aggregated()
        self._workers_serving = self.metrics.gauge(
            "trio_bridge_workers_serving", "Worker processes serving."
        )
        self._restarts = self.metrics.counter(
            "trio_bridge_worker_restarts_total", "Workers started again after they exited unasked."
        )
        self._restarts.inc(0)
        self._nursery: trio.Nursery | None = None
        self._delays: dict[int, float] = {}  # the last restart delay of each slot

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> int:
        """Start the workers, supervise them until SIGTERM/SIGINT, drain them; the exit
        status. Cancelled, it kills the workers."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                failures: list[str] = []
                with trio.move_on_after(self.config.start_timeout) as starting_scope:
                    async with trio.open_nursery() as starting:
                        for index in range(self.count):
                            starting.start_soon(self._start_first, index, failures)
                if starting_scope.cancelled_caught:
                    failures.append(f"not serving within {self.config.start_timeout:g} s")
                if failures:
                    log.error(f"Workers did not start: {failures[0]}")
                    self.stopping = self._failed = True
                    for worker in list(self.workers):
                        self._signal(worker, signal.SIGKILL)
                    nursery.cancel_scope.cancel()
                    return 1
                log.info("Workers serving", extra={"fields": {"workers": self.count}})
                self.notifier.ready(f"{self.count} workers serving")
                await nursery.start(run_watchdog, self.notifier)
                await self._until_stopped(signals)
                nursery.cancel_scope.cancel()
        return 1 if self._failed else 0

    async def _start_first(self, index: int, failures: list[str]) -> None:
        worker = await self._spawn(index)
        if worker is None:
            failures.append(f"worker {index} could not be started")
            return
        self.slots[index] = worker
        if (failure := await self._wait_ready(worker)) is not None:
            failures.append(failure)

    async def _wait_ready(self, worker: _Worker) -> str | None:
        """None once `worker` serves; what went wrong when it exits first."""
        async with trio.open_nursery() as nursery:

            async def exited() -> None:
                await worker.exited.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(exited)
            await worker.ready.wait()
            nursery.cancel_scope.cancel()
        if worker.ready.is_set():
            return None
        return (
            f"worker {worker.index} exited with status {_status(worker.process.returncode)} "
            "before serving"
        )

    async def _until_stopped(self, signals: AsyncIterator[int]) -> None:
        reloading: trio.CancelScope | None = None
        async with trio.open_nursery() as nursery:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    if self.stopping:
                        continue
                    if reloading is not None and not reloading.cancel_called:
                        log.info("Reload already in progress: SIGHUP ignored")
                        continue
                    reloading = trio.CancelScope()
                    nursery.start_soon(self._reload, reloading)
                    continue
                name = signal.Signals(signum).name
                if self.stopping:
                    log.info("Stopping now", extra={"fields": {"signal": name}})
                    for worker in list(self.workers):
                        self._order(worker, Kind.STOP)
                    continue
                self.stopping = True
                self._wake()
                if reloading is not None:
                    reloading.cancel()
                log.info(
                    "Stopping: every worker drains",
                    extra={"fields": {"signal": name, "workers": len(self.workers)}},
                )
                self.notifier.stopping(f"Draining {len(self.workers)} workers")
                for worker in list(self.workers):
                    self._retire(worker)
                nursery.start_soon(self._when_all_exited, nursery.cancel_scope)

    async def _when_all_exited(self, scope: trio.CancelScope) -> None:
        while self.workers:
            await next(iter(self.workers)).exited.wait()
        log.info("Workers stopped")
        scope.cancel()

    async def _reload(self, scope: trio.CancelScope) -> None:
        """Replace each worker in turn: the new one serves before the old one drains."""
        started = time.monotonic()
        log.info("Reloading: replacing the workers one at a time", extra={"fields": {}})
        self.notifier.status("Reloading: replacing the workers")
        with scope:
            for index in range(self.count):
                old = self.slots[index]
                new = await self._spawn(index)
                if new is None:
                    break
                failure: str | None = f"not serving within {self.config.start_timeout:g} s"
                with trio.move_on_after(self.config.start_timeout):
                    failure = await self._wait_ready(new)
                if failure is not None:
                    log.error(
                        f"Reload stopped: the new worker {index} does not serve ({failure}); "
                        "the old one goes on"
                    )
                    self._retire(new)
                    self.notifier.status(f"{self.count} workers serving (reload failed)")
                    return
                self.slots[index] = new
                if old is not None:
                    await self._retire_when_delivered(old)
            elapsed = time.monotonic() - started
            log.info(
                "Reloaded: every worker replaced",
                extra={"fields": {"workers": self.count, "duration": round(elapsed, 3)}},
            )
            self.notifier.status(f"{self.count} workers serving")

    async def _retire_when_delivered(self, worker: _Worker) -> None:
        """Route nothing more to `worker`, wait for the handovers sent to it, then drain it."""
        self._drop_presence(worker)
        worker.retiring = True
        while worker.deliveries and not worker.exited.is_set():
            await next(iter(worker.deliveries.values())).done.wait()
        self._retire(worker)

    def _retire(self, worker: _Worker) -> None:
        self._drop_presence(worker)
        worker.retiring = True
        self._order(worker, Kind.DRAIN)

    def _order(self, worker: _Worker, kind: Kind) -> None:
        """DRAIN or STOP to `worker` (SIGTERM if its link is broken)."""

        async def tell() -> None:
            if not await self._tell(worker, Message(kind)):
                # A worker closes its link as it exits: past its signal handlers, SIGTERM
                # ends it at once, which is then no failure of its own.
                worker.terminated = True
                self._signal(worker, signal.SIGTERM)

        assert self._nursery is not None
        self._nursery.start_soon(tell)

    def _signal(self, worker: _Worker, signum: int) -> None:
        if worker.process.returncode is None:
            try:
                worker.process.send_signal(signum)
            except ProcessLookupError:
                pass

    # -- one worker -------------------------------------------------------------------------

    async def _spawn(self, index: int) -> _Worker | None:
        """Start worker `index`, or None (logged) when it cannot be started."""
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._serials += 1
        listeners = self.listeners
        setup = WorkerSetup(
            index=index,
            serial=self._serials,
            node=worker_node(self.node, index, self._serials),
            control=child_end.fileno(),
            agent=_fds(listeners.agent),
            websocket=_fds(listeners.websocket),
            forwards=[_fds(fds) for fds in listeners.forwards],
            socks=_fds(listeners.socks),
            peer=_fds(listeners.peer),
        )
        # Only the parent talks to systemd.
        env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_VARIABLES}
        env[ENV] = setup.to_env()
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "relay", *self.argv],
                pass_fds=setup.descriptors(),
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            parent_end.close()
            log.error(
                "Cannot start a worker", extra={"fields": {"worker": index, "reason": str(exc)}}
            )
            return None
        finally:
            child_end.close()
        worker = _Worker(
            index, self._serials, setup.node, process, trio.socket.from_stdlib_socket(parent_end)
        )
        anywhere = {b: n for w in self.workers for b, n in w.held.items()}
        worker.outbox.extend(hold(b, n, Kind.HELD) for b, n in anywhere.items())
        worker.outbox_ready.set()
        self.workers.add(worker)
        log.debug("Worker started", extra=worker.fields())
        assert self._nursery is not None
        self._nursery.start_soon(self._supervise, worker)
        return worker

    async def _supervise(self, worker: _Worker) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read, worker)
            nursery.start_soon(self._send_outbox, worker)
            await worker.process.wait()
            nursery.cancel_scope.cancel()
        worker.socket.close()
        worker.exited.set()
        if self.data_dir is not None:  # the control socket of a worker that was killed
            (self.data_dir / admin.worker_socket_name(worker.process.pid)).unlink(missing_ok=True)
        self.workers.discard(worker)
        self._drop_presence(worker)
        for delivery in worker.deliveries.values():
            delivery.done.set()
        for scrape in worker.scrapes.values():
            scrape.done.set()
        self._wake()
        if worker.ready.is_set() and not worker.retiring:
            self._workers_serving.dec()
        status = worker.process.returncode
        if worker.retiring or self.stopping:
            if status not in (0, None) and not (worker.terminated and status == -signal.SIGTERM):
                # The relay's own exit status becomes 1: say which worker and why.
                self._failed = True
                log.warning(
                    "Worker exited with a failure while stopping",
                    extra=worker.fields(status=_status(status)),
                )
            else:
                log.debug("Worker exited", extra=worker.fields(status=_status(status)))
            return
        if self.slots[worker.index] is not worker:
            return
        uptime = time.monotonic() - worker.started
        delay = self._next_delay(worker.index, uptime)
        log.warning(
            f"Worker exited: starting it again in {delay:.1f} s",
            extra=worker.fields(status=_status(status), uptime=round(uptime, 3)),
        )
        await trio.sleep(delay)
        if self.stopping or self.slots[worker.index] is not worker:
            return
        self._restarts.inc()
        replacement = await self._spawn(worker.index)
        if replacement is not None:
            self.slots[worker.index] = replacement

    def _next_delay(self, index: int, uptime: float) -> float:
        config = self.config
        previous = self._delays.get(index, 0.0)
        delay = config.restart_delay if uptime >= config.healthy or not previous else previous * 2
        delay = min(delay, config.max_restart_delay)
        self._delays[index] = delay
        return delay

    async def _read(self, worker: _Worker) -> None:
        sock = worker.socket
        while True:
            try:
                received = await receive_message(sock)
            except OSError:
                return
            except MessageError as exc:
                log.error("Invalid message from a worker", extra=worker.fields(reason=str(exc)))
                continue
            if received is None:
                return
            self._dispatch(worker, *received)

    def _dispatch(self, worker: _Worker, message: Message, fd: int | None) -> None:
        kind = message.kind
        if kind == Kind.READY:
            if not worker.ready.is_set():
                worker.ready.set()
                self._workers_serving.inc()
                log.info("Worker serving", extra=worker.fields())
        elif kind == Kind.HOLD:
            if not worker.retiring:
                bridge_id, name = message.held()
                if not self._held_anywhere(bridge_id):
                    self._broadcast(hold(bridge_id, name, Kind.HELD))
                worker.held[bridge_id] = name
                self._moving.pop(bridge_id, None)
                self._moving.pop(name, None)
                self._wake()
        elif kind == Kind.RELEASE:
            bridge_id = message.body.decode("utf-8", "replace")
            if bridge_id in worker.held:
                self._note_moving({bridge_id: worker.held.pop(bridge_id)}, worker)
        elif kind == Kind.RETIRING:
            if worker.ready.is_set() and not worker.retiring:
                self._workers_serving.dec()
            worker.retiring = True
            self._drop_presence(worker)
        elif kind in (Kind.ACCEPTED, Kind.REFUSED):
            if (delivery := worker.deliveries.get(message.number)) is not None:
                delivery.accepted = kind == Kind.ACCEPTED
                delivery.done.set()
        elif kind == Kind.OFFER and fd is not None:
            assert self._nursery is not None
            self._nursery.start_soon(self._route, worker, message, fd)
        elif kind == Kind.METRICS and message.body and message.number in worker.scrapes:
            scrape = worker.scrapes[message.number]
            if len(scrape.text) + len(message.body) - 1 <= scrape.limit:
                scrape.text += message.body[1:]
            if message.body[0] == 1:
                scrape.done.set()

    # -- presence and routing ---------------------------------------------------------------

    def _wake(self) -> None:
        """Wake the connections waiting for a holder: one may have come, or they may stop."""
        self._presence.set()
        self._presence = trio.Event()

    def _drop_presence(self, worker: _Worker) -> None:
        held, worker.held = worker.held, {}
        self._note_moving(held, worker)

    def _held_anywhere(self, bridge_id: str) -> bool:
        return any(bridge_id in w.held for w in self.workers)

    def _broadcast(self, message: Message) -> None:
        """`message` to every worker serving or starting (in order: one task per message
        would not keep it)."""
        for worker in self.workers:
            if not worker.retiring:
                worker.outbox.append(message)
                worker.outbox_ready.set()

    async def _send_outbox(self, worker: _Worker) -> None:
        while True:
            await worker.outbox_ready.wait()
            worker.outbox_ready = trio.Event()
            while worker.outbox:
                if not await self._tell(worker, worker.outbox.popleft()):
                    return

    def _note_moving(self, held: dict[str, str], worker: _Worker) -> None:
        """Bridges `worker` no longer holds: if no other worker does, their connections wait
        a while for one (its agents reconnect to another worker)."""
        now = trio.current_time()
        for key in [k for k, d in self._moving.items() if d < now]:  # long moved or gone
            del self._moving[key]
        deadline = now + self.config.moving
        for bridge_id, name in held.items():
            if not any(w.holds(bridge_id) for w in self.workers if w is not worker):
                self._moving[bridge_id] = self._moving[name] = deadline
                self._broadcast(release(bridge_id, Kind.UNHELD))

    def _holder(self, bridge: str, offering: _Worker) -> _Worker | None:
        candidates = [
            w for w in self.workers if w is not offering and not w.retiring and w.holds(bridge)
        ]
        return min(candidates, key=lambda w: len(w.deliveries), default=None)

    def _serving(self, offering: _Worker) -> _Worker | None:
        """The serving worker (not `offering`) with the fewest deliveries under way."""
        candidates = [
            w
            for w in self.workers
            if w is not offering and not w.retiring and w.ready.is_set() and not w.exited.is_set()
        ]
        return min(candidates, key=lambda w: len(w.deliveries), default=None)

    async def _route_peer(self, origin: _Worker, message: Message, node: str, fd: int) -> None:
        """Deliver a peer connection to the worker named `node` (not one that drains), then
        tell the offering worker TAKEN or NOBODY. The descriptor is closed here."""
        taken = False
        try:
            for worker in list(self.workers):
                if worker.node == node and worker is not origin and not worker.retiring:
                    taken = await self._deliver(worker, message, fd)
                    break
        finally:
            os.close(fd)
        await self._tell(origin, Message(Kind.TAKEN if taken else Kind.NOBODY, message.number))

    async def _route(self, origin: _Worker, message: Message, fd: int) -> None:
        """Deliver an offered connection to a holder of its bridge (waiting while it moves),
        then tell the offering worker TAKEN or NOBODY. The descriptor is closed here."""
        try:
            handover = message.handover()
        except MessageError:
            os.close(fd)
            await self._tell(origin, Message(Kind.NOBODY, message.number))
            return
        bridge = handover.bridge
        if handover.kind == "peer":
            await self._route_peer(origin, message, bridge, fd)
            return
        taken = False
        parked = False
        fell_back = False
        try:
            for _attempt in range(3):
                holder = self._holder(bridge, origin)
                if holder is None and not self.stopping and not parked:
                    deadline = self._moving.get(bridge)
                    if deadline is None or deadline < trio.current_time():
                        deadline = trio.current_time() + self.config.unknown
                    if self._parked < self.config.max_parked:
                        parked = True
                        self._parked += 1
                        try:
                            with trio.move_on_at(deadline):
                                # This process holds the descriptor: a connection
                                # outlives the offering worker (a drained one exits).
                                while (holder := self._holder(bridge, origin)) is None:
                                    if self.stopping:
                                        break
                                    if (
                                        origin.holds(bridge)
                                        and not origin.retiring
                                        and not origin.exited.is_set()
                                    ):
                                        break  # its own agent came: it serves it itself
                                    await self._presence.wait()
                        finally:
                            self._parked -= 1
                if holder is None and origin.retiring and not self.stopping and not fell_back:
                    fell_back = True  # it may be held on another node of a cluster
                    holder = self._serving(origin)
                if holder is None:
                    break
                if await self._deliver(holder, message, fd):
                    taken = True
                    break
        finally:
            os.close(fd)
        await self._tell(origin, Message(Kind.TAKEN if taken else Kind.NOBODY, message.number))

    async def _deliver(self, holder: _Worker, offer: Message, fd: int) -> bool:
        self._numbers = number = self._numbers % 0xFFFFFFFF + 1
        delivery = holder.deliveries[number] = _Delivery()
        try:
            message = Message(Kind.DELIVER, number, offer.body)
            if not await self._tell(holder, message, fd):
                return False
            await delivery.done.wait()
            return delivery.accepted
        finally:
            del holder.deliveries[number]

    async def _tell(self, worker: _Worker, message: Message, fd: int | None = None) -> bool:
        ancillary = []
        if fd is not None:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        try:
            async with worker.send_lock:
                await worker.socket.sendmsg([message.encode()], ancillary)
        except (OSError, trio.ClosedResourceError):
            return False
        return True

    # -- metrics ----------------------------------------------------------------------------

    async def refresh_metrics(self) -> None:
        """Collect every serving worker's metrics for the next `render`."""
        texts: dict[str, str] = {}

        async def scrape(worker: _Worker) -> None:
            self._numbers = number = self._numbers % 0xFFFFFFFF + 1
            job = worker.scrapes[number] = _Scrape(self.config.max_scrape)
            try:
                with trio.move_on_after(self.config.scrape_timeout):
                    if await self._tell(worker, Message(Kind.SCRAPE, number)):
                        await job.done.wait()
                        texts[str(worker.index)] = bytes(job.text).decode("utf-8", "replace")
            finally:
                del worker.scrapes[number]

        async with trio.open_nursery() as nursery:
            for worker in self.slots:
                if worker is not None and worker.ready.is_set() and not worker.exited.is_set():
                    nursery.start_soon(scrape, worker)
        self.metrics.workers = dict(sorted(texts.items()))

    def healthy(self) -> bool:
        """Whether every worker serves and the node does not stop."""
        return not self.stopping and all(
            w is not None and w.ready.is_set() and not w.exited.is_set() for w in self.slots
        )


class _Aggregated(Metrics):
    """The parent's metrics, then those of every worker at the last scrape (see
    `Supervisor.refresh_metrics`), each sample labelled ``worker``."""

    def __init__(self) -> None:
        super().__init__()
        self.workers: dict[str, str] = {}

    def render(self) -> str:
        """The Prometheus text of the parent and its workers."""
        return super().render() + merge_metrics(self.workers)


def _status(returncode: int | None) -> str | int | None:
    if returncode is not None and returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            pass
    return returncode


def merge_metrics(texts: dict[str, str]) -> str:
    """Prometheus texts of the workers (by worker label) -> one text: each family's HELP and
    TYPE once, then every worker's samples of it with a ``worker`` label first."""
    families: dict[str, list[str]] = {}
    heads: dict[str, list[str]] = {}
    for worker, text in texts.items():
        family = ""
        for line in text.splitlines():
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    head = heads.setdefault(family, [])
                    if len(head) < 2 and line not in head:
                        head.append(line)
                    families.setdefault(family, [])
                continue
            if line:
                families.setdefault(family, []).append(_labelled(line, worker))
    return "".join(line + "\n" for name in families for line in _family(heads, families, name))


def _family(
    heads: dict[str, list[str]], families: dict[str, list[str]], name: str
) -> Iterator[str]:
    yield from heads.get(name, [])
    yield from families[name]


def _labelled(sample: str, worker: str) -> str:
    label = f'worker="{worker}"'
    brace, space = sample.find("{"), sample.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        rest = sample[brace + 1 :]
        return f"{sample[: brace + 1]}{label}{'' if rest.startswith('}') else ','}{rest}"
    if space == -1:
        return sample
    return f"{sample[:space]}{{{label}}}{sample[space:]}"
