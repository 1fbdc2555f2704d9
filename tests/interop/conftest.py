# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""A hashicorp/yamux peer in Go (goyamux/main.go), built once per test run (the same build as
the benchmark's Go tunnel: bench.gotunnel.go_build)."""

import os
import shutil
import subprocess
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import mux
from bench.gotunnel import YAMUX_SOURCE, BuildError, go_build

PEER_SOURCE = Path(__file__).parent / "goyamux"
# Bounds every conversation with the Go peer, including its start and exit.
TIME_LIMIT = 60


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (interop tests may not skip when CI=true)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def goyamux_binary(tmp_path_factory) -> Path:
    if shutil.which("go") is None:
        _unavailable("the Go toolchain is missing (Debian package golang-go)")
    if not (YAMUX_SOURCE / "session.go").is_file():
        _unavailable(
            f"hashicorp/yamux is missing from {YAMUX_SOURCE} "
            "(Debian package golang-github-hashicorp-yamux-dev)"
        )
    out = tmp_path_factory.mktemp("goyamux")
    try:
        return go_build(PEER_SOURCE, out / "goyamux", out / "cache")
    except BuildError as exc:
        pytest.fail(f"building the Go yamux peer failed:\n{exc}")


class GoPeer:
    """A running Go peer: its TCP connection and the lines it prints."""

    def __init__(self, process: trio.Process):
        self.process = process
        self.transport: trio.SocketStream | None = None
        self._buffer = b""

    async def line(self) -> str:
        while b"\n" not in self._buffer:
            data = await self.process.stdout.receive_some()
            if not data:
                raise AssertionError(f"the Go peer exited; unread output {self._buffer!r}")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    async def lines(self, count: int) -> list[str]:
        return [await self.line() for _ in range(count)]

    async def rest(self) -> str:
        """Everything still to be printed, until the peer exits."""
        while data := await self.process.stdout.receive_some():
            self._buffer += data
        rest, self._buffer = self._buffer, b""
        return rest.decode()


class GoYamux:
    def __init__(self, binary: Path):
        self.binary = binary

    @asynccontextmanager
    async def peer(self, scenario: str, *, go_client: bool = False, **options):
        """Start the Go peer on `scenario` and accept its connection.

        On a normal exit from the block, the Go peer must exit 0 (it exits once
        the connection is closed, and reports failures by its exit status).
        """
        with trio.fail_after(TIME_LIMIT):
            listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
            port = listener.socket.getsockname()[1]
            args = [
                str(self.binary),
                f"-addr=127.0.0.1:{port}",
                f"-scenario={scenario}",
                f"-role={'client' if go_client else 'server'}",
                *(f"-{name}={value}" for name, value in options.items()),
            ]
            process = await trio.lowlevel.open_process(args, stdout=subprocess.PIPE)
            peer = GoPeer(process)
            try:
                async with listener:
                    peer.transport = await listener.accept()
                async with peer.transport:
                    yield peer
                status = await process.wait()
            finally:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
                    rest = await peer.rest()
                    await process.stdout.aclose()
                if rest:
                    print(f"output of the Go peer not read by the test:\n{rest}")
            assert status == 0, f"the Go peer failed:\n{rest}"

    @asynccontextmanager
    async def session(
        self, scenario: str, *, python_client: bool, config: mux.Config | None = None, **options
    ):
        """A mux session (Python side) with the Go peer playing `scenario`."""
        async with (
            self.peer(scenario, go_client=not python_client, **options) as peer,
            mux.open_session(peer.transport, client=python_client, config=config) as session,
        ):
            yield session, peer


@pytest.fixture
def goyamux(goyamux_binary) -> GoYamux:
    return GoYamux(goyamux_binary)


@pytest.fixture(params=[True, False], ids=["python-client", "python-server"])
def python_client(request) -> bool:
    return request.param
