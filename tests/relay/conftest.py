# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Fixtures for the relay tests: certificates, stores, a running relay, targets."""

from __future__ import annotations

import socket
from functools import partial

import pytest
import trio

from relay import MemoryStore, PostgresStore, SQLiteStore
from relay.certificates import ensure_self_signed, fingerprint

from .relay_support import CertFiles, RelayHarness


@pytest.fixture(scope="session")
def cert_files(tmp_path_factory) -> CertFiles:
    cert, key = ensure_self_signed(tmp_path_factory.mktemp("relay-cert"))
    return CertFiles(cert, key, fingerprint(cert))


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request, tmp_path):
    """Each of the stores: the tests that take it hold for all three."""
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "sqlite":
        store = SQLiteStore(tmp_path / "bridges.db")
    else:
        store = PostgresStore(request.getfixturevalue("postgres_url"))
    yield store
    store.close()


@pytest.fixture
def sqlite_store(tmp_path):
    store = SQLiteStore(tmp_path / "bridges.db")
    yield store
    store.close()


@pytest.fixture
async def harness(nursery, store, cert_files) -> RelayHarness:
    return await RelayHarness(nursery, store, cert_files).start()


@pytest.fixture
async def sqlite_harness(nursery, sqlite_store, cert_files) -> RelayHarness:
    return await RelayHarness(nursery, sqlite_store, cert_files).start()


async def _echo(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
            await stream.send_eof()
        except trio.BrokenResourceError:
            pass


@pytest.fixture
async def echo_port(nursery) -> int:
    """A TCP echo server on 127.0.0.1 that passes the client's EOF back."""
    listeners = await nursery.start(partial(trio.serve_tcp, _echo, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
