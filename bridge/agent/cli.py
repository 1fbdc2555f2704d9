# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""``bridge-agent``: run the agent from flags and environment variables (flags win)."""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, NoReturn

import attrs
import trio

from bridge import __version__
from bridge.agent.agent import MAX_CONNECTIONS, Agent, AgentConfig, RelayRejected
from bridge.agent.allowlist import AllowList, parse_name_patterns
from bridge.agent.relay_url import DEFAULT_PATH, DEFAULT_PORTS, parse_relay_urls
from bridge.ops import logs
from bridge.ops.errors import os_reason
from bridge.ops.metrics import serve_metrics
from bridge.ops.systemd import Notifier, run_watchdog
from bridge.protocol.addresses import format_host_port, parse_listen_address
from bridge.transport.http_proxy import proxy_settings
from bridge.transport.tls import client_ssl_context

PROG = "bridge-agent"
EX_USAGE = 2
EX_CONFIG = 78
#: Bridge secrets made by `bridge-relay bridges create` are 43 characters; anything much
#: shorter is a mistake (a placeholder, a truncated paste).
MIN_SECRET = 16

log = logging.getLogger("bridge.cli")

#: Duration flags: (flag, env var, AgentConfig field, what it is); the defaults are AgentConfig's.
DURATIONS = (
    (
        "--max-backoff",
        "RECONNECT_MAX_BACKOFF",
        "max_backoff",
        "longest wait between reconnect attempts (exponential backoff with full jitter; the first "
        "retry comes within 1 s)",
    ),
    (
        "--keepalive-interval",
        "KEEPALIVE_INTERVAL",
        "keepalive_interval",
        "ping the relay this often",
    ),
    (
        "--keepalive-timeout",
        "KEEPALIVE_TIMEOUT",
        "keepalive_timeout",
        "a ping unanswered this long ends the session, and the agent reconnects",
    ),
    (
        "--drain-timeout",
        "DRAIN_TIMEOUT",
        "drain_timeout",
        "on SIGTERM or SIGINT, how long open connections may take to finish (a second signal "
        "stops at once); also how long those of a relay node that said move may",
    ),
)


class UsageError(Exception):
    """Bad flags, environment or configuration: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The ``bridge-agent`` argument parser; its ``error`` raises `UsageError` instead of
    exiting."""
    parser = _Parser(
        prog=PROG,
        description="Dial out to a bridge relay over TLS and serve the connections it tunnels "
        "to hosts of this network that the allow-list names.",
        epilog="Flags override environment variables. Prefer BRIDGE_SECRET to --secret, and "
        "HTTPS_PROXY to a --proxy with a password: command lines are visible to other users of "
        "this machine.",
    )
    add = parser.add_argument
    add("--id", metavar="ID", help="bridge ID (env: BRIDGE_ID; required)")
    add("--secret", metavar="SECRET", help="bridge secret (env: BRIDGE_SECRET; required)")
    add(
        "--relay",
        metavar="URL",
        help=f"relay URL: tls://HOST[:PORT] (port {DEFAULT_PORTS['tls']} by default), or "
        f"wss://HOST[:PORT][/PATH] for WebSocket (port {DEFAULT_PORTS['wss']} and path "
        f"{DEFAULT_PATH} by default); for a relay of several nodes, a comma-separated list, "
        "tried in random order (a name with several addresses counts as several) "
        "(env: RELAY_URL; required)",
    )
    add(
        "--proxy",
        metavar="URL",
        help="HTTP proxy to reach the relay through (CONNECT), http://[USER:PASSWORD@]HOST[:PORT]; "
        "empty for none (env: HTTPS_PROXY or https_proxy; default: none)",
    )
    add(
        "--no-proxy",
        metavar="HOSTS",
        help="relay hosts to reach without the proxy: comma-separated names, domains "
        "(.example.com), IPs or CIDRs, each optionally with :PORT, or * for all (env: NO_PROXY "
        "or no_proxy; default: none)",
    )
    add(
        "--allow",
        metavar="HOST:PORT",
        action="append",
        help="target the relay may reach: HOST:PORT, IP:PORT, [IPv6]:PORT or CIDR:PORT, * for any "
        "port; repeatable or comma-separated (env: ALLOW or ALLOWED_HOSTS; required unless "
        "--allow-any)",
    )
    add(
        "--allow-any",
        action="store_true",
        default=None,
        help="let the relay reach any host and port, instead of an allow-list (env: ALLOW_ANY=1; "
        "default: off)",
    )
    add(
        "--resolve-names",
        metavar="PATTERN",
        action="append",
        help="names the agent may resolve to check them against IP and CIDR entries: patterns "
        "such as *.corp.example, repeatable or comma-separated; others are refused unresolved "
        "(hostname entries are always resolved) (env: RESOLVE_NAMES; default: any name)",
    )
    add(
        "--ca",
        metavar="FILE",
        help="verify the relay against this CA (PEM) instead of the system CAs "
        "(env: RELAY_CA; default: system CAs)",
    )
    add(
        "--fingerprint",
        metavar="sha256:HEX",
        help="pin the relay certificate by SHA-256, as printed by 'bridge-relay fingerprint'; "
        "several separated by commas (relay nodes with certificates of their own): any one "
        "matching is accepted (env: RELAY_FINGERPRINT; default: none)",
    )
    defaults = attrs.fields_dict(AgentConfig)
    add(
        "--connections",
        metavar="K",
        help=f"sessions to keep, each to a distinct relay node (1 to {MAX_CONNECTIONS}); a relay "
        "of one node gets one (env: RELAY_CONNECTIONS; default: "
        f"{defaults['connections'].default})",
    )
    for flag, env, field, text in DURATIONS:
        default = defaults[field].default
        add(flag, metavar="SECONDS", help=f"{text} (env: {env}; default: {default:g})")
    add(
        "--metrics",
        metavar="[HOST:]PORT",
        help="serve GET /metrics (Prometheus) and GET /healthz (200 while connected to the relay) "
        "here, host 127.0.0.1 unless given (env: METRICS_ADDRESS; default: off)",
    )
    add(
        "--log-level",
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING or ERROR (env: LOG_LEVEL; default: INFO)",
    )
    add("--log-format", metavar="FORMAT", help="text or json (env: LOG_FORMAT; default: text)")
    add("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _split(values: Sequence[str]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _seconds(text: str, flag: str, env: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"invalid {flag} ({env}) {text!r}: expected a positive number of seconds")
    return value


def _connections(text: str) -> int:
    value = text.strip()
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= MAX_CONNECTIONS):
        raise UsageError(
            f"invalid --connections (RELAY_CONNECTIONS) {text!r}: expected a whole number "
            f"from 1 to {MAX_CONNECTIONS}"
        )
    return int(value)


