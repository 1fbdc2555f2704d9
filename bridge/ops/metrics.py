# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Metrics of the relay and the agent, and the HTTP endpoint that serves them.

    metrics = TunnelMetrics()
    metrics.streams.inc(bridge="prod")
    await nursery.start(serve_metrics, metrics, lambda: True, "127.0.0.1", 9100)

`GET /metrics` answers in the Prometheus text format 0.0.4; `GET /healthz` answers 200 `ok`
while `health()` is true and 503 otherwise. Nothing is global: a relay or an agent holds its
own registry.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import ClassVar, Generic, TypeVar

import attrs
import h11
import trio

from bridge.ops.accept import ShedLog, serve_listeners
from bridge.transport.http_status import status_phrase
from bridge.transport.splice import reset_stream

log = logging.getLogger("bridge.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Bucket upper bounds (seconds) of the stream-open latency histogram.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_READ_SIZE = 4096
_LINGER_BYTES = 64 * 1024


# -- values ----------------------------------------------------------------------------------


class CounterValue:
    """One labelled series of a counter: it only goes up."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        """Add `amount`. Raises ValueError for a negative one."""
        if amount < 0:
            raise ValueError(f"a counter cannot go down (inc by {amount})")
        self.value += amount


class GaugeValue:
    """One labelled series of a gauge."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        """Add `amount`."""
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        """Subtract `amount`."""
        self.value -= amount

    def set(self, value: float) -> None:
        """Set to `value`."""
        self.value = value

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Up by one for the duration of the block."""
        self.inc()
        try:
            yield
        finally:
            self.dec()


class HistogramValue:
    """One labelled series of a histogram: counts per bucket, sum and count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum: float = 0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count `value` in its bucket (bounds are inclusive) and in the sum and count."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # a bound is inclusive (le)
        self.sum += value
        self.count += 1


V = TypeVar("V", CounterValue, GaugeValue, HistogramValue)
S = TypeVar("S", CounterValue, GaugeValue)
F = TypeVar("F", bound="_Family")


# -- families --------------------------------------------------------------------------------


class _Family(Generic[V]):
    kind: ClassVar[str]

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labels:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} for {name}")
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate label names for {name}: {labels}")
        self.name = name
        self.help = help
        self.label_names = tuple(labels)
        self._series: dict[tuple[str, ...], V] = {}
        if not labels:
            self._series[()] = self._new()

    def _new(self) -> V:
        raise NotImplementedError

    def _key(self, labels: dict[str, object]) -> tuple[str, ...]:
        if labels.keys() != set(self.label_names):
            expected = ", ".join(self.label_names) or "no labels"
            raise ValueError(f"{self.name} takes {expected}, not {', '.join(labels) or 'none'}")
        return tuple(str(labels[name]) for name in self.label_names)

    def labels(self, /, **labels: object) -> V:
        """The series with these label values (created at zero on first use)."""
        key = self._key(labels)
        if (series := self._series.get(key)) is None:
            series = self._series[key] = self._new()
        return series

    def series(self) -> Iterator[tuple[dict[str, str], V]]:
        for key in sorted(self._series):
            yield dict(zip(self.label_names, key)), self._series[key]

    def render(self) -> Iterator[str]:
        yield f"# HELP {self.name} {_escape(self.help, quote=False)}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, series in self.series():
            yield from self._samples(labels, series)

    def _samples(self, labels: dict[str, str], series: V) -> Iterator[str]:
        raise NotImplementedError


class _ScalarFamily(_Family[S]):
    """A family whose series are one number each: counters and gauges."""

    def _samples(self, labels: dict[str, str], series: S) -> Iterator[str]:
        yield f"{self.name}{_labels(labels)} {_number(series.value)}"


class Counter(_ScalarFamily[CounterValue]):
    """A family of counters, one per label set; `inc` and `value` take the labels as keywords."""

    kind = "counter"
    _new = CounterValue

    def inc(self, amount: float = 1, /, **labels: object) -> None:
        """Add `amount` to the series of `labels`. Raises ValueError for a negative amount or labels
        that are not the family's."""
        self.labels(**labels).inc(amount)

    def value(self, /, **labels: object) -> float:
        """The series' value, 0 for a series never touched."""
        series = self._series.get(self._key(labels))
        return 0 if series is None else series.value


class Gauge(_ScalarFamily[GaugeValue]):
    """A family of gauges, one per label set; the methods take the labels as keywords."""

    kind = "gauge"
    _new = GaugeValue

    def inc(self, amount: float = 1, /, **labels: object) -> None:
        """Add `amount` to the series of `labels`. Raises ValueError for labels that are not the
        family's."""
        self.labels(**labels).inc(amount)

    def dec(self, amount: float = 1, /, **labels: object) -> None:
        """Subtract `amount` from the series of `labels`."""
        self.labels(**labels).dec(amount)

    def set(self, value: float, /, **labels: object) -> None:
        """Set the series of `labels` to `value`."""
        self.labels(**labels).set(value)

    def value(self, /, **labels: object) -> float:
        """The series' value, 0 for a series never touched."""
        series = self._series.get(self._key(labels))
        return 0 if series is None else series.value


class Histogram(_Family[HistogramValue]):
    """A family of histograms with fixed bucket bounds, one per label set. Raises ValueError on
    construction for bounds that are empty, not increasing or infinite, and for a label ``le``."""

    kind = "histogram"

    def __init__(
        self, name: str, help: str, labels: Sequence[str], buckets: Iterable[float]
    ) -> None:
        bounds = tuple(float(b) for b in buckets)
        if not bounds or list(bounds) != sorted(set(bounds)) or not math.isfinite(bounds[-1]):
            raise ValueError(f"buckets of {name} must be finite, increasing and not empty")
        if "le" in labels:
            raise ValueError(f"{name}: 'le' is reserved for histogram buckets")
        self.bounds = bounds
        super().__init__(name, help, labels)

    def _new(self) -> HistogramValue:
        return HistogramValue(self.bounds)

    def observe(self, value: float, /, **labels: object) -> None:
        """Count `value` in the series of `labels`. Raises ValueError for labels that are not the
        family's."""
        self.labels(**labels).observe(value)

    def _samples(self, labels: dict[str, str], series: HistogramValue) -> Iterator[str]:
        cumulative = 0
        for bound, count in zip((*self.bounds, math.inf), series.counts):
            cumulative += count
            le = _labels({**labels, "le": _number(bound)})
            yield f"{self.name}_bucket{le} {cumulative}"
        yield f"{self.name}_sum{_labels(labels)} {_number(series.sum)}"
        yield f"{self.name}_count{_labels(labels)} {series.count}"


def _escape(text: str, *, quote: bool = True) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quote else text


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in labels.items()) + "}"


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


