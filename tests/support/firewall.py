"""A site behind a firewall, made real: a network namespace, and the gateway host's sshd.

`Firewall` creates a network namespace joined to this host by a veth pair,
whose firewall drops every inbound connection (iptables in the namespace):
what runs in it can connect out to the host, and nothing on the host can
connect in, as at an HPC centre. `Sshd` runs OpenSSH's server on a free port
with a generated host key, its tunnel account confined by the very lines
`first gateway tunnel-config` writes (serve_app/routing/tunnels.py). Both are
started and stopped by the test setup, by their own process ids.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import random
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from serve_app.routing.tunnels import sshd_match_block
from tests.support.processes import free_port
from tests.support.waiting import eventually

SSHD = "/usr/sbin/sshd"


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=30)


@dataclass
class Firewall:
    """A namespace at `site_ip` whose inbound connections are dropped; the host is `host_ip`."""

    name: str
    host_ip: str
    site_ip: str

    @classmethod
    def create(cls) -> Firewall:
        """RuntimeError saying why when this machine cannot make one (no root, no netns)."""
        if shutil.which("iptables") is None:
            raise RuntimeError("no iptables (make firewall-tools)")
        tag = f"{os.getpid() % 10000}{random.randrange(100)}"
        subnet = random.randrange(1, 250)
        wall = cls(f"first-site-{tag}", f"10.231.{subnet}.1", f"10.231.{subnet}.2")
        host_if, site_if = f"fw{tag}h", f"fw{tag}s"
        steps = [
            ["ip", "netns", "add", wall.name],
            ["ip", "link", "add", host_if, "type", "veth", "peer", "name", site_if],
            ["ip", "link", "set", site_if, "netns", wall.name],
            ["ip", "addr", "add", f"{wall.host_ip}/30", "dev", host_if],
            ["ip", "link", "set", host_if, "up"],
            *(
                wall.inside(*step)
                for step in (
                    ["ip", "addr", "add", f"{wall.site_ip}/30", "dev", site_if],
                    ["ip", "link", "set", site_if, "up"],
                    ["ip", "link", "set", "lo", "up"],
                    ["ip", "route", "add", "default", "via", wall.host_ip],
                    # The firewall: nothing from outside may open a connection in.
                    [
                        "iptables",
                        "-A",
                        "INPUT",
                        "-i",
                        site_if,
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "NEW",
                        "-j",
                        "DROP",
                    ],
                )
            ),
        ]
        try:
            for step in steps:
                _run(*step)
        except (subprocess.CalledProcessError, OSError) as exc:
            wall.remove()
            detail = getattr(exc, "stderr", "") or str(exc)
            raise RuntimeError(f"cannot make a network namespace here: {detail.strip()}") from None
        return wall

    def inside(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *command]

    @property
    def prefix(self) -> list[str]:
        return self.inside()

    def remove(self) -> None:
        """Delete the namespace (its veth pair goes with it); its processes must be gone."""
        with contextlib.suppress(subprocess.CalledProcessError, OSError):
            _run("ip", "netns", "del", self.name)


@dataclass
class Sshd:
    """OpenSSH's server for site tunnels, on `host:port`, its account `user`."""

    host: str
    port: int
    user: str
    workdir: Path
    process: subprocess.Popen

    @classmethod
    def start(cls, workdir: Path, authorized_keys: str, host: str = "127.0.0.1") -> Sshd:
        workdir.mkdir(parents=True, exist_ok=True)
        host_key = workdir / "host_ed25519"
        if not host_key.exists():
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key))
        keys_path = workdir / "authorized_keys"
        keys_path.write_text(authorized_keys)
        keys_path.chmod(0o600)
        port = free_port()
        user = getpass.getuser()  # sshd not run as root can only log its own user in
        config = workdir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {port}",
                    f"ListenAddress {host}",
                    f"HostKey {host_key}",
                    f"PidFile {workdir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {keys_path}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "StrictModes no",
                    "UsePAM no",
                    "LogLevel VERBOSE",
                    sshd_match_block(user),
                ]
            )
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # its privilege separation directory
        log = open(workdir / "sshd.log", "w")  # noqa: SIM115 (the server's, while it runs)
        process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        server = cls(host, port, user, workdir, process)
        eventually(server._listening, 15, "sshd to listen")
        return server

    def _listening(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"sshd exited: {(self.workdir / 'sshd.log').read_text()[-2000:]}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection((self.host, self.port), timeout=1),
        ):
            return True
        return False

    def known_hosts(self) -> Path:
        """A known_hosts file naming this server's key, for StrictHostKeyChecking."""
        path = self.workdir / "known_hosts"
        public = (self.workdir / "host_ed25519.pub").read_text().split()
        path.write_text(f"[{self.host}]:{self.port} {public[0]} {public[1]}\n")
        return path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def site_key(workdir: Path, name: str) -> tuple[Path, str]:
    """A new ed25519 key pair for a site: its private key file and its public key line."""
    path = workdir / f"{name}_ed25519"
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path))
    return path, Path(f"{path}.pub").read_text().strip()