def load(argv: Sequence[str] | None, env: Mapping[str, str]):
    """Flags and environment -> (agent, log level, log format). Raises `UsageError`."""
    args = build_parser().parse_args(argv)

    def pick(flag: str | None, *names: str) -> str | None:
        if flag is not None:
            return flag
        return next((env[name] for name in names if env.get(name)), None)

    try:
        level = logs.parse_level(pick(args.log_level, "LOG_LEVEL") or "INFO")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    fmt = (pick(args.log_format, "LOG_FORMAT") or "text").strip().lower()
    if fmt not in logs.FORMATS:
        raise UsageError(f"invalid log format {fmt!r}: use text or json")

    bridge_id = pick(args.id, "BRIDGE_ID")
    secret = pick(args.secret, "BRIDGE_SECRET")
    relay = pick(args.relay, "RELAY_URL")
    entries = (
        _split(args.allow) if args.allow else _split([pick(None, "ALLOW", "ALLOWED_HOSTS") or ""])
    )
    allow_any = args.allow_any if args.allow_any is not None else _truthy(env.get("ALLOW_ANY"))
    missing = [
        setting
        for setting, value in [
            ("BRIDGE_ID (--id)", bridge_id),
            ("BRIDGE_SECRET (--secret)", secret),
            ("RELAY_URL (--relay, e.g. tls://relay.example.com)", relay),
            ("ALLOW (--allow HOST:PORT, or --allow-any)", entries or allow_any),
        ]
        if not value
    ]
    if missing:  # all of them in one line: one run to learn what to set
        raise UsageError(f"missing settings: {', '.join(missing)}")
    assert bridge_id and secret and relay
    if len(secret) < MIN_SECRET:
        raise UsageError(
            f"BRIDGE_SECRET is {len(secret)} characters, too short to be a bridge secret (at "
            f"least {MIN_SECRET}; 'bridge-relay bridges create' makes 43): check the env file"
        )
    try:
        relay_urls = parse_relay_urls(relay)
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    if allow_any and entries:
        raise UsageError(
            "--allow-any (ALLOW_ANY) cannot be combined with an allow-list (--allow, ALLOW)"
        )
    if allow_any:
        allow = AllowList.any()
    else:
        try:
            allow = AllowList.parse(entries)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    names = (
        _split(args.resolve_names)
        if args.resolve_names
        else _split([pick(None, "RESOLVE_NAMES") or ""])
    )
    if names:
        try:
            allow = attrs.evolve(allow, resolve_names=parse_name_patterns(names))
        except ValueError as exc:
            raise UsageError(f"--resolve-names (RESOLVE_NAMES): {exc}") from None

    if args.ca is not None or args.fingerprint is not None:  # flags replace the env's choice
        ca_file, fingerprint = args.ca, args.fingerprint
    else:
        ca_file, fingerprint = pick(None, "RELAY_CA"), pick(None, "RELAY_FINGERPRINT")
    try:
        ssl_context = client_ssl_context(ca_file=ca_file, fingerprint=fingerprint)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        proxy, no_proxy = proxy_settings(env, proxy=args.proxy, no_proxy=args.no_proxy)
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    settings: dict[str, Any] = {}
    for flag, name, field, _ in DURATIONS:
        if (text := pick(getattr(args, field), name)) is not None:
            settings[field] = _seconds(text, flag, name)
    if (text := pick(args.connections, "RELAY_CONNECTIONS")) is not None:
        settings["connections"] = _connections(text)
    config = AgentConfig(**settings)

    try:
        agent = Agent(
            relay_urls,
            bridge_id,
            secret,
            allow,
            ssl_context,
            config=config,
            notifier=Notifier.from_environ(env),
            proxy=proxy,
            no_proxy=no_proxy,
        )
    except ValueError as exc:
        raise UsageError(f"invalid bridge credentials: {exc}") from None
    return agent, level, fmt


