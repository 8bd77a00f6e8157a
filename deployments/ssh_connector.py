"""The site's end of an ssh-tunnel transport: one outbound SSH connection, kept open.

The login node runs OpenSSH's client with reverse dynamic forwarding (`-R
PORT` without a destination): the gateway host's sshd then listens on
127.0.0.1:PORT as a SOCKS5 proxy whose connections come out here, at the
login node, so the gateway reaches the site's endpoint and its jobs' compute
nodes with no inbound connection to the site. The connection is all this
keeps: when ssh exits (the network dropped, the gateway host restarted) it
starts it again, after a backoff that grows while the tries fail and starts
over once a connection has lasted. Keepalives make ssh notice a dead link
within about `SERVER_ALIVE_INTERVAL_S * SERVER_ALIVE_COUNT_MAX` seconds.
"""

from __future__ import annotations

import shlex
import subprocess
import threading
import time
from collections.abc import Callable

# Seconds before the next try, by how many tries in a row have failed.
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
# A connection that lasted this long was a working one: the backoff starts over.
STABLE_AFTER_S = 30.0
SERVER_ALIVE_INTERVAL_S = 5
SERVER_ALIVE_COUNT_MAX = 3


def ssh_command(
    gateway: tuple[str, int],
    user: str,
    key: str,
    port: int,
    known_hosts: str | None = None,
) -> list[str]:
    """The OpenSSH command line of the tunnel (the docs give it for sites without `first`)."""
    host, ssh_port = gateway
    command = ["ssh", "-N", "-T", "-i", key, "-p", str(ssh_port), "-R", str(port)]
    options = {
        "BatchMode": "yes",  # never prompt: a key or nothing
        "IdentitiesOnly": "yes",
        "ExitOnForwardFailure": "yes",  # a port it may not open is a failure, not a shell
        "ServerAliveInterval": str(SERVER_ALIVE_INTERVAL_S),
        "ServerAliveCountMax": str(SERVER_ALIVE_COUNT_MAX),
    }
    if known_hosts is not None:
        options |= {"UserKnownHostsFile": known_hosts, "StrictHostKeyChecking": "yes"}
    for name, value in options.items():
        command += ["-o", f"{name}={value}"]
    return [*command, f"{user}@{host}"]


def keep_connected(
    command: list[str], echo: Callable[[str], None], stop: threading.Event | None = None
) -> None:
    """Run `command` again whenever it exits, until `stop` is set (or KeyboardInterrupt)."""
    stop = stop or threading.Event()
    failures = 0
    echo(f"tunnel: {shlex.join(command)}")
    while not stop.is_set():
        started = time.monotonic()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        echo(f"tunnel: connecting (ssh pid {process.pid})")
        try:
            while process.poll() is None and not stop.wait(0.2):
                pass
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait()
        if stop.is_set():
            return
        lasted_s = time.monotonic() - started
        failures = 0 if lasted_s >= STABLE_AFTER_S else failures + 1
        wait_s = BACKOFF_S[min(max(failures - 1, 0), len(BACKOFF_S) - 1)]
        echo(
            f"tunnel: ssh exited with status {process.returncode} after {lasted_s:.1f} s; "
            f"reconnecting in {wait_s:g} s"
        )
        stop.wait(wait_s)
