# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""`bridge-relay`: serve agents, manage bridges and their store, check tunnels, run the demo.

Exit status: 0 success (for `serve`: stopped by SIGTERM or SIGINT), 1 the operation failed
(e.g. a target refused, the port is taken), 2 bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import getpass
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import attrs
import trio

import mux
from bridge import __version__
from bridge.agent.relay_url import DEFAULT_PORT
from bridge.ops import logs
from bridge.ops.errors import os_reason
from bridge.ops.metrics import serve_metrics
from bridge.ops.systemd import Notifier, run_watchdog
from bridge.protocol.addresses import format_host_port, parse_host_port, parse_listen_address
from bridge.transport.websocket import DEFAULT_PATH, WebSocketConfig
from relay import admin, audit_log
from relay.audit import AuditConfig, admin_event
from relay.certificates import (
    CERT_FILE,
    PeerIdentity,
    ensure_self_signed,
    fingerprint,
    server_ssl_context,
)
from relay.config import RelayConfig, parse_networks
from relay.credentials import DEFAULT_COST, check_cost
from relay.errors import (
    CertificateError,
    DuplicateBridge,
    InvalidBridgeName,
    StoreError,
    UnknownBridge,
)
from relay.forward import ForwardSpec, serve_forward
from relay.os_limits import listen_backlog, raise_open_files_limit
from relay.relay import Relay
from relay.socks import SocksConfig, serve_socks
from relay.store import Store, StoreURL, open_store
from relay.worker import WorkerLink, WorkerSetup, listeners_of
from relay.worker_messages import host_of_worker
from relay.workers import Listeners, Supervisor, SupervisorConfig

PROG = "bridge-relay"
DEFAULT_DATA_DIR = "./relay-data"
DEFAULT_LISTEN = f"0.0.0.0:{DEFAULT_PORT}"
STORE_FILE = "bridges.db"

log = logging.getLogger("relay.cli")


class UsageError(Exception):
    """Bad input: reported on one line, exit status 2."""


class Failure(Exception):
    """The command could not do its job: reported on one line, exit status 1."""


@attrs.frozen(kw_only=True)
class ClientConfig:
    """How long CLI commands wait for a running relay's control channel."""

    status_deadline: float = 5.0
    test_deadline: float = 60.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _env_help(text: str, env: str | None, default: str) -> str:
    where = f"env {env}, " if env else ""
    return f"{text} ({where}default: {default})".replace("%", "%%")


def _type(parse):
    """An argparse type from a parser whose ValueError says what is wrong."""

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


#: HOST:PORT where port 0 means "any free port" (to listen) or "the one listened on".
_ADDRESS_OR_ANY_PORT = _type(partial(parse_host_port, allow_zero=True))


def _agent_address(text: str) -> tuple[str, int]:
    """``--agent-advertise``: HOST:PORT (port 0: the agent port listened on), not a wildcard
    address. Raises ValueError saying what is wrong."""
    host, port = parse_host_port(text, allow_zero=True)
    try:
        unspecified = ipaddress.ip_address(host).is_unspecified
    except ValueError:  # a name
        unspecified = False
    if unspecified:
        raise ValueError(
            f"invalid HOST:PORT {text!r}: {host} is not an address agents can dial; give the "
            "name or address they reach this node at"
        )
    return host, port


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"invalid duration {text!r}: expected a number of seconds") from None
    if not 0 < value < 86400:
        raise ValueError(f"invalid duration {text!r}: expected more than 0 seconds")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 0 < value < 2**31:
        raise ValueError(f"invalid number {text!r}: expected a whole number above 0")
    return value


def _workers(text: str) -> int:
    if text.strip().lower() == "auto":
        return len(os.sched_getaffinity(0)) or 1
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 0 < value <= 1024:
        raise ValueError(f"invalid worker count {text!r}: expected 1 to 1024 or 'auto'")
    return value


def _cost(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"invalid bcrypt cost {text!r}: expected a number from 4 to 31") from None
    return check_cost(value)