def metrics_address(argv: Sequence[str] | None, env: Mapping[str, str]) -> tuple[str, int] | None:
    """Where --metrics (METRICS_ADDRESS) serves /metrics and /healthz; None: nowhere."""
    text = build_parser().parse_args(argv).metrics or env.get("METRICS_ADDRESS")
    try:
        return None if not text else parse_listen_address(text)
    except ValueError as exc:
        raise UsageError(f"--metrics (METRICS_ADDRESS): {exc}") from None


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """The ``bridge-agent`` command: read flags and environment, run the agent, return the exit
    status (2 for usage errors, printed as one line; see `run` for the others). Never raises
    for a user's mistake."""
    try:
        env = os.environ if env is None else env
        agent, level, fmt = load(argv, env)
        metrics = metrics_address(argv, env)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EX_USAGE
    logs.configure(level, fmt, env)
    try:
        return trio.run(run, agent, metrics)
    except KeyboardInterrupt:  # before the signal handler was in place
        return 130


async def run(agent: Agent, metrics: tuple[str, int] | None = None) -> int:
    """Run the agent until the relay refuses it or a signal stops it; returns the exit status:
    0 after a clean drain, 1 if connections were cut (drain timeout, or a second signal),
    78 when the relay refuses the agent."""
    status = None
    async with trio.open_nursery() as nursery:
        await nursery.start(run_watchdog, agent.notifier)
        if metrics is not None and not await _serve_metrics(nursery, agent, *metrics):
            nursery.cancel_scope.cancel()
            return 1
        await nursery.start(_stop_on_signal, agent, nursery.cancel_scope)
        try:
            cut = await agent.run()
            status = 1 if cut else 0
            if cut:
                log.error(f"Stopped with {cut} connections cut: exit status 1")
        except RelayRejected as exc:
            log.error(f"{exc}; exit status {EX_CONFIG}, not restarted under systemd")
            status = EX_CONFIG
        nursery.cancel_scope.cancel()
    if status is None:  # a second signal stopped it at once
        log.error("Stopped at once by a second signal: exit status 1")
        return 1
    return status


async def _serve_metrics(nursery: trio.Nursery, agent: Agent, host: str, port: int) -> bool:
    """Serve /metrics and /healthz (healthy while a session is up); False if that address
    cannot be listened on."""
    connected = partial(agent.metrics.sessions.value, bridge=agent.bridge_id)
    try:
        listeners = await nursery.start(
            serve_metrics, agent.metrics, lambda: connected() > 0, host, port
        )
    except OSError as exc:
        log.error(f"Cannot serve metrics on {format_host_port(host, port)}: {os_reason(exc)}")
        return False
    address = format_host_port(host, listeners[0].socket.getsockname()[1])
    log.info("Serving metrics", extra={"fields": {"address": address}})
    return True


async def _stop_on_signal(
    agent: Agent,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The first SIGINT/SIGTERM drains the agent, a second one stops it at once."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            fields = {"signal": signal.Signals(signum).name}
            if not agent.draining:
                log.info("Stopping", extra={"fields": fields})
                agent.drain()
            else:
                log.warning(
                    "Stopping at once", extra={"fields": {**fields, "cut": agent.open_streams}}
                )
                scope.cancel()
                return
