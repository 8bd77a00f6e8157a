"""Run a long-lived `first` command as a child process, the way a user runs it.

`first site up` and `first gateway up` print `READY <url>` on stdout once
they answer. The test suite and the benchmarks start them through this: in
their own session (so everything they leave behind can be stopped by their
process group), output to files, readiness read from the READY line; a
standalone gateway of a config through `start_standalone_gateway`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

from tests.support.waiting import eventually

FIRST = str(Path(sys.executable).parent / "first")


def free_port() -> int:
    """A port free now on 127.0.0.1, for the configs handed to the processes started here."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listener_on(port: int) -> psutil.Process | None:
    """The process listening on TCP `port` of this machine, if any."""
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port:
            return psutil.Process(connection.pid) if connection.pid else None
    return None


@dataclass
class FirstProcess:
    """A running `first ... up` command."""

    args: list[str]
    process: subprocess.Popen
    out_path: Path
    log_path: Path
    url: str | None = None

    @classmethod
    def start(  # noqa: PLR0913 (the command, where its output goes, and how it runs)
        cls,
        args: list[str],
        workdir: Path,
        name: str,
        env: dict[str, str] | None = None,
        program: str = FIRST,
        prefix: Sequence[str] = (),
    ) -> FirstProcess:
        """Start `PREFIX first ARGS` (`first` is `program`: another environment's);
        `env` is added to this process's environment. `prefix` runs it elsewhere
        (`ip netns exec NS`: in a network namespace)."""
        out_path, log_path = workdir / f"{name}.out", workdir / f"{name}.log"
        with open(out_path, "w") as out, open(log_path, "w") as log:
            process = subprocess.Popen(
                [*prefix, program, *args],
                stdout=out,
                stderr=log,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        return cls(args, process, out_path, log_path)

    def wait_ready(self, timeout_s: float) -> str:
        """The URL from the READY line; RuntimeError with the log tail if it exits first,
        TimeoutError if it does neither within `timeout_s`."""
        command = f"`first {' '.join(self.args)}`"

        def ready() -> str | None:
            for line in self.out_path.read_text(errors="replace").splitlines():
                if line.startswith("READY "):
                    return line.split(" ", 1)[1].strip()
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{command} exited:\n{tail}")
            return None

        try:
            self.url = eventually(ready, timeout_s, f"{command} to be ready", interval_s=0.25)
        except AssertionError:
            raise TimeoutError(f"{command} not ready; see {self.log_path}") from None
        return self.url

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def signal_tree(self, signum: signal.Signals) -> int:
        """Send `signum` to the command and every process under it, the Ray workers
        too (they start sessions of their own, so its process group misses them):
        a machine frozen (SIGSTOP), thawed (SIGCONT) or gone (SIGKILL). How many got it."""
        try:
            tree = psutil.Process(self.process.pid)
            processes = [tree, *tree.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        sent = 0
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signum)
                sent += 1
        return sent

    def stop(self, grace_s: float = 90.0) -> None:
        """SIGTERM (a clean shutdown), then whatever is left in its process group."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


def start_standalone_gateway(  # noqa: PLR0913 -- keyword options of one command line
    config: dict,
    path: Path,
    name: str = "gateway",
    *,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout_s: float = 60,
    attempts: int = 3,
) -> tuple[FirstProcess, str]:
    """`first gateway up --standalone --config PATH ARGS` of `config`, ready: it and its URL.

    `config` is written to `path` with `gateway.port` set to a port free now
    (the rest of it as given); the output goes beside it (NAME.out, NAME.log);
    `env` is added to this process's environment. If the gateway could not
    listen because something took the port meanwhile (Ray processes bind
    ephemeral ports while they start), the config is written again with
    another port, up to `attempts` starts in all. On any other failure the
    process is stopped and `wait_ready`'s error raised.
    """
    for attempt in range(1, attempts + 1):
        written = {**config, "gateway": {**config.get("gateway", {}), "port": free_port()}}
        path.write_text(yaml.safe_dump(written))
        gateway = FirstProcess.start(
            ["gateway", "up", "--standalone", "--config", str(path), *args],
            path.parent,
            name,
            env,
        )
        try:
            return gateway, gateway.wait_ready(timeout_s)
        except Exception as exc:
            gateway.stop()
            port_taken = isinstance(exc, RuntimeError) and "could not listen" in str(exc)
            if not port_taken or attempt == attempts:
                raise
    raise ValueError("attempts must be at least 1")