def build_parser() -> argparse.ArgumentParser:
    """The ``bridge-relay`` argument parser; its ``error`` raises `UsageError` instead of
    exiting."""
    common = _Parser(add_help=False)
    common.add_argument(
        "--data-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help=_env_help(
            "directory of the bridge store, the relay certificate and the control socket",
            "RELAY_DATA_DIR",
            DEFAULT_DATA_DIR,
        ),
    )
    common.add_argument(
        "--store",
        metavar="URL",
        type=_type(StoreURL.parse),
        default=argparse.SUPPRESS,
        help=_env_help(
            "where bridges are kept: postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE (one "
            "store for several relays) or sqlite:///PATH",
            "RELAY_STORE",
            f"sqlite in the data dir ({STORE_FILE})",
        ),
    )
    parser = _Parser(
        prog=PROG,
        parents=[common],
        description="The relay end of trio-bridge: bridge agents in private networks dial in "
        "over TLS, and connections are tunneled to their targets through them.",
        epilog="Start with 'bridge-relay demo' to see a tunnel work on this machine.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = _Commands(parser, "command", "COMMAND", common)

    serve = commands.add(
        "serve",
        help="accept agents and run the forwards",
        description="Accept bridge agents over TLS and tunnel connections through them.",
    )
    serve.add_argument(
        "--listen",
        metavar="HOST:PORT",
        type=_ADDRESS_OR_ANY_PORT,
        default=os.environ.get("RELAY_LISTEN", DEFAULT_LISTEN),
        help=_env_help(
            "where agents connect (port 0: any free port)", "RELAY_LISTEN", DEFAULT_LISTEN
        ),
    )
    serve.add_argument(
        "--listen-ws",
        metavar="HOST:PORT",
        type=_ADDRESS_OR_ANY_PORT,
        default=os.environ.get("RELAY_LISTEN_WS"),
        help=_env_help(
            f"also accept agents over WebSocket here (wss://, path {DEFAULT_PATH}, the same TLS "
            "certificate), for networks that only let HTTPS out",
            "RELAY_LISTEN_WS",
            "off",
        ),
    )
    serve.add_argument(
        "--cert",
        metavar="FILE",
        default=os.environ.get("RELAY_CERT"),
        help=_env_help(
            "TLS certificate (PEM; with --key)",
            "RELAY_CERT",
            "a self-signed certificate kept in the data dir",
        ),
    )
    serve.add_argument(
        "--key",
        metavar="FILE",
        default=os.environ.get("RELAY_KEY"),
        help=_env_help("private key of --cert (PEM)", "RELAY_KEY", "the data dir's key"),
    )
    serve.add_argument(
        "--forward",
        metavar="BRIDGE=HOST:PORT[@LISTEN_HOST:LISTEN_PORT]",
        action="append",
        type=_type(ForwardSpec.parse),
        help=_env_help(
            "listen locally (default 127.0.0.1, any free port) and tunnel each connection to "
            "HOST:PORT through BRIDGE (a name or ID); repeatable",
            "RELAY_FORWARD, comma-separated",
            "none",
        ),
    )
    serve.add_argument(
        "--socks",
        metavar="[HOST:]PORT",
        type=_type(parse_listen_address),
        default=os.environ.get("RELAY_SOCKS"),
        help=_env_help(
            "serve SOCKS5 here (host 127.0.0.1 unless given): a connection to "
            "HOST.bridge-BRIDGE goes to HOST through BRIDGE",
            "RELAY_SOCKS",
            "off",
        ),
    )
    serve.add_argument(
        "--socks-user",
        metavar="USER",
        default=os.environ.get("RELAY_SOCKS_USER"),
        help=_env_help(
            "username SOCKS clients must give, with --socks-password",
            "RELAY_SOCKS_USER",
            "no authentication",
        ),
    )
    serve.add_argument(
        "--socks-password",
        metavar="PASSWORD",
        default=os.environ.get("RELAY_SOCKS_PASSWORD"),
        help=_env_help(
            "password of --socks-user (prefer the environment variable: command "
            "lines are visible to other users)",
            "RELAY_SOCKS_PASSWORD",
            "none",
        ),
    )
    serve.add_argument(
        "--metrics",
        metavar="[HOST:]PORT",
        type=_type(parse_listen_address),
        default=os.environ.get("RELAY_METRICS"),
        help=_env_help(
            "serve GET /metrics (Prometheus) and GET /healthz (503 once draining) "
            "here, host 127.0.0.1 unless given",
            "RELAY_METRICS",
            "off",
        ),
    )
    serve.add_argument(
        "--workers",
        metavar="N",
        type=_type(_workers),
        default=os.environ.get("RELAY_WORKERS", "1"),
        help=_env_help(
            "worker processes serving the same listeners and store ('auto': one per core); "
            "with more than one, a parent binds the listeners and supervises them: a worker "
            "that dies is started again, SIGHUP replaces them one at a time with fresh "
            "processes while the listeners stay open",
            "RELAY_WORKERS",
            "1: one process",
        ),
    )
    # The defaults are those of the config classes that own them.
    defaults, mux_defaults = attrs.fields(RelayConfig), attrs.fields(mux.Config)
    for flag, env, kind, text, default in [
        (
            "--handshake-timeout",
            "RELAY_HANDSHAKE_TIMEOUT",
            _seconds,
            "time an agent has for TLS and authentication",
            defaults.handshake_timeout.default,
        ),
        (
            "--connect-timeout",
            "RELAY_CONNECT_TIMEOUT",
            _seconds,
            "time an agent has to answer whether it reached a target",
            defaults.connect_timeout.default,
        ),
        (
            "--drain-timeout",
            "RELAY_DRAIN_TIMEOUT",
            _seconds,
            "on SIGTERM/SIGINT, how long open tunnels may go on (a second signal stops at once)",
            defaults.drain_timeout.default,
        ),
        (
            "--keepalive-interval",
            "RELAY_KEEPALIVE_INTERVAL",
            _seconds,
            "ping each agent this often",
            mux_defaults.keepalive_interval.default,
        ),
        (
            "--keepalive-timeout",
            "RELAY_KEEPALIVE_TIMEOUT",
            _seconds,
            "drop an agent that does not answer a ping within this",
            mux_defaults.ping_timeout.default,
        ),
        (
            "--max-pending",
            "RELAY_MAX_PENDING",
            _count,
            "connections (TLS and WebSocket) still in TLS or authentication, shared fairly "
            "between source addresses; beyond, new ones are closed unread",
            defaults.max_pending.default,
        ),
        (
            "--auth-failures-per-minute",
            "RELAY_AUTH_FAILURES_PER_MINUTE",
            _count,
            "failed logins allowed per source address (IPv4 address or IPv6 /64) per minute, in "
            "bursts of as many, checks in flight included; beyond, its logins are answered BUSY "
            "unchecked",
            defaults.auth_failures_per_minute.default,
        ),
        (
            "--max-sessions-per-bridge",
            "RELAY_MAX_SESSIONS_PER_BRIDGE",
            _count,
            "agent sessions per bridge (agents with the same credentials); beyond, a new login is "
            "refused BUSY and the agent retries later, the sessions already up are kept",
            defaults.max_sessions_per_bridge.default,
        ),
        (
            "--auth-failures-per-bridge",
            "RELAY_AUTH_FAILURES_PER_BRIDGE",
            _count,
            "failed logins allowed per bridge ID per minute from the addresses that never "
            "logged in as it (addresses it logged in from are not held back)",
            defaults.auth_failures_per_bridge.default,
        ),
        (
            "--bcrypt-threads",
            "RELAY_BCRYPT_THREADS",
            _count,
            "bcrypt checks run at once; one of them is kept for bridges logging in again from "
            "an address they used before",
            defaults.bcrypt_threads.default,
        ),
        (
            "--log-interval",
            "RELAY_LOG_INTERVAL",
            _seconds,
            "repeated refusals and connections dropped before authentication are logged in "
            "one summary line per this interval",
            defaults.log_interval.default,
        ),
        (
            "--max-streams-per-bridge",
            "RELAY_MAX_STREAMS_PER_BRIDGE",
            _count,
            "tunnels per bridge, across its agents, open or being opened; beyond, new ones are "
            "refused",
            defaults.max_streams_per_bridge.default,
        ),
        (
            "--max-pending-opens",
            "RELAY_MAX_PENDING_OPENS",
            _count,
            "tunnels per bridge waiting for the agent to reach their target; beyond, new ones "
            "wait for a slot (forwards stop accepting) for up to --connect-timeout",
            defaults.max_pending_opens.default,
        ),
    ]:
        serve.add_argument(
            flag,
            metavar="SECONDS" if kind is _seconds else "N",
            type=_type(kind),
            default=os.environ.get(env, f"{default:g}"),
            help=_env_help(text, env, f"{default:g}"),
        )
    serve.add_argument(
        "--proxy-protocol",
        metavar="CIDR,...",
        type=_type(parse_networks),
        default=os.environ.get("RELAY_PROXY_PROTOCOL", ""),
        help=_env_help(
            "load balancers (addresses or CIDRs) that send a PROXY protocol v1/v2 header "
            "first, on both agent listeners: their connections must carry one, and its "
            "source address is used by every limit and log line; a header from any other "
            "address is dropped",
            "RELAY_PROXY_PROTOCOL",
            "off",
        ),
    )
    _add_audit_log(serve, "append an audit event per tunnel opened, still open, and closed")
    serve.add_argument(
        "--audit-interval",
        metavar="SECONDS",
        type=_type(_seconds),
        default=os.environ.get("RELAY_AUDIT_INTERVAL", f"{AuditConfig().interval:g}"),
        help=_env_help(
            "how often a tunnel that stays open gets an audit event with its bytes so far",
            "RELAY_AUDIT_INTERVAL",
            f"{AuditConfig().interval:g}",
        ),
    )
    serve.add_argument(
        "--node",
        metavar="NAME",
        default=os.environ.get("RELAY_NODE"),
        help=_env_help(
            "this relay's name in audit events and in 'bridge-relay nodes'; give each relay "
            "sharing a store its own",
            "RELAY_NODE",
            "host name:agent port",
        ),
    )
    serve.add_argument(
        "--peer-listen",
        metavar="HOST:PORT",
        type=_ADDRESS_OR_ANY_PORT,
        default=os.environ.get("RELAY_PEER_LISTEN"),
        help=_env_help(
            "where the other relay nodes sharing the store connect (a cluster: see the "
            "README); without it this relay does not peer",
            "RELAY_PEER_LISTEN",
            "off",
        ),
    )
    serve.add_argument(
        "--peer-advertise",
        metavar="HOST:PORT",
        type=_type(parse_host_port),
        default=os.environ.get("RELAY_PEER_ADVERTISE"),
        help=_env_help(
            "the address the other nodes dial to reach --peer-listen, when that is not it",
            "RELAY_PEER_ADVERTISE",
            "the listen address, or this host's name for a wildcard address",
        ),
    )
    serve.add_argument(
        "--agent-advertise",
        metavar="HOST:PORT",
        type=_type(_agent_address),
        default=os.environ.get("RELAY_AGENT_ADVERTISE"),
        help=_env_help(
            "the address agents reach this node's --listen at (port 0: the port listened on); "
            "the relay tells agents every live node's, so that they spread their sessions "
            "over the nodes (a cluster: see the README)",
            "RELAY_AGENT_ADVERTISE",
            "none told",
        ),
    )
    _add_node_timeout(serve)
    _add_cost(
        serve,
        "bcrypt cost of the stored secrets (unknown bridge IDs are checked "
        "against a dummy hash of this cost, so they take as long as known ones)",
    )
    _add_logging(serve, "INFO")

    fp = commands.add(
        "fingerprint",
        help="print the certificate fingerprint agents pin",
        description="Print sha256:HEX of the relay certificate, for the agent's --fingerprint "
        "(creates the data dir's self-signed certificate if there is none yet).",
    )
    fp.add_argument(
        "--cert",
        metavar="FILE",
        default=os.environ.get("RELAY_CERT"),
        help=_env_help(
            "certificate to fingerprint",
            "RELAY_CERT",
            "the self-signed certificate in the data dir",
        ),
    )

    bridges = commands.add(
        "bridges",
        help="create, list, delete or rotate bridges",
        description="Manage bridges: each has a name, an ID and a secret (shown once).",
    )
    actions = _Commands(bridges, "action", "ACTION", common)
    create = actions.add(
        "create",
        help="create a bridge and print its ID and secret",
        description="Create a bridge; prints BRIDGE_ID=... and BRIDGE_SECRET=... (env-file "
        "ready). The secret cannot be shown again.",
    )
    create.add_argument("name", metavar="NAME", help="1 to 64 letters, digits, '-' or '_'")
    _add_cost(create, "bcrypt cost of the secret's hash")
    _add_audit_log(create, "append an audit event for the change")
    listing = actions.add(
        "list",
        help="list bridges and whether they are connected",
        description="List bridges: name, ID, created, connected or not, last seen.",
    )
    _add_json(
        listing,
        "one JSON object per bridge and line: name, id, created_at, last_seen_at "
        "(ISO 8601 or null), connected (true, false, or null when no relay runs on the data "
        "dir) and agents (their addresses) (default: a table)",
    )
    delete = actions.add(
        "delete",
        help="delete a bridge and cut its tunnels",
        description="Delete a bridge. A running relay disconnects its agents within 2 seconds "
        "and refuses them from then on.",
    )
    delete.add_argument("bridge", metavar="BRIDGE", help="name or ID")
    delete.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help="delete without asking (required when stdin is not a terminal; default: ask "
        "on a terminal)",
    )
    _add_audit_log(delete, "append an audit event for the change")
    rotate = actions.add(
        "rotate",
        help="give a bridge a new secret",
        description="Give a bridge a new secret and print BRIDGE_SECRET=...; the old secret "
        "stops working and agents using it are disconnected.",
    )
    rotate.add_argument("bridge", metavar="BRIDGE", help="name or ID")
    _add_cost(rotate, "bcrypt cost of the new secret's hash")
    _add_audit_log(rotate, "append an audit event for the change")

    audit = commands.add(
        "audit",
        help="show the audit log",
        description="Show the audit events of the log written by 'serve --audit-log' and the "
        "'bridges' commands: tunnels opened, refused, still open and closed, with their "
        "bytes each way; bridges created, deleted and rotated.",
    )
    _add_audit_log(audit, "the audit log to read")
    audit.add_argument(
        "--bridge",
        metavar="BRIDGE",
        help="only events of this bridge, by name or ID (default: all)",
    )
    audit.add_argument(
        "--since",
        metavar="TIME",
        type=_type(audit_log.parse_since),
        help="only events from TIME on: a duration back from now (30s, 15m, 2h, 7d) or an "
        "ISO 8601 date or time, local unless it ends in Z or an offset (default: all)",
    )
    _add_json(
        audit,
        "one JSON object per line, as stored in the log (default: a table)",
    )

    nodes = commands.add(
        "nodes",
        help="list the relays that share this store",
        description="List the relay processes registered in the bridge store: name, where "
        "agents reach them, heartbeat age, bridges held, tunnels open, alive or gone.",
    )
    _add_json(
        nodes,
        "one JSON object per node and line (default: a table)",
    )
    _add_node_timeout(nodes)

    test = commands.add(
        "test",
        help="check that a bridge reaches a target",
        description="Ask the running relay (same data dir) to open a tunnel to HOST:PORT "
        "through BRIDGE; prints OK or the agent's own error.",
    )
    test.add_argument("bridge", metavar="BRIDGE", help="name or ID")
    test.add_argument(
        "target",
        metavar="HOST:PORT",
        type=_type(parse_host_port),
        help="the target as the agent sees it",
    )
    _add_json(
        test,
        "print one JSON object: ok, bridge, target, and address (the address the agent "
        "dialed) or error (the agent's own words) (default: one line of text)",
    )

    store = commands.add(
        "store",
        help="copy bridges between stores",
        description="Manage the bridge store itself.",
    )
    store_actions = _Commands(store, "action", "ACTION", common)
    copy = store_actions.add(
        "copy",
        help="copy every bridge to another store, IDs and secrets unchanged",
        description="Copy every bridge from one store to another with its ID, secret hash "
        "and times, so agents keep their credentials (e.g. from the data dir's SQLite to "
        "PostgreSQL). Bridges already in the destination with the same ID are left alone.",
    )
    copy.add_argument(
        "--from",
        dest="source",
        metavar="URL",
        type=_type(StoreURL.parse),
        help="the store to read (default: --store, or the data dir's SQLite)",
    )
    copy.add_argument(
        "--to",
        dest="destination",
        metavar="URL",
        type=_type(StoreURL.parse),
        required=True,
        help="the store to write, its schema made if needed (required: no default)",
    )

    demo = commands.add(
        "demo",
        common=False,
        help="see a tunnel work, all in one process",
        description="Run a relay, an agent, a small HTTP server behind it and a forward on "
        "loopback, show requests flowing through the tunnel, and print how to connect. "
        "Uses a temporary directory, removed at the end.",
    )
    demo.add_argument(
        "--once",
        action="store_true",
        help="exit after showing the traffic (default: stay up until Ctrl-C when run in a "
        "terminal, exit otherwise)",
    )
    _add_logging(demo, "WARNING")
    return parser


