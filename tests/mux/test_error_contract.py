# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The adapter's error contract: what a failing transport, a finished session and misuse
raise, and that the sans-IO core imports without trio."""

from __future__ import annotations

import ssl
import subprocess
import sys
import textwrap

import pytest
import trio
import trio.testing

import mux

from .mux_support import stream_pair

TRANSPORT_FAILURES = [
    trio.BrokenResourceError("broken"),
    trio.ClosedResourceError("closed under us"),
    ConnectionResetError(104, "Connection reset by peer"),
    ssl.SSLError(1, "[SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC] bad record mac"),
]


class FailingTransport(trio.abc.Stream):
    """A memory stream that raises ``failure`` from every call once it is set, and offers
    ``send_some`` (as `bridge.transport.tls_stream.TLSStream` does), so that senders write
    from their own task."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.failure: BaseException | None = None

    def _check(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def send_some(self, data: bytes | bytearray | memoryview) -> int:
        await trio.lowlevel.checkpoint()
        self._check()
        await self.inner.send_all(data)
        return len(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self._check()
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self._check()
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


async def failing_pair(nursery: trio.Nursery) -> tuple[mux.Session, mux.Session, FailingTransport]:
    left, right = trio.testing.memory_stream_pair()
    transport = FailingTransport(left)

    async def run(*, task_status: trio.TaskStatus[tuple[mux.Session, mux.Session]]) -> None:
        async with (
            mux.open_session(transport, client=True) as client,
            mux.open_session(right, client=False) as server,
        ):
            task_status.started((client, server))
            await trio.sleep_forever()

    client, server = await nursery.start(run)
    return client, server, transport


@pytest.mark.parametrize("failure", TRANSPORT_FAILURES, ids=lambda exc: type(exc).__name__)
async def test_a_failed_write_from_a_sender_raises_session_closed(nursery, failure):
    client, server, transport = await failing_pair(nursery)
    stream, _ = await stream_pair(client, server)
    await trio.testing.wait_all_tasks_blocked()  # no write in flight: the sender writes
    transport.failure = failure
    with pytest.raises(mux.SessionClosed) as first:
        await stream.send_all(b"x" * 1000)
    assert client.closed
    assert not first.value.clean
    assert first.value.__cause__ is failure
    with pytest.raises(mux.SessionClosed) as second:
        await stream.send_all(b"y")
    # A fresh object per raise: tracebacks do not pile up on one shared exception.
    assert second.value is not first.value
    assert second.value.__cause__ is failure
    assert len(list(_frames(second.value.__traceback__))) <= len(
        list(_frames(first.value.__traceback__))
    )
    reason = client.close_reason
    assert reason is not None and reason.__cause__ is failure
    assert reason.__traceback__ is None  # the record is never raised itself
    assert str(reason) == str(first.value)


@pytest.mark.parametrize("failure", TRANSPORT_FAILURES, ids=lambda exc: type(exc).__name__)
async def test_a_failed_read_ends_the_session_with_its_cause(nursery, failure):
    client, server, transport = await failing_pair(nursery)
    stream, peer = await stream_pair(client, server)
    transport.failure = failure
    await peer.send_all(b"wakes the reader")
    with pytest.raises(mux.SessionClosed) as info:
        await client.accept_stream()
    assert info.value.__cause__ is failure
    with pytest.raises(mux.SessionClosed) as again:
        await client.accept_stream()
    assert again.value is not info.value
    for call in (client.open_stream, client.ping, client.go_away):
        with pytest.raises(mux.SessionClosed):
            await call()
    with pytest.raises(mux.SessionClosed):
        await stream.receive_some()


async def test_stream_reset_is_raised_fresh_each_time(sessions):
    client, server = await sessions.open()
    stream, peer = await stream_pair(client, server)
    peer.reset()
    with pytest.raises(mux.StreamReset) as first:
        await stream.receive_some()
    with pytest.raises(mux.StreamReset) as second:
        await stream.send_all(b"x")
    assert first.value is not second.value
    assert str(first.value) == str(second.value)


async def test_no_core_error_escapes_open_stream(sessions):
    client, server = await sessions.open()
    await client.go_away()
    with pytest.raises(mux.SessionClosed) as info:
        await client.open_stream()
    assert info.value.clean
    await server.go_away()
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(mux.RemoteGoAway):
        await server.open_stream()


async def test_exhausted_stream_ids_raise_session_closed(sessions):
    client, _ = await sessions.open()
    client._conn._next_id = 2**32 - 1  # the last ID is never used
    with pytest.raises(mux.SessionClosed, match="stream IDs exhausted") as info:
        await client.open_stream()
    assert isinstance(info.value.__cause__, mux.LocalProtocolError)


async def test_conflict_detector():
    detector = mux.ConflictDetector("another task is already sending on this stream")
    assert not detector.held
    with detector:
        assert detector.held
        with pytest.raises(trio.BusyResourceError, match="already sending"):
            with detector:
                pass  # pragma: no cover
        assert detector.held
    assert not detector.held
    with pytest.raises(ValueError, match="inside"):
        with detector:
            raise ValueError("inside")
    assert not detector.held


def test_the_core_imports_without_trio():
    """The sans-IO core, and ``mux`` itself, import with trio unavailable; only the
    adapter's names need it."""
    program = textwrap.dedent(
        """
        import sys

        class NoTrio:
            def find_spec(self, name, path=None, target=None):
                if name == "trio" or name.startswith("trio."):
                    raise ImportError("trio is blocked")
                return None

        sys.meta_path.insert(0, NoTrio())
        import mux, mux.connection, mux.frames, mux.events, mux.errors, mux.config
        import mux.windows, mux.state
        conn = mux.Connection(client=True)
        conn.open_stream()
        assert conn.data_to_send()
        assert not any(name == "trio" or name.startswith("trio.") for name in sys.modules)
        try:
            mux.Session
        except ImportError as exc:
            print("adapter:", exc)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "adapter: trio is blocked"


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        mux.Nothing  # noqa: B018
    assert {"Session", "Connection", "ConflictDetector"} <= set(dir(mux))


def _frames(tb):
    while tb is not None:
        yield tb
        tb = tb.tb_next