# -- registries ------------------------------------------------------------------------------


class Metrics:
    """A registry of metric families, rendered in registration order."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def _add(self, family: F) -> F:
        if family.name in self._families:
            raise ValueError(f"metric {family.name} is already registered")
        self._families[family.name] = family
        return family

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        """Register and return a `Counter`. Raises ValueError when the name is taken."""
        return self._add(Counter(name, help, labels))

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        """Register and return a `Gauge`. Raises ValueError when the name is taken."""
        return self._add(Gauge(name, help, labels))

    def histogram(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        buckets: Iterable[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        """Register and return a `Histogram`. Raises ValueError when the name is taken or the
        buckets are invalid."""
        return self._add(Histogram(name, help, labels, buckets))

    def render(self) -> str:
        """Every family in the Prometheus text format 0.0.4."""
        lines = (line for family in self._families.values() for line in family.render())
        return "".join(line + "\n" for line in lines)


class TunnelMetrics(Metrics):
    """The metrics of a relay or an agent. `bridge` is the bridge's name at the relay and its
    ID at the agent; `direction` is `to_target` or `from_target`."""

    def __init__(self) -> None:
        super().__init__()
        p = "trio_bridge_"
        self.sessions = self.gauge(
            p + "sessions_connected", "Agent sessions connected, by bridge.", ["bridge"]
        )
        self.streams_open = self.gauge(
            p + "streams_open", "Tunneled connections open now.", ["bridge"]
        )
        self.streams = self.counter(p + "streams_total", "Tunneled connections opened.", ["bridge"])
        self.bytes = self.counter(
            p + "bytes_total", "Payload bytes tunneled, by direction.", ["bridge", "direction"]
        )
        self.open_seconds = self.histogram(
            p + "stream_open_seconds",
            "Time from asking for a tunneled connection to the target being connected.",
            ["bridge"],
        )
        self.auth_failures = self.counter(
            p + "auth_failures_total",
            "Rejected credentials, by listener (agent: bridge credentials, socks: SOCKS5 "
            "username/password).",
            ["listener"],
        )
        self.reconnects = self.counter(
            p + "reconnects_total", "Times the agent connected again after losing the relay."
        )
        self.refused = self.counter(
            p + "refused_targets_total",
            "Tunneled connections refused, by reason: the agent's (not_allowed, dns_failure, "
            "connection_refused, timeout, unreachable, bad_request, internal_error) or the "
            "relay's (not_connected, busy, failed, not_a_bridge_host).",
            ["reason"],
        )
        self.relay_sessions = self.gauge(
            p + "agent_relay_sessions",
            "The agent's sessions, by relay address and node (empty: not named): 1 while up.",
            ["bridge", "relay", "node"],
        )
        #: Each bridge's per-stream series, looked up once (series are never dropped).
        self._bridges: dict[str, BridgeSeries] = {}

    def for_bridge(self, bridge: str) -> BridgeSeries:
        """The series every tunneled connection of `bridge` updates."""
        if (series := self._bridges.get(bridge)) is None:
            series = self._bridges[bridge] = BridgeSeries(
                open_seconds=self.open_seconds.labels(bridge=bridge),
                streams=self.streams.labels(bridge=bridge),
                streams_open=self.streams_open.labels(bridge=bridge),
                to_target=self.bytes.labels(bridge=bridge, direction="to_target"),
                from_target=self.bytes.labels(bridge=bridge, direction="from_target"),
            )
        return series

    def opened(
        self, stream: trio.abc.HalfCloseableStream, bridge: str, seconds: float
    ) -> MeteredStream:
        """Count a tunneled connection that took `seconds` to open; returns `stream` wrapped
        so that its bytes are counted, and it counts as open until closed."""
        series = self.for_bridge(bridge)
        series.open_seconds.observe(seconds)
        return MeteredStream(stream, self, bridge, series)


@attrs.frozen
class BridgeSeries:
    """One bridge's series of the metrics every tunneled connection updates
    (`TunnelMetrics.for_bridge`)."""

    open_seconds: HistogramValue
    streams: CounterValue
    streams_open: GaugeValue
    to_target: CounterValue
    from_target: CounterValue


class MeteredStream(trio.abc.HalfCloseableStream):
    """A stream to a target: bytes sent count as `to_target`, bytes received as
    `from_target`; it counts in `streams_open` until closed.

    It also keeps this connection's own totals (`bytes_sent`, `bytes_received`), whether it
    was aborted (`was_reset`), and calls `on_close(self)` once when closed (set it to be
    told; an exception it raises propagates from `aclose`)."""

    def __init__(
        self,
        stream: trio.abc.HalfCloseableStream,
        metrics: TunnelMetrics,
        bridge: str,
        series: BridgeSeries | None = None,
    ) -> None:
        self.transport_stream = stream
        if series is None:
            series = metrics.for_bridge(bridge)
        self._sent = series.to_target
        self._received = series.from_target
        self._open = series.streams_open
        self._closed = False
        self.bytes_sent = 0
        self.bytes_received = 0
        self.was_reset = False
        self.on_close: Callable[[MeteredStream], object] | None = None
        series.streams.inc()
        self._open.inc()
        if getattr(stream, "try_send", None) is not None:
            self.try_send = self._try_send
        # The half-close that never waits (`mux.Stream.send_eof_nowait`), passed on as is:
        # `splice` sends a tunnel's end of the data with it, without a task switch.
        if (send_eof_nowait := getattr(stream, "send_eof_nowait", None)) is not None:
            self.send_eof_nowait = send_eof_nowait
        if getattr(stream, "receive_view", None) is not None:
            self.receive_view = self._receive_view
        if getattr(stream, "receive_view_nowait", None) is not None:
            self.receive_view_nowait = self._receive_view_nowait

    def _try_send(self, data: bytes | bytearray | memoryview) -> int:
        """`mux.Stream.try_send` through the wrapped stream (the wrapper's ``try_send`` where
        it has one), the bytes taken counted as sent; raises what it raises."""
        taken: int = self.transport_stream.try_send(data)  # type: ignore[attr-defined]
        if taken:
            self.bytes_sent += taken
            self._sent.inc(taken)
        return taken

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send through the wrapped stream, then count the bytes; raises what it raises (nothing is
        counted then)."""
        await self.transport_stream.send_all(data)
        size = memoryview(data).nbytes
        self.bytes_sent += size
        self._sent.inc(size)

    async def wait_send_all_might_not_block(self) -> None:
        """As the wrapped stream's."""
        await self.transport_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Half-close the wrapped stream."""
        await self.transport_stream.send_eof()

    def set_push(self, push: Callable[[memoryview], int] | None) -> bool:
        """Push delivery (`mux.Stream.set_push`) through the wrapped stream, the bytes pushed
        counted as received; False (nothing set) if the wrapped stream cannot push."""
        set_push = getattr(self.transport_stream, "set_push", None)
        if set_push is None:
            return False
        if push is None:
            return bool(set_push(None))
        counter = self._received

        def counted(data: memoryview) -> int:
            taken = push(data)
            if taken:
                self.bytes_received += taken
                counter.inc(taken)
            return taken

        return bool(set_push(counted))

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Receive from the wrapped stream and count the bytes; raises what it raises."""
        data = await self.transport_stream.receive_some(max_bytes)
        self.bytes_received += len(data)
        self._received.inc(len(data))
        return data

    async def _receive_view(self, max_bytes: int) -> bytes | bytearray | memoryview:
        """`mux.Stream.receive_view` through the wrapped stream, the bytes counted as received;
        raises what it raises."""
        data: bytes | bytearray | memoryview = await self.transport_stream.receive_view(  # type: ignore[attr-defined]
            max_bytes
        )
        self.bytes_received += len(data)
        self._received.inc(len(data))
        return data

    def _receive_view_nowait(self, max_bytes: int) -> bytes | bytearray | memoryview:
        """`mux.Stream.receive_view_nowait` through the wrapped stream, the bytes counted as
        received; raises what it raises."""
        data: bytes | bytearray | memoryview = self.transport_stream.receive_view_nowait(  # type: ignore[attr-defined]
            max_bytes
        )
        self.bytes_received += len(data)
        self._received.inc(len(data))
        return data

    def reset(self) -> None:
        """Abort the connection (RST to the far end) through the wrapped streams."""
        self.was_reset = True
        reset_stream(self.transport_stream)

    async def aclose(self) -> None:
        """Stop counting the stream as open (once), then close the wrapped stream."""
        if not self._closed:
            self._closed = True
            self._open.dec()
            if self.on_close is not None:
                self.on_close(self)
        await self.transport_stream.aclose()


