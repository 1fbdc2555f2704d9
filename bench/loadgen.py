# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Targets and load for ``python -m bench tunnel``, each in its own process:
``python -m bench.loadgen COMMAND [options]``.

serve   echo and sink servers on 127.0.0.1: one epoll loop per worker process, the workers
        sharing both ports (SO_REUSEPORT). Prints ``{"echo": PORT, "sink": PORT}``, then serves
        until killed. The sink counts what it receives and answers the client's EOF with that
        count (8 bytes, big-endian).
rtt     request/response of SIZE-byte messages on one connection: latency percentiles.
dial    COUNT connections, CONCURRENCY at a time, each doing one small round trip and closing;
        with --socks HOST, each first asks the SOCKS5 server at PORT for HOST:TARGET_PORT.
hold    like dial, but keeps each connection open; prints its result, then waits for a line on
        stdin before closing them all. With --stop-on-error, opens no more after a failure.
send    the built-in sender: STREAMS connections to the sink for SECONDS, then EOF; MB/s from
        the sink's counts.

Every client prints one JSON line on stdout, with the CPU time it spent in its own loop
(``cpu_s``, user + system). All waits are bounded.
"""

from __future__ import annotations

import argparse
import collections
import errno
import json
import os
import select
import selectors
import socket
import struct
import sys
import threading
import time

HOST = "127.0.0.1"
IO_TIMEOUT = 10.0
RECEIVE_SIZE = 256 * 1024
_LISTEN, _ECHO, _SINK = range(3)
_CONNECTING, _SOCKS_REPLY, _ECHO_REPLY = range(3)
_COUNT = struct.Struct("!Q")


def _nodelay(sock: socket.socket) -> socket.socket:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _percentile(ordered: list[float], q: float) -> float | None:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


# -- servers ---------------------------------------------------------------------------------


def _listener(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((HOST, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def _serve_forever(echo: socket.socket, sink: socket.socket) -> None:
    """Level-triggered epoll: echo writes back what it reads (holding further reads while a
    reply is pending), sink counts. Either closes at the client's EOF or on an error."""
    poller = select.epoll()
    conns: dict[int, list] = {}  # fd -> [kind, socket, state]: listener kind / unsent bytes / count
    for kind, sock in ((_ECHO, echo), (_SINK, sink)):
        conns[sock.fileno()] = [_LISTEN, sock, kind]
        poller.register(sock.fileno(), select.EPOLLIN)
    buf = bytearray(RECEIVE_SIZE)
    view = memoryview(buf)
    while True:
        for fd, _ in poller.poll():
            entry = conns.get(fd)
            if entry is None:
                continue
            kind, sock, state = entry
            if kind == _LISTEN:
                for _ in range(256):
                    try:
                        conn, _ = sock.accept()
                    except BlockingIOError:
                        break
                    except OSError as exc:  # EMFILE and the like: let the backlog wait
                        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                            time.sleep(0.01)
                        break
                    conn.setblocking(False)
                    conns[conn.fileno()] = [state, _nodelay(conn), b"" if state == _ECHO else 0]
                    poller.register(conn.fileno(), select.EPOLLIN)
                continue
            try:
                if kind == _ECHO and state:  # writable again: flush the pending reply
                    entry[2] = state = state[sock.send(state) :]
                    if not state:
                        poller.modify(fd, select.EPOLLIN)
                    continue
                n = sock.recv_into(buf)
                if n and kind == _SINK:
                    entry[2] += n
                    continue
                if n:
                    try:
                        sent = sock.send(view[:n])
                    except BlockingIOError:
                        sent = 0
                    if sent < n:
                        entry[2] = bytes(view[sent:n])
                        poller.modify(fd, select.EPOLLOUT)
                    continue
                if kind == _SINK:
                    sock.send(_COUNT.pack(state))
            except BlockingIOError:
                continue
            except OSError:
                pass
            poller.unregister(fd)
            del conns[fd]
            sock.close()


def serve(args: argparse.Namespace) -> None:
    echo, sink = _listener(0), _listener(0)
    ports = {"echo": echo.getsockname()[1], "sink": sink.getsockname()[1]}
    for _ in range(args.workers - 1):
        pair = (_listener(ports["echo"]), _listener(ports["sink"]))
        if os.fork() == 0:
            try:
                echo.close()
                sink.close()
                _serve_forever(*pair)
            finally:
                os._exit(1)
        for sock in pair:
            sock.close()
    print(json.dumps(ports), flush=True)
    _serve_forever(echo, sink)


# -- clients ---------------------------------------------------------------------------------


