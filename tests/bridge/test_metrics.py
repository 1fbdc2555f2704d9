# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Metrics: the registry, the exposition format checked by a strict parser, the counted
stream, and the HTTP endpoint through real curl and raw sockets."""

from __future__ import annotations

import math
import os
import re
from functools import partial

import pytest
import trio
import trio.testing

from bridge.ops.metrics import (
    CONTENT_TYPE,
    Metrics,
    MetricsServerConfig,
    TunnelMetrics,
    serve_metrics,
)
from bridge.protocol.addresses import parse_listen_address

# -- a strict reader of the text format 0.0.4 ------------------------------------------------

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_UNESCAPE = partial(re.compile(r"\\(.)").sub, lambda m: "\n" if m[1] == "n" else m[1])


def _parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        match = _LABEL.match(text, pos)
        assert match, f"bad labels at {text[pos:]!r}"
        assert match[1] not in labels, f"duplicate label {match[1]}"
        labels[match[1]] = _UNESCAPE(match[2])
        pos = match.end()
        if pos < len(text):
            assert text[pos] == ",", text
            pos += 1
    return labels


def parse_exposition(text: str):
    """-> ({family: (type, help)}, {(sample name, frozenset of labels): value}); asserts every
    rule: HELP then TYPE before a family's samples, samples named after their family, no
    duplicates, cumulative histogram buckets ending at +Inf == _count."""
    assert text.endswith("\n")
    families: dict[str, tuple[str, str]] = {}
    samples: dict[tuple[str, frozenset], float] = {}
    help_text: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, doc = line[7:].partition(" ")
            assert name not in help_text and name not in families
            help_text[name] = _UNESCAPE(doc)
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert kind in ("counter", "gauge", "histogram") and name not in families
            families[name] = (kind, help_text.get(name, ""))
            current = name
        else:
            match = _SAMPLE.fullmatch(line)
            assert match and current, line
            name, labels, value = match[1], _parse_labels(match[2] or ""), match[3]
            kind = families[current][0]
            suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
            assert name in [current + s for s in suffixes], f"{name} outside its family"
            assert (name == current + "_bucket") == ("le" in labels)
            key = (name, frozenset(labels.items()))
            assert key not in samples, f"duplicate sample {line}"
            samples[key] = float(value)
    for name, (kind, _) in families.items():
        if kind != "histogram":
            continue
        for (sample, labels), count in samples.items():
            if sample != name + "_count":
                continue
            buckets = sorted(
                (float(dict(bucket)["le"]), v)
                for (s, bucket), v in samples.items()
                if s == name + "_bucket" and bucket - {("le", dict(bucket)["le"])} == labels
            )
            assert buckets[-1] == (math.inf, count)
            assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    return families, samples


def value(samples, metric: str, /, **labels) -> float:
    return samples[(metric, frozenset(labels.items()))]


# -- the registry ----------------------------------------------------------------------------


def test_tunnel_metrics_render_as_valid_exposition():
    metrics = TunnelMetrics()
    families, samples = parse_exposition(metrics.render())
    assert {name: kind for name, (kind, _) in families.items()} == {
        "trio_bridge_sessions_connected": "gauge",
        "trio_bridge_streams_open": "gauge",
        "trio_bridge_streams_total": "counter",
        "trio_bridge_bytes_total": "counter",
        "trio_bridge_stream_open_seconds": "histogram",
        "trio_bridge_auth_failures_total": "counter",
        "trio_bridge_reconnects_total": "counter",
        "trio_bridge_refused_targets_total": "counter",
        "trio_bridge_agent_relay_sessions": "gauge",
    }
    assert samples == {("trio_bridge_reconnects_total", frozenset()): 0}

    metrics.sessions.inc(bridge="prod")
    metrics.sessions.inc(bridge="prod")
    metrics.sessions.dec(bridge="prod")
    metrics.streams.inc(3, bridge="prod")
    metrics.bytes.inc(1500, bridge="prod", direction="to_target")
    metrics.open_seconds.observe(0.005, bridge="prod")  # a bound belongs to its bucket
    metrics.open_seconds.observe(0.02, bridge="prod")
    metrics.open_seconds.observe(60, bridge="prod")
    metrics.refused.inc(reason="not_allowed")
    metrics.reconnects.inc()
    _, samples = parse_exposition(metrics.render())
    assert value(samples, "trio_bridge_sessions_connected", bridge="prod") == 1
    assert value(samples, "trio_bridge_streams_total", bridge="prod") == 3
    assert value(samples, "trio_bridge_bytes_total", bridge="prod", direction="to_target") == 1500
    assert value(samples, "trio_bridge_refused_targets_total", reason="not_allowed") == 1
    assert value(samples, "trio_bridge_reconnects_total") == 1
    bucket = partial(value, samples, "trio_bridge_stream_open_seconds_bucket", bridge="prod")
    assert [bucket(le=le) for le in ["0.0025", "0.005", "0.025", "10", "+Inf"]] == [0, 1, 2, 2, 3]
    assert value(samples, "trio_bridge_stream_open_seconds_sum", bridge="prod") == 60.025
    assert value(samples, "trio_bridge_stream_open_seconds_count", bridge="prod") == 3


def test_help_and_label_values_are_escaped():
    metrics = Metrics()
    weird = 'a "quoted" back\\slash\nnew line'
    gauge = metrics.gauge("g", "help with \\ and\nnewline", ["name", "other"])
    gauge.set(2.5, name=weird, other="")
    text = metrics.render()
    assert text.count("\n") == 3
    families, samples = parse_exposition(text)
    assert families == {"g": ("gauge", "help with \\ and\nnewline")}
    assert value(samples, "g", name=weird, other="") == 2.5


def test_special_values():
    metrics = Metrics()
    gauge = metrics.gauge("g", "special", ["v"])
    for name, number in [("inf", math.inf), ("ninf", -math.inf), ("nan", math.nan), ("f", 0.1)]:
        gauge.set(number, v=name)
    lines = metrics.render().splitlines()
    for expected in ['g{v="inf"} +Inf', 'g{v="ninf"} -Inf', 'g{v="nan"} NaN', 'g{v="f"} 0.1']:
        assert expected in lines


def test_misuse_is_refused():
    metrics = Metrics()
    counter = metrics.counter("c_total", "a counter", ["bridge"])
    with pytest.raises(ValueError, match="takes bridge, not bridge, extra"):
        counter.inc(bridge="x", extra="y")
    with pytest.raises(ValueError, match="takes bridge, not none"):
        counter.inc()
    with pytest.raises(ValueError, match="cannot go down"):
        counter.inc(-1, bridge="x")
    with pytest.raises(ValueError, match="already registered"):
        metrics.gauge("c_total", "again")
    with pytest.raises(ValueError, match="invalid metric name"):
        metrics.gauge("bad-name", "dash")
    with pytest.raises(ValueError, match="invalid label name"):
        metrics.gauge("g", "label", ["__reserved"])
    with pytest.raises(ValueError, match="reserved"):
        metrics.histogram("h", "le", ["le"])
    with pytest.raises(ValueError, match="increasing"):
        metrics.histogram("h2", "buckets", buckets=[1, 0.5])
    assert counter.value(bridge="never") == 0
    assert "never" not in metrics.render()


def test_gauge_tracks_a_block():
    gauge = Metrics().gauge("g", "in progress", ["bridge"])
    with pytest.raises(RuntimeError), gauge.labels(bridge="prod").track():
        assert gauge.value(bridge="prod") == 1
        raise RuntimeError
    assert gauge.value(bridge="prod") == 0


async def test_metered_stream_counts_bytes_and_open_streams():
    metrics = TunnelMetrics()
    near, far = trio.testing.memory_stream_pair()
    stream = metrics.opened(near, "prod", 0.01)
    assert metrics.streams_open.value(bridge="prod") == 1
    await stream.send_all(b"12345")
    assert await far.receive_some() == b"12345"
    await far.send_all(b"abc")
    assert await stream.receive_some() == b"abc"
    await stream.aclose()
    await stream.aclose()
    assert metrics.streams_open.value(bridge="prod") == 0
    assert metrics.streams.value(bridge="prod") == 1
    assert metrics.bytes.value(bridge="prod", direction="to_target") == 5
    assert metrics.bytes.value(bridge="prod", direction="from_target") == 3
    assert metrics.open_seconds.labels(bridge="prod").count == 1


def test_parse_listen_address():
    assert parse_listen_address("9100") == ("127.0.0.1", 9100)
    assert parse_listen_address(":9100") == ("127.0.0.1", 9100)
    assert parse_listen_address("0.0.0.0:0") == ("0.0.0.0", 0)
    assert parse_listen_address("[::1]:9100") == ("::1", 9100)
    assert parse_listen_address("metrics.local:80") == ("metrics.local", 80)
    for text, problem in [
        ("::1:9100", "brackets"),
        ("host:99999", "0 to 65535"),
        ("host:", "0 to 65535"),
        ("bad host:1", "not a hostname"),
        ("[::1]9100", r"\[IPV6\]:PORT"),
    ]:
        with pytest.raises(ValueError, match=problem):
            parse_listen_address(text)


# -- the HTTP endpoint -----------------------------------------------------------------------


class Endpoint:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    async def curl(self, *args: str) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of one request made by curl."""
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        result = await trio.run_process(
            ["curl", "-sS", "--max-time", "10", "-i", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        head, _, body = result.stdout.partition(b"\r\n\r\n")
        status_line, *lines = head.decode().split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines)
        return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body

    async def raw(self, request: bytes, *, eof: bool = True) -> bytes:
        async with await trio.open_tcp_stream("127.0.0.1", self.port) as stream:
            await stream.send_all(request)
            if eof:
                await stream.send_eof()
            data = b""
            while chunk := await stream.receive_some():
                data += chunk
            return data


@pytest.fixture
async def endpoint(nursery):
    metrics = TunnelMetrics()
    healthy = [True]
    config = MetricsServerConfig(request_timeout=0.5, max_request_head=1024)
    listeners = await nursery.start(
        partial(serve_metrics, metrics, lambda: healthy[0], "127.0.0.1", 0, config=config)
    )
    endpoint = Endpoint(listeners[0].socket.getsockname()[1])
    endpoint.metrics, endpoint.healthy = metrics, healthy
    return endpoint


async def test_metrics_and_health_through_curl(endpoint):
    endpoint.metrics.streams.inc(bridge="prod")
    status, headers, body = await endpoint.curl(f"{endpoint.url}/metrics")
    assert (status, headers["content-type"]) == (200, CONTENT_TYPE)
    assert int(headers["content-length"]) == len(body)
    _, samples = parse_exposition(body.decode())
    assert value(samples, "trio_bridge_streams_total", bridge="prod") == 1

    assert (await endpoint.curl(f"{endpoint.url}/healthz"))[::2] == (200, b"ok\n")
    endpoint.healthy[0] = False
    assert (await endpoint.curl(f"{endpoint.url}/healthz"))[::2] == (503, b"service unavailable\n")
    endpoint.healthy[0] = True
    assert (await endpoint.curl(f"{endpoint.url}/healthz?verbose=1"))[0] == 200

    assert (await endpoint.curl(f"{endpoint.url}/"))[0] == 404
    status, headers, _ = await endpoint.curl("-X", "POST", "-d", "x=1", f"{endpoint.url}/metrics")
    assert (status, headers["allow"]) == (405, "GET, HEAD")
    status, headers, body = await endpoint.curl("--head", f"{endpoint.url}/metrics")
    assert (status, body) == (200, b"") and int(headers["content-length"]) > 0


async def test_a_failing_health_check_is_unhealthy(nursery):
    def broken() -> bool:
        raise RuntimeError("boom")

    listeners = await nursery.start(serve_metrics, Metrics(), broken, "127.0.0.1", 0)
    endpoint = Endpoint(listeners[0].socket.getsockname()[1])
    assert (await endpoint.curl(f"{endpoint.url}/healthz"))[0] == 503


async def test_bad_requests_get_an_answer_and_do_not_hurt_the_server(endpoint):
    assert (await endpoint.raw(b"\x00\xff garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 2000 + b"\r\n\r\n"
    assert (await endpoint.raw(huge)).startswith(b"HTTP/1.1 431 ")
    assert (await endpoint.raw(b"GET /metr")).startswith(b"HTTP/1.1 400 ")  # then EOF
    assert await endpoint.raw(b"") == b""
    assert await endpoint.raw(b"GET /metrics HTTP/1.1\r\n", eof=False) == b""  # deadline
    assert (await endpoint.raw(b"GET /healthz HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
