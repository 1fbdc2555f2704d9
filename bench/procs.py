# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Child processes of the benchmarks: each in its own session with its output in files, always
stopped (its whole process group) by whoever started it; and what /proc says about them."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

STARTUP_TIMEOUT = 30.0
ROOT = Path(__file__).resolve().parent.parent
_serial = itertools.count(1)

# The product's configuration variables (by prefix), proxies included: a user's shell must not
# change what runs.
_CONFIG_PREFIXES = (
    "BRIDGE_",
    "RELAY_",
    "ALLOW",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "NOTIFY_SOCKET",
    "WATCHDOG_",
    "HTTPS_PROXY",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
)


class StartError(Exception):
    """A process the benchmark needs did not come up; the message says why."""


def clean_env(**values: str) -> dict[str, str]:
    """os.environ without the product's configuration, `bench` importable, plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CONFIG_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(values)
    return env


def python_module(module: str, *args: object) -> list[str]:
    return [sys.executable, "-m", module, *map(str, args)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proc:
    """A process in a new session, stdout and stderr going to NAME.out / NAME.err in `logs`;
    its stdin a pipe (`send_line`) if `stdin`, else /dev/null."""

    def __init__(
        self,
        name: str,
        argv: list,
        logs: Path,
        *,
        env: dict[str, str] | None = None,
        stdin: bool = False,
    ) -> None:
        self.name = name
        stem = logs / f"{next(_serial):02d}-{name}"
        self.paths = {"stdout": stem.with_suffix(".out"), "stderr": stem.with_suffix(".err")}
        with open(self.paths["stdout"], "wb") as out, open(self.paths["stderr"], "wb") as err:
            self.popen = subprocess.Popen(
                [str(a) for a in argv],
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=clean_env() if env is None else env,
                cwd=logs,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send_line(self, line: str) -> None:
        """Write `line` and a newline to the process's stdin (started with `stdin`)."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(f"{line}\n".encode())
        self.popen.stdin.flush()

    def read(self, stream: str = "stdout", offset: int = 0) -> str:
        with open(self.paths[stream], "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def size(self, stream: str = "stderr") -> int:
        return self.paths[stream].stat().st_size

    def tail(self, lines: int = 6) -> str:
        text = (self.read("stderr") + self.read("stdout")).strip().splitlines()
        return " | ".join(text[-lines:]) or "(no output)"

    def wait_for(
        self, pattern: str, stream: str = "stdout", timeout: float = STARTUP_TIMEOUT
    ) -> re.Match[str]:
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            exited = not self.alive()  # before reading: no output is missed
            if match := regex.search(self.read(stream)):
                return match
            if exited:
                raise StartError(
                    f"{self.name} exited with status {self.popen.returncode}: {self.tail()}"
                )
            if time.monotonic() > deadline:
                raise StartError(
                    f"{self.name} did not print /{pattern}/ within {timeout:g} s: {self.tail()}"
                )
            time.sleep(0.05)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the process group, then SIGKILL after `grace` seconds (idempotent)."""
        if self.alive():
            self._signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        self._signal(signal.SIGKILL)
        self.popen.wait()
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)


def run_command(
    argv: list, timeout: float = STARTUP_TIMEOUT, **kwargs
) -> subprocess.CompletedProcess[str]:
    """A short command, run to completion (killed if it outlives `timeout`)."""
    return subprocess.run(
        [str(a) for a in argv],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=kwargs.pop("env", None) or clean_env(),
        **kwargs,
    )


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (children, grandchildren, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def memory_kib(pid: int | None) -> dict[str, int]:
    """VmRSS and VmHWM (the peak resident set) of `pid` (None: this process) in KiB; empty if
    it is gone."""
    found = {}
    try:
        with open(f"/proc/{pid or 'self'}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(line.split()[1])
    except OSError:
        return {}
    return found


def rss_kib(pid: int) -> int | None:
    """VmRSS of `pid` in KiB, or None if it is gone."""
    return memory_kib(pid).get("VmRSS")


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of `pid` (all its threads) so far, from /proc/PID/stat (clock
    ticks, 1/SC_CLK_TCK s each), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def kill_pids(pids: list[int], command: str) -> None:
    """SIGKILL those of `pids` still running `command` (a pid may have been reused since)."""
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/comm") as f:
            if f.read().strip() == command:
                os.kill(pid, signal.SIGKILL)
