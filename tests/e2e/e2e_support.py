# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Real processes for the end-to-end tests: the console scripts, PostgreSQL and psql.

Every process runs in its own process group and writes stdout and stderr to files; `started`
lists them all so that a failing test's report can show their output. `Launcher` starts the
relay and agents of one test the way a user runs them.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from relay.testing import ThrowawayCA

BIN_DIR = Path(sys.executable).parent
#: The repository root: the working directory of helpers run as ``python -m tests...``.
ROOT = Path(__file__).resolve().parents[2]
RELAY = str(BIN_DIR / "bridge-relay")
AGENT = str(BIN_DIR / "bridge-agent")

# Bounds every wait for a process to start, print a line or exit.
STARTUP_TIMEOUT = 30.0
LOG_TAIL = 12_000

# Variables a user's shell might carry that would change what the tests start.
CONFIG_VARIABLES = (
    "BRIDGE_ID",
    "BRIDGE_SECRET",
    "RELAY_URL",
    "RELAY_FINGERPRINT",
    "RELAY_CA",
    "ALLOW",
    "ALLOWED_HOSTS",
    "ALLOW_ANY",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "RELAY_DATA_DIR",
    "RELAY_STORE",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "HTTPS_PROXY",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
    "JOURNAL_STREAM",
)

BRIDGE_NAME = "e2e"

started: list[Process] = []


def clean_env(**values: str | None) -> dict[str, str]:
    """os.environ without the product's configuration variables, plus `values` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}
    for key, value in values.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run(
    argv: list[str], *, env: dict[str, str] | None = None, timeout: float = STARTUP_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        env=clean_env() if env is None else env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def relay_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One `bridge-relay --data-dir DATA_DIR ARGS...` command, run to completion."""
    return run([RELAY, "--data-dir", str(data_dir), *args])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = STARTUP_TIMEOUT) -> None:
    __tracebackhide__ = True
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


class Process:
    """A process in its own process group, its output going to NAME.out and NAME.err in log_dir."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_dir: Path,
        *,
        env: dict[str, str] | None = None,
        **popen,
    ) -> None:
        self.name = name
        stem = log_dir / f"{len(started):03d}-{name}"
        self.stdout_path, self.stderr_path = stem.with_suffix(".out"), stem.with_suffix(".err")
        popen.setdefault("cwd", log_dir)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(
                [str(arg) for arg in argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=clean_env() if env is None else env,
                start_new_session=True,
                **popen,
            )
        started.append(self)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float = STARTUP_TIMEOUT) -> int:
        """The exit status; fails the test if the process is still running after `timeout`."""
        __tracebackhide__ = True
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} is still running after {timeout} s") from None

    def wait_for(
        self,
        pattern: str,
        *,
        stream: str = "stderr",
        count: int = 1,
        timeout: float = STARTUP_TIMEOUT,
    ) -> re.Match[str]:
        """The `count`-th match of `pattern` (a multi-line regex) in the process's output."""
        __tracebackhide__ = True
        regex = re.compile(pattern, re.MULTILINE)
        read = self.stdout if stream == "stdout" else self.stderr
        deadline = time.monotonic() + timeout
        while True:
            exited = self.poll() is not None  # checked before reading: no output is missed
            matches = list(regex.finditer(read()))
            if len(matches) >= count:
                return matches[count - 1]
            if exited:
                raise AssertionError(
                    f"{self.name} exited with status {self.poll()} "
                    f"before printing /{pattern}/ on {stream}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} did not print /{pattern}/ on {stream} within {timeout} s"
                )
            time.sleep(0.05)

    def stop(self, first: signal.Signals | None = None, grace: float = 10.0) -> None:
        """Kill the whole process group, after `first` and up to `grace` seconds if given."""
        if first is not None and self.poll() is None:
            self._signal_group(first)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        self._signal_group(signal.SIGKILL)
        self.popen.wait()

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def log_sections(self) -> list[tuple[str, str]]:
        """(title, text) for a test report: the tail of stdout and stderr."""
        sections = []
        for stream, path in (("stdout", self.stdout_path), ("stderr", self.stderr_path)):
            text = path.read_text(errors="replace")
            if len(text) > LOG_TAIL:
                text = f"[... {len(text) - LOG_TAIL} characters before]\n{text[-LOG_TAIL:]}"
            if text:
                sections.append((f"{self.name} {stream} ({path})", text))
        return sections