def rtt(args: argparse.Namespace) -> dict:
    message = os.urandom(args.size)
    view = memoryview(bytearray(args.size))
    samples = []
    with _nodelay(socket.create_connection((HOST, args.port), timeout=IO_TIMEOUT)) as sock:
        deadline = time.monotonic() + args.seconds
        cpu = time.process_time()
        for i in range(args.warmup + args.count):
            start = time.perf_counter_ns()
            sock.sendall(message)
            got = 0
            while got < args.size:
                n = sock.recv_into(view[got:])
                if not n:
                    return {"error": "the connection closed before the reply"}
                got += n
            if i >= args.warmup:
                samples.append((time.perf_counter_ns() - start) / 1000)
                if time.monotonic() > deadline:
                    break
        cpu = time.process_time() - cpu
    if view != message:
        return {"error": "the reply differs from the message"}
    samples.sort()
    return {
        "messages": len(samples),
        "p50_us": _percentile(samples, 0.5),
        "p99_us": _percentile(samples, 0.99),
        "mean_us": sum(samples) / len(samples),
        "cpu_s": cpu,
    }


def _socks_request(host: str, port: int) -> bytes:
    """A SOCKS5 greeting (no authentication) and a CONNECT to host:port, sent together."""
    name = host.encode()
    return (
        b"\x05\x01\x00" + b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big")
    )


def _socks_reply_size(head: bytes) -> int | None:
    """Length of the method choice and CONNECT reply that `head` starts with; None while
    `head` is too short to tell."""
    if len(head) < 6:
        return None
    if head[5] == 3:  # a domain name: its length byte follows
        return None if len(head) < 7 else 6 + 1 + head[6] + 2
    return 6 + (16 if head[5] == 4 else 4) + 2


