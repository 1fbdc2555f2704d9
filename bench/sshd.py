# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The `ssh -L` path: a throwaway OpenSSH server on loopback, run as the current user with
generated host and user keys, and one `ssh -N -L` client forwarding every target. Default
ciphers and settings otherwise."""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

from bench.paths import HOST, BenchPath, SkipPath, echo_ready
from bench.procs import Proc, StartError, descendants, free_port, kill_pids, run_command

_SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
_CONFIG = """\
Port {port}
ListenAddress {host}
HostKey {dir}/host_ed25519
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
UsePAM no
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
LogLevel ERROR
"""


def _tool(name: str) -> str:
    found = shutil.which(name, path=_SEARCH)
    if found is None:
        raise SkipPath(f"{name} not found (Debian: apt-get install openssh-server openssh-client)")
    return os.path.abspath(found)  # sshd re-executes itself and insists on an absolute path


class SshPath(BenchPath):
    name, label = "ssh", "ssh -L"

    def __init__(self, workdir: Path, targets: dict[str, int]) -> None:
        super().__init__(workdir, targets)
        self.dir = workdir / "ssh"
        self.sshd: Proc | None = None
        self.ssh: Proc | None = None

    def _keys(self, keygen: str) -> None:
        if (self.dir / "authorized_keys").exists():
            return
        self.dir.mkdir(mode=0o700, exist_ok=True)
        for key in ("host_ed25519", "user_ed25519"):
            done = run_command(
                [keygen, "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", self.dir / key]
            )
            if done.returncode:
                raise SkipPath(f"ssh-keygen failed: {done.stderr.strip()}")
        (self.dir / "authorized_keys").write_bytes((self.dir / "user_ed25519.pub").read_bytes())

    def start(self) -> None:
        sshd_bin, ssh_bin, keygen = _tool("sshd"), _tool("ssh"), _tool("ssh-keygen")
        self._keys(keygen)
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # its privilege separation dir
        port = free_port()
        config = self.dir / "sshd_config"
        config.write_text(_CONFIG.format(port=port, host=HOST, dir=self.dir))
        check = run_command([sshd_bin, "-t", "-f", config])
        if check.returncode:
            raise SkipPath(
                f"sshd refuses the configuration: {check.stderr.strip() or check.stdout.strip()}"
            )
        user = pwd.getpwuid(os.getuid()).pw_name
        self.ports = {name: free_port() for name in self.targets}
        forwards = [
            arg
            for name, target in self.targets.items()
            for arg in ("-L", f"{HOST}:{self.ports[name]}:{HOST}:{target}")
        ]
        try:
            self.sshd = Proc("sshd", [sshd_bin, "-D", "-e", "-f", config], self.workdir)
            self.ssh = Proc(
                "ssh",
                [
                    ssh_bin,
                    "-F",
                    "/dev/null",
                    "-N",
                    "-i",
                    self.dir / "user_ed25519",
                    "-p",
                    port,
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "ExitOnForwardFailure=yes",
                    "-o",
                    "LogLevel=ERROR",
                    "-o",
                    "ConnectionAttempts=10",
                    "-o",
                    "ConnectTimeout=5",
                    *forwards,
                    f"{user}@{HOST}",
                ],
                self.workdir,
            )
            echo_ready(self.ports["echo"], lambda: self.ssh.alive() and self.sshd.alive())
        except StartError as exc:
            reason = f"{exc}; sshd: {self.sshd.tail(3) if self.sshd else '-'}"
            self.stop()
            raise SkipPath(f"ssh -L did not come up: {reason}") from None
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.ssh is not None:
            self.ssh.stop()
        if self.sshd is not None:
            sessions = descendants(self.sshd.pid) if self.sshd.alive() else []
            self.sshd.stop()
            kill_pids(sessions, "sshd")  # per-connection children run in sessions of their own

    def processes(self) -> dict[str, list[int]]:
        out = {}
        if self.ssh is not None and self.ssh.alive():
            out["ssh"] = [self.ssh.pid]
        if self.sshd is not None and self.sshd.alive():
            out["sshd"] = [self.sshd.pid, *descendants(self.sshd.pid)]
        return out

    def procs(self) -> dict[str, Proc]:
        return {role: proc for role, proc in (("ssh", self.ssh), ("sshd", self.sshd)) if proc}