class Postgres:
    """A running PostgreSQL server on 127.0.0.1, reached with the real psql client."""

    def __init__(self, psql: str, port: int) -> None:
        self.psql_bin = psql
        self.port = port
        self.env = {k: v for k, v in clean_env().items() if not k.startswith("PG")}
        self.env["PGCONNECT_TIMEOUT"] = "10"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def psql_argv(self, sql: str, port: int | None = None) -> list[str]:
        return [
            self.psql_bin,
            "-h",
            "127.0.0.1",
            "-p",
            str(port or self.port),
            "-U",
            "postgres",
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]

    def psql(
        self, sql: str, port: int | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        """`sql` through psql, directly or (with `port`) through a forward; stdout as bytes."""
        return subprocess.run(
            self.psql_argv(sql, port),
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
        )

    def check_same_result(self, sql: str, port: int) -> None:
        """`sql` gives the same multi-megabyte output directly and through the forward on
        `port`, to the byte."""
        direct = self.psql(sql)
        tunneled = self.psql(sql, port=port)
        assert direct.returncode == 0, direct.stderr
        assert tunneled.returncode == 0, tunneled.stderr
        assert len(direct.stdout) > 5_000_000
        assert (len(tunneled.stdout), hashlib.sha256(tunneled.stdout).hexdigest()) == (
            len(direct.stdout),
            hashlib.sha256(direct.stdout).hexdigest(),
        )


class SteadyQueries:
    """One psql session through a forward (one tunnel), kept open while the test sends it
    queries one at a time through a named pipe: `query()` runs ``select N`` and waits for its
    answer, `finish()` ends the session and checks that every answer came, in order."""

    def __init__(self, launcher: Launcher, postgres: Postgres, port: int, name: str) -> None:
        pipe = launcher.log_dir / f"{name}.sql"
        os.mkfifo(pipe)
        self.process = launcher.start(name, [*postgres.psql_argv("", port)[:-2], "-f", pipe])
        self.sent = 0

        def opened() -> bool:  # psql opens the pipe once connected
            assert self.process.poll() is None, f"{name} exited: {self.process.stderr()}"
            try:
                self._fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                return False
            return True

        wait_until(opened, f"{name} to connect")
        os.set_blocking(self._fd, True)

    def query(self, timeout: float = 10.0) -> None:
        """Sends the next query and waits up to `timeout` for its answer."""
        __tracebackhide__ = True
        number = self.sent
        os.write(self._fd, f"select {number};\n".encode())
        self.sent += 1
        self.process.wait_for(rf"^{number}$", stream="stdout", timeout=timeout)

    def finish(self) -> None:
        """Ends the session: psql exits 0 having answered every query, in order."""
        __tracebackhide__ = True
        os.close(self._fd)
        assert self.process.wait() == 0, self.process.stderr()
        assert self.process.stdout().split() == [str(i) for i in range(self.sent)]


@dataclass(frozen=True)
class Bridge:
    data_dir: Path
    name: str
    id: str
    secret: str = field(repr=False)
    fingerprint: str


@dataclass
class Relay:
    process: Process
    agent_port: int
    forwards: dict[str, int]  # target HOST:PORT -> local listener port
    connected: int = 0  # agents this test waited to see connected
    node: str | None = None  # its --node name, for the relays of a cluster
    peer_port: int | None = None  # with --peer-listen

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.agent_port}"


def parse_assignments(stdout: str) -> dict[str, str]:
    """`KEY=VALUE` lines -> dict."""
    return dict(line.split("=", 1) for line in stdout.splitlines())


