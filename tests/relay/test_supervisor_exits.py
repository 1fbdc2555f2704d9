# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""How the parent of ``serve --workers`` counts a worker's exit while the workers stop: a
real child process and a real link (a SEQPACKET socket pair) stand for the worker, in the
states that are hard to reach on purpose with a whole relay (a worker between closing its
link and exiting)."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys

import trio

from bridge.ops.systemd import Notifier
from relay.workers import Listeners, Supervisor, _Worker

# Closes its end of the link as a worker does once it is done, says so, and stays alive
# with the default SIGTERM action (a worker past its signal handlers), or exits at once
# with the status it is given.
_CHILD = """
import os, sys, time
os.close(int(sys.argv[1]))
if sys.argv[2] != "stay":
    sys.exit(int(sys.argv[2]))
print("closed", flush=True)
time.sleep(60)
"""


async def _worker(supervisor: Supervisor, then: str) -> _Worker:
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", _CHILD, str(child_end.fileno()), then],
            pass_fds=[child_end.fileno()],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
    finally:
        child_end.close()
    worker = _Worker(0, 1, "node-0", process, trio.socket.from_stdlib_socket(parent_end))
    supervisor.workers.add(worker)
    return worker


async def _stop(then: str) -> tuple[Supervisor, _Worker]:
    """A supervisor that is stopping tells a worker to drain once the worker has closed its
    link (`then`: "stay" alive, or the exit status); returns once the worker has exited."""
    supervisor = Supervisor([], 1, Listeners(agent=[]), "node", Notifier(None))
    supervisor.stopping = True  # an exit is not restarted
    async with trio.open_nursery() as nursery:
        supervisor._nursery = nursery
        worker = await _worker(supervisor, then)
        nursery.start_soon(supervisor._supervise, worker)
        if then == "stay":
            assert worker.process.stdout is not None
            assert (await worker.process.stdout.receive_some()).startswith(b"closed")
        supervisor._retire(worker)
        with trio.fail_after(20):
            await worker.exited.wait()
    return supervisor, worker


async def test_a_worker_ended_by_the_sigterm_sent_for_want_of_its_link_is_no_failure(caplog):
    caplog.set_level(logging.DEBUG, logger="relay.workers")
    supervisor, worker = await _stop("stay")
    # The drain order found the link closed: SIGTERM, which the worker did not handle.
    assert worker.terminated
    assert worker.process.returncode == -signal.SIGTERM
    assert not supervisor._failed
    assert "Worker exited with a failure while stopping" not in caplog.text


async def test_a_worker_that_fails_while_stopping_makes_the_relay_fail_and_says_so(caplog):
    caplog.set_level(logging.DEBUG, logger="relay.workers")
    supervisor, worker = await _stop("3")
    assert worker.process.returncode == 3
    assert supervisor._failed
    failures = [r for r in caplog.records if r.getMessage().startswith("Worker exited with a")]
    assert [r.levelno for r in failures] == [logging.WARNING]
    assert failures[0].fields["status"] == 3  # type: ignore[attr-defined]