# -- the HTTP endpoint -----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class MetricsServerConfig:
    """request_timeout: seconds a client has to send its request and take the answer.
    max_request_head: bytes the request line and headers may take (431 beyond)."""

    request_timeout: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    max_request_head: int = attrs.field(default=8192, validator=attrs.validators.ge(256))


async def serve_metrics(
    metrics: Metrics,
    health: Callable[[], bool],
    host: str | None,
    port: int,
    *,
    config: MetricsServerConfig = MetricsServerConfig(),
    refresh: Callable[[], Awaitable[None]] | None = None,
    shed: Callable[[OSError], None] | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `GET /metrics` and `GET /healthz` on host:port until cancelled (port 0: any
    free port). `task_status.started` gets the list of `trio.SocketListener`s. Each
    connection carries one request. `refresh`, if given, is awaited before each answer to
    `/metrics` (e.g. to collect the metrics of other processes; it bounds its own time).
    Out of descriptors, new connections are closed at once (`bridge.ops.accept`), told to
    `shed` (by default logged once per 10 s, without a traceback). Raises OSError when it
    cannot listen."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    handler = partial(_serve_client, metrics, health, config, refresh)
    if shed is None:
        shed = ShedLog(log, "metrics")
    await serve_listeners(handler, listeners, shed=shed, task_status=task_status)


async def _serve_client(
    metrics: Metrics,
    health: Callable[[], bool],
    config: MetricsServerConfig,
    refresh: Callable[[], Awaitable[None]] | None,
    stream: trio.SocketStream,
) -> None:
    """Never raises: a client that misbehaves or goes away only ends its own connection."""
    async with stream:
        try:
            with trio.move_on_after(config.request_timeout):
                await _exchange(stream, metrics, health, config, refresh)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("Metrics request failed")


async def _exchange(
    stream: trio.SocketStream,
    metrics: Metrics,
    health: Callable[[], bool],
    config: MetricsServerConfig,
    refresh: Callable[[], Awaitable[None]] | None = None,
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_request_head)
    head_only = False
    received = 0
    try:
        while (event := conn.next_event()) is h11.NEED_DATA:
            # never more than one byte past the bound, so that h11 answers 431 beyond it
            size = max(1, min(_READ_SIZE, config.max_request_head + 1 - received))
            data = await stream.receive_some(size)
            received += len(data)
            conn.receive_data(data)
        if not isinstance(event, h11.Request):
            return  # the client left without asking anything
        head_only = event.method == b"HEAD"
        if refresh is not None and event.target.partition(b"?")[0] == b"/metrics":
            await refresh()
        status, content_type, body, extra = _answer(event, metrics, health)
    except h11.RemoteProtocolError as exc:
        status = exc.error_status_hint
        content_type, body, extra = "text/plain; charset=utf-8", _phrase(status), []
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
        *extra,
    ]
    reason = status_phrase(status).encode()
    data = conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
    if not head_only:
        data += conn.send(h11.Data(data=body))
    data += conn.send(h11.EndOfMessage())
    await stream.send_all(data)
    # Half-close, then drop what the client still sends (a bounded amount): closing with
    # unread bytes would reset the connection under the answer.
    await stream.send_eof()
    discarded = 0
    while discarded < _LINGER_BYTES and (chunk := await stream.receive_some(_READ_SIZE)):
        discarded += len(chunk)


def _answer(
    request: h11.Request, metrics: Metrics, health: Callable[[], bool]
) -> tuple[int, str, bytes, list[tuple[str, str]]]:
    text = "text/plain; charset=utf-8"
    path = request.target.partition(b"?")[0]
    if path not in (b"/metrics", b"/healthz"):
        return 404, text, _phrase(404), []
    if request.method not in (b"GET", b"HEAD"):
        return 405, text, _phrase(405), [("Allow", "GET, HEAD")]
    if path == b"/metrics":
        return 200, CONTENT_TYPE, metrics.render().encode(), []
    try:
        healthy = bool(health())
    except Exception:
        log.exception("Health check failed")
        healthy = False
    return (200, text, b"ok\n", []) if healthy else (503, text, _phrase(503), [])


def _phrase(status: int) -> bytes:
    """The body of a plain-text error answer: ``not found\\n``."""
    return f"{status_phrase(status).lower()}\n".encode()