class Launcher:
    """Starts relays, agents and other processes for one test; kills them all at its end."""

    def __init__(self, bridge: Bridge, log_dir: Path) -> None:
        self.bridge = bridge
        self.log_dir = log_dir
        self.processes: list[Process] = []

    def start(
        self, name: str, argv: list, *, env: dict[str, str] | None = None, **popen
    ) -> Process:
        process = Process(name, argv, self.log_dir, env=env, **popen)
        self.processes.append(process)
        return process

    def relay(
        self,
        *targets: str,
        args: Iterable[str | Path] = (),
        env: dict[str, str] | None = None,
        **popen,
    ) -> Relay:
        """`bridge-relay serve ARGS` with one `--forward` per target, once it is listening
        (`env` adds to its clean environment; `popen`: more arguments for `subprocess.Popen`)."""
        argv = [
            RELAY,
            "--data-dir",
            self.bridge.data_dir,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--bcrypt-cost",  # the test bridges' (a later --bcrypt-cost in ARGS wins)
            "4",
            *args,
        ]
        for target in targets:
            argv += ["--forward", f"{self.bridge.name}={target}"]
        if env:
            popen["env"] = clean_env(**env)
        process = self.start("relay", argv, **popen)
        agents = process.wait_for(r"^agents: listening on 127\.0\.0\.1:(\d+)$", stream="stdout")
        forwards = {}
        for target in targets:
            listening = process.wait_for(
                rf"^forward {re.escape(self.bridge.name)} -> {re.escape(target)}: "
                r"listening on 127\.0\.0\.1:(\d+)$",
                stream="stdout",
            )
            forwards[target] = int(listening[1])
        peer_port = None
        if "--peer-listen" in [str(arg) for arg in args]:
            peers = process.wait_for(r"^peers: listening on 127\.0\.0\.1:(\d+)$", stream="stdout")
            peer_port = int(peers[1])
        return Relay(process, int(agents[1]), forwards, peer_port=peer_port)

    def node(
        self,
        name: str,
        store: str,
        *targets: str,
        args: Iterable[str | Path] = (),
        node_timeout: float = 3.0,
        env: dict[str, str] | None = None,
        peers: bool = True,
        own_certificate: bool = False,
    ) -> Relay:
        """A relay of a cluster: `relay` with `--store STORE --node NAME`, in a data dir of
        its own (`node_dir`), presenting the certificate of the bridge's data dir to agents
        (the nodes of a cluster share one, so that one pin fits them all), or with
        `own_certificate` the self-signed one it makes in its data dir; with `peers`, linked
        to the other nodes (`--peer-listen 127.0.0.1:0`, `peer_port`)."""
        data_dir = self.node_dir(name)
        data_dir.mkdir(parents=True, exist_ok=True)
        certificate: list[str | Path] = [
            "--cert",
            self.bridge.data_dir / "relay.crt",
            "--key",
            self.bridge.data_dir / "relay.key",
        ]
        relay = self.relay(
            *targets,
            args=[
                "--data-dir",
                data_dir,
                *([] if own_certificate else certificate),
                "--store",
                store,
                "--node",
                name,
                "--node-timeout",
                f"{node_timeout:g}",
                *(["--peer-listen", "127.0.0.1:0"] if peers else []),
                *args,
            ],
            env=env,
        )
        relay.node = name
        return relay

    def cluster(
        self, store: str, count: int, *targets: str, node_timeout: float = 3.0
    ) -> list[Relay]:
        """`count` peered nodes node1, node2, ... forwarding to `targets`, once each one's
        links to all the others are up."""
        nodes = [
            self.node(f"node{i}", store, *targets, node_timeout=node_timeout)
            for i in range(1, count + 1)
        ]
        for node in nodes:
            node.process.wait_for(r"\tPeer link up\t", count=count - 1)
        return nodes

    def node_dir(self, name: str) -> Path:
        """The data dir of the cluster node `name` (log dir/nodes/NAME)."""
        return self.log_dir / "nodes" / name

    def agent(
        self,
        relay: Relay,
        allow: Iterable[str],
        *,
        args: Iterable[str | Path] = (),
        wait: bool = True,
        **env: str | None,
    ) -> Process:
        """`bridge-agent ARGS` configured through its environment (`env` changes the defaults:
        this test's bridge, pinning the relay's certificate); with `wait`, once connected."""
        defaults = {
            "BRIDGE_ID": self.bridge.id,
            "BRIDGE_SECRET": self.bridge.secret,
            "RELAY_URL": relay.url,
            "RELAY_FINGERPRINT": self.bridge.fingerprint,
            "ALLOW": ",".join(allow),
        }
        agent = self.start("agent", [AGENT, *args], env=clean_env(**(defaults | env)))
        if wait:
            agent.wait_for(r"\tHandling incoming proxy connections")
            relay.connected += 1
            relay.process.wait_for(
                rf'\tBridge connected\t.*"{re.escape(self.bridge.name)}"', count=relay.connected
            )
        return agent

    def tunnel(self, targets: list[str], allow: list[str] | None = None) -> tuple[Relay, Process]:
        """A relay forwarding to `targets` and a connected agent allowing `allow` (or them)."""
        relay = self.relay(*targets)
        return relay, self.agent(relay, targets if allow is None else allow)

    def logs(self) -> str:
        """Everything the processes of this test printed."""
        return "".join(p.stdout() + p.stderr() for p in self.processes)

    def close(self) -> None:
        for process in self.processes:
            process.stop()