class _Commands:
    """The subcommands of a parser, each taking the options every command takes."""

    def __init__(
        self,
        parser: argparse.ArgumentParser,
        dest: str,
        metavar: str,
        common: _Parser,
    ) -> None:
        self._group = parser.add_subparsers(dest=dest, metavar=metavar, parser_class=_Parser)
        self._common = common

    def add(
        self, name: str, *, help: str, description: str, common: bool = True
    ) -> argparse.ArgumentParser:
        """A subcommand `name` (with the common options unless told not to)."""
        parents: list[_Parser] = [self._common] if common else []
        return self._group.add_parser(name, parents=parents, help=help, description=description)


def _add_json(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--json", action="store_true", help=text)


def _add_node_timeout(parser: argparse.ArgumentParser) -> None:
    default = f"{RelayConfig().node_timeout:g}"
    parser.add_argument(
        "--node-timeout",
        metavar="SECONDS",
        type=_type(_seconds),
        default=os.environ.get("RELAY_NODE_TIMEOUT", default),
        help=_env_help(
            "a relay that has not heartbeated for this long is gone (it heartbeats three times "
            "as often)",
            "RELAY_NODE_TIMEOUT",
            default,
        ),
    )


def _add_cost(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument(
        "--bcrypt-cost",
        metavar="N",
        type=_type(_cost),
        default=os.environ.get("RELAY_BCRYPT_COST", str(DEFAULT_COST)),
        help=_env_help(f"{text}, 4 to 31", "RELAY_BCRYPT_COST", str(DEFAULT_COST)),
    )


def _add_audit_log(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument(
        "--audit-log",
        metavar="PATH",
        default=os.environ.get("RELAY_AUDIT_LOG"),
        help=_env_help(f"{text} (JSON lines)", "RELAY_AUDIT_LOG", "none"),
    )


def _add_logging(parser: argparse.ArgumentParser, default_level: str) -> None:
    parser.add_argument(
        "--log-level",
        metavar="LEVEL",
        type=_type(logs.parse_level),
        default=os.environ.get("LOG_LEVEL", default_level),
        help=_env_help(f"{', '.join(logs.LEVELS)}", "LOG_LEVEL", default_level),
    )
    parser.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default=os.environ.get("LOG_FORMAT", "text"),
        help=_env_help("log lines on stderr as text or JSON", "LOG_FORMAT", "text"),
    )


# -- commands --------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, data_dir: Path) -> int:
    """``bridge-relay serve``: run the relay until SIGINT or SIGTERM (then drain); returns 0. Raises
    `UsageError` or `Failure` with a one-line message. With ``--workers`` above 1, this
    process binds the listeners and supervises workers (`relay.workers`); a worker (started
    so, `relay.worker.ENV` set) serves the listeners it inherits."""
    try:
        setup = WorkerSetup.from_env(os.environ)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    context = None if setup is None else {"worker": setup.index}
    logs.configure(args.log_level, args.log_format, context=context)
    if setup is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent says when to stop
    forwards = args.forward
    if forwards is None:
        forwards = []
        for item in filter(None, map(str.strip, os.environ.get("RELAY_FORWARD", "").split(","))):
            try:
                forwards.append(ForwardSpec.parse(item))
            except ValueError as exc:
                raise UsageError(f"RELAY_FORWARD: {exc}") from None
    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key must be given together")
    if args.cert is not None:
        try:
            ssl_context = server_ssl_context(args.cert, args.key)
            cert = args.cert
        except CertificateError as exc:
            raise UsageError(str(exc)) from None
    else:
        try:
            cert, key = ensure_self_signed(data_dir)
            ssl_context = server_ssl_context(cert, key)
        except CertificateError as exc:
            raise Failure(str(exc)) from None
    if (args.socks_user is None) != (args.socks_password is None):
        raise UsageError("--socks-user and --socks-password must be given together")
    credentials = None if args.socks_user is None else (args.socks_user, args.socks_password)
    try:
        socks_config = SocksConfig(credentials=credentials)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    logs.register_secret(args.socks_password or "")
    # psycopg logs every failed connection attempt of its pool, and the connection a lost
    # server broke ("error ignored terminating ..."), outside the relay's log format; the
    # relay logs the store's state changes itself, once each.
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    # The parent of workers holds the lock for them.
    lock = _lock_data_dir(data_dir) if setup is None else None
    # Every connection of a burst needs a descriptor: take all the hard limit allows.
    descriptors, _ = raise_open_files_limit()
    log.debug("Open file descriptor limit", extra={"fields": {"limit": descriptors}})
    store = _open_store(args, data_dir, create=setup is None)
    for spec in forwards if setup is None else []:
        try:
            missing = store.find(spec.bridge) is None
        except StoreError as exc:
            raise Failure(str(exc)) from None
        if missing:
            log.warning(
                "Forward names a bridge that does not exist (yet)",
                extra={"fields": {"forward": str(spec), "bridge": spec.bridge}},
            )
    if setup is None and args.workers > 1:
        store.close()
        try:
            status = _run_trio(
                partial(
                    _supervise,
                    args,
                    data_dir,
                    fingerprint(cert),
                    forwards=forwards,
                    connect_timeout=args.connect_timeout,
                )
            )
        finally:
            if lock is not None:
                lock.close()
        return status
    config = RelayConfig(
        handshake_timeout=args.handshake_timeout,
        connect_timeout=args.connect_timeout,
        bcrypt_cost=args.bcrypt_cost,
        max_pending=args.max_pending,
        auth_failures_per_minute=args.auth_failures_per_minute,
        auth_failures_per_bridge=args.auth_failures_per_bridge,
        bcrypt_threads=args.bcrypt_threads,
        log_interval=args.log_interval,
        proxy_protocol=args.proxy_protocol,
        max_sessions_per_bridge=args.max_sessions_per_bridge,
        max_streams_per_bridge=args.max_streams_per_bridge,
        max_pending_opens=args.max_pending_opens,
        drain_timeout=args.drain_timeout,
        mux=mux.Config(
            keepalive_interval=args.keepalive_interval, ping_timeout=args.keepalive_timeout
        ),
        node=setup.node if setup is not None else args.node or None,
        host=host_of_worker(setup.node) if setup is not None else None,
        node_timeout=args.node_timeout,
        agent_advertise=args.agent_advertise,
        audit=AuditConfig(interval=args.audit_interval),
    )
    identity = None
    if args.peer_listen is not None:
        try:
            identity = PeerIdentity.ensure(data_dir)
        except CertificateError as exc:
            raise Failure(str(exc)) from None
    relay = Relay(store, ssl_context, config=config)
    if args.audit_log:
        try:
            relay.audit_trail.add_sink(audit_log.JsonLinesSink(args.audit_log))
        except OSError as exc:
            raise Failure(f"cannot open the audit log {args.audit_log}: {os_reason(exc)}") from None
    if callable(getattr(store, "append_audit", None)):  # PostgreSQL: the audit table too
        relay.audit_trail.add_sink(audit_log.StoreAuditSink(store))  # type: ignore[arg-type]
    try:
        cut = _run_trio(
            partial(
                _serve,
                relay,
                data_dir,
                fingerprint(cert),
                listen=args.listen,
                listen_ws=args.listen_ws,
                forwards=forwards,
                socks=args.socks,
                socks_config=socks_config,
                metrics=args.metrics,
                setup=setup,
                peers=None if identity is None else (args.peer_listen, args.peer_advertise),
                identity=identity,
            )
        )
    finally:
        store.close()
    if lock is not None:
        lock.close()
    if cut:
        log.error(f"Stopped with {cut} tunnels cut: exit status 1")
        return 1
    return 0


async def _supervise(
    args: argparse.Namespace,
    data_dir: Path,
    cert_fingerprint: str,
    *,
    forwards: list[ForwardSpec],
    connect_timeout: float,
) -> int:
    """The parent of ``serve --workers N``: bind every listener once, print where, run the
    workers (`relay.workers.Supervisor`) and serve their metrics together. The exit status."""

    async def bind(what: str, host: str, port: int) -> list[trio.SocketListener]:
        try:
            return await trio.open_tcp_listeners(port, host=host, backlog=listen_backlog())
        except OSError as exc:
            raise Failure(
                f"cannot listen for {what} on {format_host_port(host, port)}: {os_reason(exc)}"
            ) from None

    def bound(host: str, listeners: list[trio.SocketListener]) -> str:
        return format_host_port(host, listeners[0].socket.getsockname()[1])

    host, port = args.listen
    agent = await bind("agents", host, port)
    address = bound(host, agent)
    print(f"agents: listening on {address}", flush=True)
    log.info(
        "Relay listening",
        extra={
            "fields": {
                "address": address,
                "fingerprint": cert_fingerprint,
                "workers": args.workers,
            }
        },
    )
    websocket: list[trio.SocketListener] = []
    if args.listen_ws is not None:
        ws_host, ws_port = args.listen_ws
        websocket = await bind("agents", ws_host, ws_port)
        ws_address = bound(ws_host, websocket)
        print(f"agents (WebSocket): listening on {ws_address}, path {DEFAULT_PATH}", flush=True)
        log.info(
            "Relay listening for WebSocket agents",
            extra={"fields": {"address": ws_address, "path": DEFAULT_PATH}},
        )
    forward_listeners = []
    for spec in forwards:
        listeners = await bind(f"forward {spec}", spec.listen_host, spec.listen_port)
        forward_listeners.append(listeners)
        print(f"forward {spec}: listening on {bound(spec.listen_host, listeners)}", flush=True)
    socks: list[trio.SocketListener] = []
    if args.socks is not None:
        socks_host, socks_port = args.socks
        socks = await bind("socks", socks_host, socks_port)
        print(f"socks: listening on {bound(socks_host, socks)}", flush=True)
    peer: list[trio.SocketListener] = []
    if args.peer_listen is not None:
        try:  # made once here, shared by the workers (each a node of the cluster)
            PeerIdentity.ensure(data_dir)
        except CertificateError as exc:
            raise Failure(str(exc)) from None
        peer_host, peer_port = args.peer_listen
        peer = await bind("peers", peer_host, peer_port)
        print(f"peers: listening on {bound(peer_host, peer)}", flush=True)
    node = args.node or f"{socket.gethostname()}:{agent[0].socket.getsockname()[1]}"
    supervisor = Supervisor(
        args.argv,
        args.workers,
        Listeners(
            agent=agent, websocket=websocket, forwards=forward_listeners, socks=socks, peer=peer
        ),
        node,
        Notifier.from_environ(),
        data_dir=data_dir,
        config=SupervisorConfig(moving=connect_timeout),
    )
    async with trio.open_nursery() as nursery:
        if args.metrics is not None:
            serve = partial(
                serve_metrics,
                supervisor.metrics,
                supervisor.healthy,
                refresh=supervisor.refresh_metrics,
            )
            await _listen(nursery, "metrics", args.metrics, serve)
        status = await supervisor.run()
        nursery.cancel_scope.cancel()
    return status


LOCK_FILE = "relay.lock"


def _lock_data_dir(data_dir: Path) -> Any:
    """An exclusive lock on the data dir, held while the relay serves: a second relay on the
    same data dir stops with one line. Raises `Failure`."""
    path = data_dir / LOCK_FILE
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = open(path, "a+")  # noqa: SIM115 - held for the life of the process
    except OSError as exc:
        raise Failure(f"cannot lock the data dir {data_dir}: {os_reason(exc)}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        owner = lock.read().strip() or "?"
        lock.close()
        raise Failure(
            f"another relay (pid {owner}) is serving the data dir {data_dir.resolve()}"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


async def _serve(
    relay: Relay,
    data_dir: Path,
    cert_fingerprint: str,
    *,
    listen: tuple[str, int],
    listen_ws: tuple[str, int] | None,
    forwards: list[ForwardSpec],
    socks: tuple[str, int] | None,
    socks_config: SocksConfig,
    metrics: tuple[str, int] | None,
    setup: WorkerSetup | None = None,
    peers: tuple[tuple[str, int], tuple[str, int] | None] | None = None,
    identity: PeerIdentity | None = None,
) -> int:
    """Returns how many tunnels the stop cut (0 after a clean drain). With `setup`, as a
    worker: on the inherited listeners, stopping on SIGTERM or when the parent goes away."""
    host, port = listen
    # The audit task outlives the serving tasks, so that it writes the close events of the
    # tunnels cut at the end.
    async with trio.open_nursery() as audit:
        await audit.start(relay.audit_trail.run)
        audit.start_soon(_reopen_on_sighup, relay)
        link = None
        if setup is not None:
            link = WorkerLink(relay, setup, forwards)
            relay.handover = link
            await audit.start(link.run)
        cut = await _serve_until_signal(
            relay,
            data_dir,
            cert_fingerprint,
            Notifier.from_environ() if link is None else link,
            host=host,
            port=port,
            listen_ws=listen_ws,
            forwards=forwards,
            socks=socks,
            socks_config=socks_config,
            metrics=metrics,
            setup=setup,
            link=link,
            peers=peers,
            identity=identity,
        )
        audit.cancel_scope.cancel()
    return cut


async def _reopen_on_sighup(relay: Relay) -> None:
    with trio.open_signal_receiver(signal.SIGHUP) as hangups:
        async for _ in hangups:
            relay.audit_trail.reopen()


def _say(setup: WorkerSetup | None, line: str) -> None:
    """A line on stdout (the parent of workers prints its own)."""
    if setup is None:
        print(line, flush=True)


async def _serve_until_signal(
    relay: Relay,
    data_dir: Path,
    cert_fingerprint: str,
    notifier: Any,
    *,
    host: str,
    port: int,
    listen_ws: tuple[str, int] | None,
    forwards: list[ForwardSpec],
    socks: tuple[str, int] | None,
    socks_config: SocksConfig,
    metrics: tuple[str, int] | None,
    setup: WorkerSetup | None = None,
    link: WorkerLink | None = None,
    peers: tuple[tuple[str, int], tuple[str, int] | None] | None = None,
    identity: PeerIdentity | None = None,
) -> int:
    inherited = setup is not None

    def given(fds: list[int]) -> dict[str, Any]:
        return {"listeners": listeners_of(fds)} if inherited else {}

    stop_signals = (signal.SIGTERM,) if inherited else (signal.SIGINT, signal.SIGTERM)
    with trio.open_signal_receiver(*stop_signals) as received:
        async with trio.open_nursery() as nursery:
            signals: AsyncIterator[int] = received
            if link is not None:
                send, signals = trio.open_memory_channel[int](2)
                nursery.start_soon(_stop_requests, received, link, send)
            listeners = await _start(
                nursery,
                f"cannot listen for agents on {format_host_port(host, port)}",
                partial(relay.serve, **given(setup.agent if setup else [])),
                host,
                port,
            )
            address = format_host_port(host, listeners[0].socket.getsockname()[1])
            _say(setup, f"agents: listening on {address}")
            if not inherited:
                log.info(
                    "Relay listening",
                    extra={"fields": {"address": address, "fingerprint": cert_fingerprint}},
                )
            if peers is not None and identity is not None:
                (peer_host, peer_port), advertised = peers
                listeners = await _start(
                    nursery,
                    f"cannot listen for peers on {format_host_port(peer_host, peer_port)}",
                    partial(
                        relay.serve_peers,
                        identity=identity,
                        advertise=None if advertised is None else format_host_port(*advertised),
                        siblings=setup.siblings if setup else None,
                        **given(setup.peer if setup else []),
                    ),
                    peer_host,
                    peer_port,
                )
                local = format_host_port(peer_host, listeners[0].socket.getsockname()[1])
                _say(setup, f"peers: listening on {local}")
                if inherited and relay.peering is not None:
                    # A worker links to the other nodes before it serves forwards and tells
                    # its parent so: a replaced worker's successor reaches what it reached.
                    with trio.move_on_after(relay.config.peer.link_wait):
                        await relay.peering.wait_linked()
            if listen_ws is not None:
                ws_host, ws_port = listen_ws
                config = WebSocketConfig(handshake_timeout=relay.config.handshake_timeout)
                ws_listeners = await _start(
                    nursery,
                    f"cannot listen for agents on {format_host_port(ws_host, ws_port)}",
                    partial(
                        relay.serve_websocket,
                        config=config,
                        **given(setup.websocket if setup else []),
                    ),
                    ws_host,
                    ws_port,
                )
                ws_address = format_host_port(ws_host, ws_listeners[0].socket.getsockname()[1])
                _say(setup, f"agents (WebSocket): listening on {ws_address}, path {DEFAULT_PATH}")
                if not inherited:
                    log.info(
                        "Relay listening for WebSocket agents",
                        extra={"fields": {"address": ws_address, "path": DEFAULT_PATH}},
                    )
            for index, spec in enumerate(forwards):
                listen_address = format_host_port(spec.listen_host, spec.listen_port)
                forward_listeners = await _start(
                    nursery,
                    f"cannot listen for forward {spec} on {listen_address}",
                    partial(
                        serve_forward,
                        index=index,
                        **given(setup.forwards[index] if setup else []),
                    ),
                    relay,
                    spec,
                )
                local = format_host_port(
                    spec.listen_host, forward_listeners[0].socket.getsockname()[1]
                )
                _say(setup, f"forward {spec}: listening on {local}")
            if socks is not None:
                await _listen(
                    nursery,
                    "socks",
                    socks,
                    partial(
                        serve_socks,
                        relay,
                        config=socks_config,
                        metrics=relay.metrics,
                        **given(setup.socks if setup else []),
                    ),
                    setup,
                )
            if metrics is not None and not inherited:  # the parent of workers serves them all
                await _listen(
                    nursery,
                    "metrics",
                    metrics,
                    partial(
                        serve_metrics,
                        relay.metrics,
                        lambda: not relay.stopping,
                        shed=relay.note_shed,
                    ),
                    setup,
                )
            socket_name = admin.SOCKET_NAME if setup is None else admin.worker_socket_name()
            await nursery.start(admin.serve_admin, relay, data_dir / socket_name)
            notifier.ready(f"Listening for agents on {address}")
            if not inherited:
                await nursery.start(run_watchdog, notifier)
            await _stop_on_signals(signals, relay, notifier)
            cut = relay.open_tunnels()
            relay.audit_trail.cutting = True  # what is still open is cut, not finished
            nursery.cancel_scope.cancel()
    return cut


async def _stop_requests(
    signals: AsyncIterator[int], link: WorkerLink, send: trio.MemorySendChannel[int]
) -> None:
    """A worker's stop requests, as signal numbers to `send` (the first drains, the second
    stops at once): its parent's (`link.drain`, `link.stop_now`) and its own SIGTERMs, a
    first one of which counts as the same request as the parent's drain, so that a SIGTERM
    to the whole process group drains once."""
    sent = 0
    own = 0

    def push(upto: int) -> None:
        nonlocal sent
        while sent < upto:
            sent += 1
            with contextlib.suppress(trio.WouldBlock):
                send.send_nowait(signal.SIGTERM)

    async def drain() -> None:
        await link.drain.wait()
        if link.parent_gone.is_set() and not link.stop_now.is_set():
            log.warning("The parent process is gone: stopping")
        push(1)

    async def stop_now() -> None:
        await link.stop_now.wait()
        push(2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        nursery.start_soon(stop_now)
        async for _ in signals:
            own += 1
            push(own)


async def _listen(
    nursery: trio.Nursery,
    what: str,
    address: tuple[str, int],
    serve,
    setup: WorkerSetup | None = None,
) -> list[trio.SocketListener]:
    host, port = address
    listeners = await _start(
        nursery, f"cannot listen for {what} on {format_host_port(host, port)}", serve, host, port
    )
    local = format_host_port(host, listeners[0].socket.getsockname()[1])
    _say(setup, f"{what}: listening on {local}")
    return listeners


async def _start(nursery: trio.Nursery, what: str, fn, *args: Any) -> Any:
    try:
        return await nursery.start(fn, *args)
    except OSError as exc:
        raise Failure(f"{what}: {os_reason(exc)}") from None


async def _stop_on_signals(signals: AsyncIterator[int], relay: Relay, notifier: Notifier) -> None:
    """Returns once the relay may stop: after the first signal, when its tunnels are done or
    the drain timeout has passed; at once on a second signal."""
    signum = await anext(signals)
    timeout = relay.config.drain_timeout
    relay.stop_accepting()
    await relay.wait_listeners_closed()
    streams = relay.open_tunnels()
    log.info(
        "Stopping: no new agents or tunnels, open tunnels may finish",
        extra={
            "fields": {
                "signal": signal.Signals(signum).name,
                "open_streams": streams,
                "drain_timeout": timeout,
            }
        },
    )
    notifier.stopping(_drain_status(relay))
    async with trio.open_nursery() as nursery:

        async def second_signal() -> None:
            async for signum in signals:
                log.info("Stopping now", extra={"fields": {"signal": signal.Signals(signum).name}})
                nursery.cancel_scope.cancel()

        async def report() -> None:
            while True:
                await trio.sleep(1)
                notifier.status(_drain_status(relay))

        nursery.start_soon(second_signal)
        nursery.start_soon(report)
        with trio.move_on_after(timeout) as drain:
            await relay.drain()
        if drain.cancelled_caught:
            log.warning(
                f"Drain timed out after {timeout:g} s: cutting the tunnels still open",
                extra={
                    "fields": {
                        "open_streams": relay.open_tunnels(),
                        "moving_agents": relay.moving_agents(),
                    }
                },
            )
        else:
            log.info("Drained: no tunnel is open")
        if relay.peering is not None:
            log.info(
                "Leaving the cluster",
                extra={"fields": {"node": relay.node, "links": len(relay.peering.links)}},
            )
            notifier.status("Leaving the cluster")
        nursery.cancel_scope.cancel()


def _drain_status(relay: Relay) -> str:
    """What a draining relay waits for, for systemd's STATUS."""
    moving = relay.moving_agents()
    agents = f"{moving} agent{'s' * (moving != 1)} to move to other nodes and " if moving else ""
    return f"Draining: waiting for {agents}{relay.open_tunnels()} open tunnels"


def cmd_fingerprint(args: argparse.Namespace, data_dir: Path) -> int:
    """``bridge-relay fingerprint``: print the certificate's fingerprint. Raises `Failure` when the
    certificate cannot be read."""
    try:
        if args.cert is not None:
            cert = args.cert
        else:
            cert = _require_data_dir(data_dir) / CERT_FILE
            if not cert.exists():
                raise Failure(
                    f"no relay certificate in {data_dir.resolve()}: 'bridge-relay serve' or "
                    "'bridge-relay bridges create' makes one (or pass --cert FILE)"
                )
        print(fingerprint(cert))
    except CertificateError as exc:
        if args.cert is not None:
            raise UsageError(str(exc)) from None
        raise Failure(str(exc)) from None
    return 0


def cmd_bridges(args: argparse.Namespace, data_dir: Path) -> int:
    """``bridge-relay bridges create|list|delete|rotate``. Raises `UsageError` or `Failure` with a
    one-line message."""
    if args.action is None:
        raise UsageError("bridges needs an action: create, list, delete or rotate")
    if args.action == "create":
        _init_data_dir(data_dir)
    else:
        _require_store(args, data_dir)
    store = _open_store(args, data_dir, create=args.action == "create")
    audit_path = getattr(args, "audit_log", None)
    if audit_path:
        try:
            audit_log.append(audit_path, [])  # can it be written? Checked before any change.
        except OSError as exc:
            raise Failure(f"cannot write the audit log {audit_path}: {os_reason(exc)}") from None
    try:
        if args.action == "create":
            bridge_id, secret = store.create_bridge(args.name, cost=args.bcrypt_cost)
            _audit_admin(store, audit_path, "bridge.created", store.get(bridge_id), args.action)
            print(f"BRIDGE_ID={bridge_id}")
            print(f"BRIDGE_SECRET={secret}", flush=True)
            _note(
                f"Created bridge {args.name}. Store BRIDGE_SECRET now: it cannot be shown "
                "again (only its bcrypt hash is kept)."
            )
        elif args.action == "list":
            _list_bridges(store, data_dir, as_json=args.json)
        elif args.action == "delete":
            _confirm_delete(store.get(args.bridge), args.yes)
            record = store.delete(args.bridge)
            _audit_admin(store, audit_path, "bridge.deleted", record, args.action)
            print(
                f"Deleted bridge {record.name} ({record.id}); every relay using this store "
                "disconnects its agents within 2 seconds."
            )
        elif args.action == "rotate":
            record = store.get(args.bridge)
            secret = store.rotate(record.id, cost=args.bcrypt_cost)
            _audit_admin(store, audit_path, "bridge.rotated", record, args.action)
            print(f"BRIDGE_SECRET={secret}", flush=True)
            _note(
                f"New secret for bridge {record.name} ({record.id}); the old one no longer "
                "works. Store it now: it cannot be shown again."
            )
    except (UnknownBridge, DuplicateBridge, InvalidBridgeName) as exc:
        raise UsageError(str(exc)) from None
    except StoreError as exc:
        raise Failure(str(exc)) from None
    finally:
        store.close()
    return 0


def cmd_store(args: argparse.Namespace, data_dir: Path) -> int:
    """``bridge-relay store copy``: copy every bridge, ID and secret hash unchanged, to another
    store. Raises `UsageError` or `Failure` with a one-line message."""
    if args.action is None:
        raise UsageError("store needs an action: copy")
    source_url = args.source or _store_url(args, data_dir)
    if source_url.kind == "sqlite" and not Path(source_url.target).is_file():
        raise Failure(f"no bridge store at {source_url.target}")
    if str(source_url) == str(args.destination):
        raise UsageError("--from and --to name the same store")
    _register_password(args.destination)
    source = _open_store(args, data_dir, url=source_url)
    destination = _open_store(args, data_dir, url=args.destination, create=True)
    copied, present, conflicts = 0, 0, []
    try:
        for record in source.list():
            existing = destination.find(record.id)
            if existing is not None and existing.id == record.id:
                present += 1
                if existing.secret_hash != record.secret_hash:
                    conflicts.append(f"{record.name} ({record.id}) has another secret there")
                continue
            try:
                destination.import_bridge(record)
            except DuplicateBridge:
                conflicts.append(f"{record.name}: the name is taken there by another bridge")
            else:
                copied += 1
    except StoreError as exc:
        raise Failure(str(exc)) from None
    finally:
        source.close()
        destination.close()
    print(
        f"Copied {copied} bridge{'' if copied == 1 else 's'} from {source_url} to "
        f"{args.destination}" + (f" ({present} already there)" if present else "")
    )
    if conflicts:
        raise Failure("not copied: " + "; ".join(conflicts))
    return 0


def _audit_admin(store: Store, path: str | None, kind: str, record: Any, action: str) -> None:
    """Append the admin event of a change already made to the audit log at `path` (if any)
    and to the store's audit table (PostgreSQL); a failure to write it is reported (exit 1)
    after the command's own output."""
    table = getattr(store, "append_audit", None)
    if not path and table is None:
        return
    try:
        user: str | None = getpass.getuser()
    except (OSError, KeyError):
        user = None
    event = admin_event(
        kind, record, f"{PROG} bridges {action}", user=user, node=socket.gethostname()
    )
    if table is not None:
        try:
            table([event.to_dict()])
        except StoreError as exc:
            _note(f"{PROG}: cannot write the audit event to the store: {exc}")
            raise SystemExit(1) from None
    if path:
        try:
            audit_log.append(path, [event])
        except OSError as exc:
            _note(f"{PROG}: cannot write the audit log {path}: {os_reason(exc)}")
            raise SystemExit(1) from None


def _confirm_delete(record: Any, yes: bool) -> None:
    """Ask on a terminal; without one, only --yes deletes (a script must say so)."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(
            f"not deleting bridge {record.name} without confirmation: stdin is not a "
            "terminal; pass --yes"
        )
    prompt = (
        f"Delete bridge {record.name} ({record.id})? Its agents are disconnected and "
        "refused from then on. [y/N] "
    )
    try:
        answer = input(prompt)
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise Failure(f"bridge {record.name} not deleted")


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _list_bridges(store: Store, data_dir: Path, *, as_json: bool = False) -> None:
    records = store.list()
    live = _relay_status(data_dir)
    if live is None:
        _note(f"No relay is running on {data_dir}: all bridges shown as disconnected.")
    if as_json:
        for record in records:
            sessions = (live or {}).get(record.id, [])
            entry = {
                "name": record.name,
                "id": record.id,
                "created_at": _iso(record.created_at),
                "last_seen_at": _iso(record.last_seen_at),
                "connected": None if live is None else bool(sessions),
                "agents": [s.get("peer") for s in sessions],
            }
            print(json.dumps(entry, separators=(",", ":")))
        return
    if not records:
        _note("No bridges yet: create one with 'bridge-relay bridges create NAME'.")
        return
    rows = [("NAME", "ID", "CREATED", "STATUS", "LAST SEEN")]
    for record in records:
        sessions = (live or {}).get(record.id, [])
        status = "disconnected"
        if sessions:
            peers = ", ".join(s.get("peer", "?") for s in sessions)
            status = f"connected ({peers})"
        last_seen = "now" if sessions else _when(record.last_seen_at)
        rows.append((record.name, record.id, _when(record.created_at), status, last_seen))
    _print_table(rows)


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell; the last one unpadded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for cells in rows:
        print("  ".join(c.ljust(width) for c, width in zip(cells, widths)) + "  " + cells[-1])


def cmd_nodes(args: argparse.Namespace, data_dir: Path) -> int:
    """``bridge-relay nodes``: the relays registered in the store, alive or gone by
    --node-timeout. Raises `Failure` with a one-line message."""
    _require_store(args, data_dir)
    store = _open_store(args, data_dir)
    try:
        nodes = store.list_nodes()
    except StoreError as exc:
        raise Failure(str(exc)) from None
    finally:
        store.close()
    timeout = args.node_timeout
    if args.json:
        for node in nodes:
            row = {
                "name": node.name,
                "agent_address": node.agent_address,
                "peer_address": node.peer_address,
                "peer_fingerprint": node.peer_fingerprint,
                "agent_advertise": node.agent_advertise,
                "started_at": _iso(node.started_at),
                "heartbeat_age": None if node.age is None else round(node.age, 3),
                "alive": node.age is not None and node.age < timeout,
                "bridges": node.bridges,
                "streams": node.streams,
                "held": list(node.held),
                "links": list(node.links),
            }
            print(json.dumps(row, separators=(",", ":")))
        return 0
    if not nodes:
        _note("No relay has registered in this store: 'bridge-relay serve' does.")
        return 0
    rows = [
        (
            "NAME",
            "AGENTS",
            "ADVERTISED",
            "PEERS",
            "HEARTBEAT",
            "BRIDGES",
            "STREAMS",
            "LINKS",
            "STATUS",
            "PEER CERT",
        )
    ]
    for node in nodes:
        age = node.age if node.age is not None else float("inf")
        rows.append(
            (
                node.name,
                node.agent_address,
                node.agent_advertise or "-",
                node.peer_address or "-",
                f"{age:.1f} s ago",
                str(node.bridges),
                str(node.streams),
                ",".join(node.links) or "-",
                "alive" if age < timeout else f"gone (silent over {timeout:g} s)",
                node.peer_fingerprint or "-",
            )
        )
    _print_table(rows)
    return 0


def _relay_status(data_dir: Path) -> dict[str, list[dict[str, Any]]] | None:
    """The sessions of the relay serving `data_dir` (all its workers'), by bridge ID; None
    when no relay answers."""

    async def ask() -> dict[str, list[dict[str, Any]]] | None:
        bridges: dict[str, list[dict[str, Any]]] | None = None
        with trio.move_on_after(ClientConfig().status_deadline):
            for path in admin.socket_paths(data_dir):
                try:
                    reply = await admin.request(path, {"op": "status"})
                except admin.AdminUnavailable:
                    continue
                if reply.get("ok"):
                    bridges = bridges or {}
                    for bridge_id, sessions in reply.get("bridges", {}).items():
                        bridges.setdefault(bridge_id, []).extend(sessions)
        return bridges

    return trio.run(ask)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def cmd_test(args: argparse.Namespace, data_dir: Path) -> int:
    """``bridge-relay test BRIDGE HOST:PORT``: ask the running relay to open a tunnel; 0 when the
    agent reached the target, 1 with its reason when not. Raises `UsageError` or `Failure`."""
    _require_store(args, data_dir)
    store = _open_store(args, data_dir)
    try:
        record = store.get(args.bridge)
    except UnknownBridge as exc:
        raise UsageError(str(exc)) from None
    except StoreError as exc:
        raise Failure(str(exc)) from None
    finally:
        store.close()
    host, port = args.target
    target = format_host_port(host, port)

    async def ask() -> dict[str, Any] | None:
        # Under workers, the one that holds the bridge answers; the others say not connected.
        reply: dict[str, Any] | None = None
        answered = False
        with trio.move_on_after(ClientConfig().test_deadline):
            message = {"op": "test", "bridge": record.id, "host": host, "port": port}
            for path in admin.socket_paths(data_dir):
                try:
                    reply = await admin.request(path, message)
                except admin.AdminUnavailable:
                    continue
                answered = True
                if reply.get("kind") != "BridgeNotConnected":
                    break
            if not answered:
                raise admin.AdminUnavailable(f"no relay is running on {data_dir}")
        return reply

    try:
        reply = trio.run(ask)
    except admin.AdminUnavailable:
        raise Failure(
            f"no relay is running on data dir {data_dir} (start one with 'bridge-relay "
            f"--data-dir {data_dir} serve')"
        ) from None
    if reply is None:
        raise Failure(f"the relay did not answer within {ClientConfig().test_deadline:g} s")
    if not reply.get("ok"):
        error = str(reply.get("error", "unknown error"))
        if reply.get("kind") == "BridgeNotConnected":
            error = f"Bridge not connected: {args.bridge}"
        if args.json:
            result = {"ok": False, "bridge": args.bridge, "target": target, "error": error}
            print(json.dumps(result, separators=(",", ":")))
        else:
            print(logs.printable(error), file=sys.stderr)  # the agent's words: never raw
        return 1
    address = str(reply.get("address", target))
    if args.json:
        result = {"ok": True, "bridge": args.bridge, "target": target, "address": address}
        print(json.dumps(result, separators=(",", ":")))
    else:
        print(f"OK: {args.bridge} reached {target} via {logs.printable(address)}")
    return 0


def cmd_audit(args: argparse.Namespace, data_dir: Path) -> int:
    """``bridge-relay audit``: print the events of the audit log, filtered by bridge and time.
    Raises `UsageError` without a log to read, `Failure` when it cannot be read."""
    if not args.audit_log:
        raise UsageError("audit needs the log to read: --audit-log PATH (or RELAY_AUDIT_LOG)")
    selected = []
    unreadable = 0
    try:
        for event in audit_log.read(args.audit_log):
            if event is None:
                unreadable += 1
            elif audit_log.matches(event, bridge=args.bridge, since=args.since):
                selected.append(event)
    except OSError as exc:
        raise Failure(f"cannot read the audit log {args.audit_log}: {os_reason(exc)}") from None
    if args.json:
        for event in selected:
            print(json.dumps(event, separators=(",", ":"), ensure_ascii=False))
    elif selected:
        print("\n".join(audit_log.table(selected)))
    else:
        _note("No audit events match." if args.bridge or args.since else "No audit events yet.")
    if unreadable:
        _note(f"{unreadable} lines of {args.audit_log} are not audit events: skipped.")
    return 0


def cmd_demo(args: argparse.Namespace, data_dir: Path) -> int:
    """``bridge-relay demo``: see `relay.demo.run_demo`."""
    from relay.demo import run_demo

    if getattr(args, "data_dir", None) or os.environ.get("RELAY_DATA_DIR"):
        _note("The demo uses a temporary directory: the data dir is not used.")
    logs.configure(args.log_level, args.log_format)
    interactive = not args.once and sys.stdin.isatty()
    _run_trio(run_demo, interactive)
    return 0


# -- plumbing --------------------------------------------------------------------------------


def _require_data_dir(data_dir: Path) -> Path:
    """The data dir, which must exist: a command that only reads never makes one (a mistyped
    --data-dir would show an empty store and a certificate no relay uses)."""
    if not (data_dir / STORE_FILE).exists() and not (data_dir / CERT_FILE).exists():
        raise Failure(
            f"no relay data dir at {data_dir.resolve()} (give --data-dir or RELAY_DATA_DIR; "
            "'bridge-relay bridges create NAME' or 'bridge-relay serve' makes one)"
        )
    return data_dir


def _init_data_dir(data_dir: Path) -> None:
    """Make the data dir's certificate if there is none (the store is made when opened), so
    that `fingerprint` works right after `bridges create`."""
    try:
        ensure_self_signed(data_dir)
    except CertificateError as exc:
        raise Failure(str(exc)) from None


def _require_store(args: argparse.Namespace, data_dir: Path) -> None:
    """For a command that only reads: the store must exist. The data dir's SQLite file is
    checked with `_require_data_dir`; a store URL given with --store or RELAY_STORE is
    checked when opened (a PostgreSQL database without the schema, an SQLite file that is
    not there), and needs no data dir: an admin machine has none."""
    url = _store_url(args, data_dir)
    if url == StoreURL.sqlite(data_dir / STORE_FILE):
        _require_data_dir(data_dir)
    elif url.kind == "sqlite" and not Path(url.target).is_file():
        raise Failure(f"no bridge store at {url.target}")


def _store_url(args: argparse.Namespace, data_dir: Path) -> StoreURL:
    """--store, else RELAY_STORE, else the data dir's SQLite file."""
    if (url := getattr(args, "store", None)) is not None:
        return url
    if text := os.environ.get("RELAY_STORE"):
        try:
            return StoreURL.parse(text)
        except ValueError as exc:
            raise UsageError(f"RELAY_STORE: {exc}") from None
    return StoreURL.sqlite(data_dir / STORE_FILE)


def _register_password(url: StoreURL) -> None:
    if url.kind == "postgresql":
        from psycopg.conninfo import conninfo_to_dict

        logs.register_secret(str(conninfo_to_dict(url.target).get("password") or ""))


def _open_store(
    args: argparse.Namespace, data_dir: Path, *, url: StoreURL | None = None, create: bool = False
) -> Store:
    """The store of --store (or `url`), reached once so that an unreachable or missing one
    fails here with one line. Only with `create` is a PostgreSQL schema made."""
    url = url or _store_url(args, data_dir)
    _register_password(url)
    store = open_store(url, create=create)
    try:
        store.generation()
    except StoreError as exc:
        store.close()
        raise Failure(str(exc)) from None
    return store


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _run_trio(fn, *args: Any) -> Any:
    """trio.run, turning a Failure or UsageError raised inside nurseries into a plain one."""
    try:
        return trio.run(fn, *args)
    except BaseExceptionGroup as group:
        for leaf in _leaves(group):
            if isinstance(leaf, (Failure, UsageError)):
                raise leaf from None
        raise


_COMMANDS = {
    "serve": cmd_serve,
    "fingerprint": cmd_fingerprint,
    "bridges": cmd_bridges,
    "test": cmd_test,
    "store": cmd_store,
    "nodes": cmd_nodes,
    "audit": cmd_audit,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    """The ``bridge-relay`` command: returns the exit status (1 for a `Failure`, 2 for a
    `UsageError`, each printed as one line). Never raises for a user's mistake."""
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args = build_parser().parse_args(argv)
        args.argv = argv  # what the workers of `serve --workers` run again
        if args.command is None:
            raise UsageError(
                "a command is required: serve, fingerprint, bridges, test, store, nodes, "
                "audit or demo "
                "(see bridge-relay --help)"
            )
        data_dir = Path(
            getattr(args, "data_dir", None) or os.environ.get("RELAY_DATA_DIR") or DEFAULT_DATA_DIR
        )
        return _COMMANDS[args.command](args, data_dir)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except Failure as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