class _Dialer:
    """Opens connections on a selector, `concurrency` at a time, each sending one message and
    waiting for it to come back; then closes it or (keep) holds it. With `socks` (target host
    and port), each connection first goes through a SOCKS5 CONNECT."""

    def __init__(
        self,
        port: int,
        concurrency: int,
        keep: bool,
        timeout: float,
        socks: tuple[str, int] | None = None,
    ) -> None:
        self.address = (HOST, port)
        self.socks = _socks_request(*socks) if socks else b""
        self.concurrency = concurrency
        self.keep = keep
        self.timeout = timeout
        self.selector = selectors.DefaultSelector()
        # socket -> [started, phase, bytes of the SOCKS reply / count of the echo received]
        self.pending: dict[socket.socket, list] = {}
        self.held: list[socket.socket] = []
        self.done = self.failed = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.cpu = 0.0
        self.started = self.last_done = 0.0
        self.unanswered = 0  # still waiting when the run's time was up
        self.first_error: str | None = None
        self.first_error_at: float | None = None
        self.latencies: list[float] = []
        self.message = b"x" * 32

    def _error(self, reason: str) -> None:
        self.failed += 1
        self.errors[reason] += 1
        if self.first_error is None:
            self.first_error, self.first_error_at = reason, time.time()

    def _fail(self, sock: socket.socket, reason: str) -> None:
        self._error(reason)
        self._drop(sock)
        sock.close()

    def _drop(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        del self.pending[sock]

    def _open(self) -> bool:
        try:
            sock = _nodelay(socket.socket())
        except OSError as exc:  # out of file descriptors here: stop, not a fault of the path
            self._error(f"client: {exc.strerror or exc}")
            return False
        sock.setblocking(False)
        err = sock.connect_ex(self.address)
        self.pending[sock] = [time.perf_counter(), _CONNECTING, b""]
        self.selector.register(sock, selectors.EVENT_WRITE)
        if err not in (0, errno.EINPROGRESS):
            self._fail(sock, os.strerror(err))
        return True

    def _step(self, sock: socket.socket) -> None:
        state = self.pending[sock]
        try:
            if state[1] == _CONNECTING:
                if err := sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    self._fail(sock, os.strerror(err))
                    return
                # the SOCKS request or the message: a few bytes, always fit a fresh socket
                sock.send(self.socks or self.message)
                state[1] = _SOCKS_REPLY if self.socks else _ECHO_REPLY
                self.selector.modify(sock, selectors.EVENT_READ)
                return
            data = sock.recv(len(self.message) if state[1] == _ECHO_REPLY else 512)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(sock, exc.strerror or str(exc))
            return
        if not data:
            self._fail(sock, "the connection closed before the reply")
            return
        state[2] += data
        if state[1] == _SOCKS_REPLY:
            size = _socks_reply_size(state[2])
            if size is None or len(state[2]) < size:
                return
            if state[2][1] != 0 or state[2][3] != 0:
                self._fail(sock, f"SOCKS reply {state[2][3]}, method {state[2][1]}")
                return
            state[1], state[2] = _ECHO_REPLY, state[2][size:]
            sock.send(self.message)
        if len(state[2]) < len(self.message):
            return
        self.last_done = time.perf_counter()
        self.latencies.append(self.last_done - state[0])
        self.done += 1
        self._drop(sock)
        if self.keep:
            self.held.append(sock)
        else:
            sock.close()

    def run(self, count: int, seconds: float, stop_on_error: bool) -> float:
        """Dial until `count` connections were tried or `seconds` passed; returns the time taken."""
        self.started = start = time.perf_counter()
        cpu = time.process_time()
        deadline = start + seconds
        tried = 0
        checked = start
        while self.pending or tried < count:
            now = time.perf_counter()
            if now > deadline:
                break
            stopping = stop_on_error and self.first_error is not None
            while not stopping and tried < count and len(self.pending) < self.concurrency:
                tried += 1
                if not self._open():
                    tried = count
            if not self.pending:
                break
            for key, _ in self.selector.select(0.05):
                self._step(key.fileobj)
            if now - checked > 0.5:
                checked = now
                for sock, state in list(self.pending.items()):
                    if now - state[0] > self.timeout:
                        self._fail(sock, f"no reply within {self.timeout:g} s")
        elapsed = time.perf_counter() - start
        self.cpu = time.process_time() - cpu
        self.unanswered = 0 if self.keep else len(self.pending)
        for sock in list(self.pending):  # held: each is a failure; dialing: time is up
            if self.keep:
                self._fail(sock, f"no reply within the run's {seconds:g} s")
            else:
                self._drop(sock)
                sock.close()
        return elapsed

    def result(self, elapsed: float) -> dict:
        ordered = sorted(self.latencies)
        return {
            "done": self.done,
            "failed": self.failed,
            "seconds": elapsed,
            "per_second": self.done / elapsed if elapsed else None,
            "last_served_s": self.last_done - self.started if self.done else None,
            "unanswered": self.unanswered,
            "latency_p50_ms": None if not ordered else _percentile(ordered, 0.5) * 1000,
            "first_error": self.first_error,
            "first_error_at": self.first_error_at,
            "errors": dict(self.errors.most_common(5)),
            "cpu_s": self.cpu,
        }


def dial(args: argparse.Namespace) -> dict:
    socks = (args.socks, args.target_port) if args.socks else None
    dialer = _Dialer(args.port, args.concurrency, keep=False, timeout=args.timeout, socks=socks)
    return dialer.result(dialer.run(args.count, args.seconds, stop_on_error=False))


def hold(args: argparse.Namespace) -> dict:
    dialer = _Dialer(args.port, args.concurrency, keep=True, timeout=args.timeout)
    result = dialer.result(dialer.run(args.count, args.seconds, args.stop_on_error))
    print(json.dumps(result), flush=True)
    ready, _, _ = select.select([sys.stdin], [], [], args.hold_timeout)
    if ready:
        sys.stdin.readline()
    for sock in dialer.held:
        sock.close()
    return {"closed": len(dialer.held)}


def send(args: argparse.Namespace) -> dict:
    chunk = bytes(RECEIVE_SIZE)
    results: list = [None] * args.streams
    barrier = threading.Barrier(args.streams)

    def sender(index: int) -> None:
        try:
            with socket.create_connection((HOST, args.port), timeout=IO_TIMEOUT) as sock:
                barrier.wait(IO_TIMEOUT)
                start = time.perf_counter()
                deadline = start + args.seconds
                while time.perf_counter() < deadline:
                    sock.sendall(chunk)
                sock.shutdown(socket.SHUT_WR)
                count = b""
                while len(count) < _COUNT.size and (data := sock.recv(_COUNT.size - len(count))):
                    count += data
                results[index] = (_COUNT.unpack(count)[0], start, time.perf_counter())
        except (OSError, struct.error, threading.BrokenBarrierError) as exc:
            results[index] = str(exc) or type(exc).__name__

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(args.streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors := [r for r in results if not isinstance(r, tuple)]:
        return {"error": str(errors[0])}
    total = sum(r[0] for r in results)
    elapsed = max(r[2] for r in results) - min(r[1] for r in results)
    return {"bytes": total, "seconds": elapsed, "mbps": total / elapsed / 1e6}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--workers", type=int, default=2)
    p = sub.add_parser("rtt")
    p.add_argument("port", type=int)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--seconds", type=float, default=10.0)
    for name in ("dial", "hold"):
        p = sub.add_parser(name)
        p.add_argument("port", type=int)
        p.add_argument("--count", type=int, required=True)
        p.add_argument("--concurrency", type=int, default=8)
        p.add_argument("--seconds", type=float, default=10.0)
        p.add_argument("--timeout", type=float, default=IO_TIMEOUT)
        if name == "dial":
            p.add_argument(
                "--socks", metavar="HOST", help="PORT is a SOCKS5 server: ask it for HOST"
            )
            p.add_argument("--target-port", type=int, help="the port asked for with --socks")
    p.add_argument("--stop-on-error", action="store_true")
    p.add_argument("--hold-timeout", type=float, default=300.0)
    p = sub.add_parser("send")
    p.add_argument("port", type=int)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args)
        return
    try:
        result = {"rtt": rtt, "dial": dial, "hold": hold, "send": send}[args.command](args)
    except OSError as exc:
        result = {"error": exc.strerror or str(exc) or type(exc).__name__}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