def list_nodes(store: str, data_dir: Path, node_timeout: str | None = None) -> dict[str, dict]:
    """`bridge-relay --store STORE nodes --json` (run in `data_dir`, where no relay runs):
    the nodes by name. Give the relays' `node_timeout` for a test that waits for a node to
    be gone (the command's default is 10 s)."""
    timeout = [] if node_timeout is None else ["--node-timeout", node_timeout]
    listed = relay_cli(data_dir, "--store", store, "nodes", "--json", *timeout)
    assert listed.returncode == 0, listed.stderr
    return {row["name"]: row for row in map(json.loads, listed.stdout.splitlines())}


def log_time(match: re.Match[str]) -> float:
    """The time (Unix seconds) of a text-format log line matched with its first field as
    group 1."""
    return datetime.datetime.fromisoformat(match[1].replace("Z", "+00:00")).timestamp()


#: The agent's exit status when the relay rejects its credentials (deleted or rotated).
CREDENTIALS_REJECTED = 78
#: Revocation is promised within 2 s of the change, on every relay sharing the store.
REVOCATION_BOUND = 2.0


def revoke(
    command: Callable[[], subprocess.CompletedProcess[str]],
    reason: str,
    relays: Iterable[Process],
    agents: Iterable[Process],
) -> None:
    """`command()` (a CLI command run where no relay runs) cuts the sessions on each of
    `relays` within REVOCATION_BOUND of its change being committed (when the command
    returns), with `reason`; each of `agents` then exits 78."""
    __tracebackhide__ = True
    done = command()
    committed = time.time()
    assert done.returncode == 0, done.stderr
    for relay in relays:
        cut = relay.wait_for(
            rf"^(\S+)\tINFO\tBridge disconnected\t.*\"reason\": \"{reason}\"", timeout=10
        )
        late = log_time(cut) - committed
        assert late < REVOCATION_BOUND, f"{relay.name} cut the session {late:.2f} s after"
    for agent in agents:
        assert agent.wait(timeout=15) == CREDENTIALS_REJECTED


def wait_until_running(postgres: Postgres, query: str, count: int = 1) -> None:
    """Waits until `count` sessions of `postgres` run `query` (e.g. a long pg_sleep sent
    through a tunnel; make it unique to the test, see `long_query`: a backend whose client
    was cut runs on until its sleep ends)."""
    __tracebackhide__ = True
    quoted = query.replace("'", "''")
    sql = f"select count(*) from pg_stat_activity where query = '{quoted}'"
    wait_until(
        lambda: postgres.psql(sql).stdout == f"{count}\n".encode(),
        f"{count} sessions to run {query!r}",
        10,
    )


def end_query(postgres: Postgres, query: str) -> None:
    """Terminates the sessions of `postgres` running `query`."""
    quoted = query.replace("'", "''")
    done = postgres.psql(
        f"select pg_terminate_backend(pid) from pg_stat_activity where query = '{quoted}'"
    )
    assert done.returncode == 0, done.stderr


def long_query(seconds: int = 60) -> str:
    """A query that sleeps `seconds`, with a tag of its own for `wait_until_running`."""
    return f"select pg_sleep({seconds}), 'q{uuid.uuid4().hex[:12]}'"


@dataclass(frozen=True)
class TLSFiles:
    ca: Path  # a CA certificate
    cert: Path  # a relay certificate for 127.0.0.1 signed by that CA
    key: Path  # the relay certificate's key


def write_tls_files(directory: Path) -> TLSFiles:
    """A throwaway CA (`relay.testing.ThrowawayCA`) and a relay certificate it signed, as
    PEM files in `directory`."""
    return TLSFiles(*ThrowawayCA.create().write(directory))


def log_lines(log: str, message: str) -> list[dict]:
    """The fields of each text-format log line whose message is or starts with `message`."""
    found = []
    for line in log.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[2].startswith(message):
            found.append(json.loads(parts[3]) if len(parts) > 3 else {})
    return found


def dropped_by_reason(log: str) -> Counter[str]:
    """Connections dropped before authentication, by reason: the ones logged one by one
    ("Connection dropped", "Handshake refused") plus those summed up per interval."""
    counts: Counter[str] = Counter()
    for message in ("Connection dropped", "Handshake refused"):
        for fields in log_lines(log, message):
            counts[fields.get("reason", "?")] += 1
    for fields in log_lines(log, "Connections dropped before authentication"):
        counts.update(fields["reasons"])
    return counts
