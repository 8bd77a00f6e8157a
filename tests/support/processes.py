"""Run a long-lived `first` command as a child process, the way a user runs it.

`first site up` and `first gateway up` print `READY <url>` on stdout once
they answer. The test suite and the benchmarks start them through this: in
their own session (so everything they leave behind can be stopped by their
process group), output to files, readiness read from the READY line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

FIRST = str(Path(sys.executable).parent / "first")


def free_port() -> int:
    """A port free now on 127.0.0.1, for the configs handed to the processes started here."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class FirstProcess:
    """A running `first ... up` command."""

    args: list[str]
    process: subprocess.Popen
    out_path: Path
    log_path: Path
    url: str | None = None

    @classmethod
    def start(
        cls, args: list[str], workdir: Path, name: str, env: dict[str, str] | None = None
    ) -> FirstProcess:
        """Start `first ARGS`; `env` is added to this process's environment."""
        out_path, log_path = workdir / f"{name}.out", workdir / f"{name}.log"
        with open(out_path, "w") as out, open(log_path, "w") as log:
            process = subprocess.Popen(
                [FIRST, *args],
                stdout=out,
                stderr=log,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        return cls(args, process, out_path, log_path)

    def wait_ready(self, timeout_s: float) -> str:
        """The URL from the READY line; RuntimeError with the log tail if it exits first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.out_path.read_text(errors="replace").splitlines():
                if line.startswith("READY "):
                    self.url = line.split(" ", 1)[1].strip()
                    return self.url
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"`first {' '.join(self.args)}` exited:\n{tail}")
            time.sleep(0.25)
        raise TimeoutError(f"`first {' '.join(self.args)}` not ready; see {self.log_path}")

    @property
    def running(self) -> bool:
        return self.process.poll() is None

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
