"""One Ray cluster, one tiny vLLM model and one simulated model for the whole test run.

The site is started the way a user starts it, with `first site up` in its
own session, on free ports with a private Ray temp folder, and stopped by its
own process (SIGTERM, then its process group). Ready means both models
answered a completion, which `first site up` checks before it prints READY.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
FIRST = str(Path(sys.executable).parent / "first")
SITE_START_TIMEOUT_S = 600
VLLM_MODEL = "tiny-llama"
SIMULATED_MODEL = "sim-llama"
TINY_CONTEXT = 256


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningSite:
    base_url: str
    config_path: Path
    process: subprocess.Popen
    log_path: Path


def site_config_for_tests(model_dir: Path, temp_dir: Path) -> dict:
    """The shipped local site, on free ports, with the model built for this run."""
    site = yaml.safe_load((REPO / "cluster_configs" / "local.yaml").read_text())
    site["name"] = "test-site"
    site["ray"].update(
        dashboard_port=free_port(), metrics_export_port=free_port(), temp_dir=str(temp_dir)
    )
    site["serve"]["port"] = free_port()
    site["models"][0]["source"] = str(model_dir)
    # Every token in its own chunk, so streaming tests see several chunks.
    for model in site["models"]:
        model["stream_interval_ms"] = 0
    return site


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    subprocess.run([FIRST, "model", "build-tiny", "--out", str(out)], check=True)
    return out


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=90)
    # Whatever the site left in its own process group goes too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def site(tiny_model_dir, tmp_path_factory) -> Iterator[RunningSite]:
    # Ray's socket paths must stay short: a folder directly under /tmp.
    ray_temp = Path(tempfile.mkdtemp(prefix="first-ray-", dir="/tmp"))
    workdir = tmp_path_factory.mktemp("site")
    config_path = workdir / "site.yaml"
    config_path.write_text(yaml.safe_dump(site_config_for_tests(tiny_model_dir, ray_temp)))
    log_path = workdir / "site.log"
    out_path = workdir / "site.out"
    with open(log_path, "w") as log, open(out_path, "w") as out:
        process = subprocess.Popen(
            [FIRST, "site", "up", "--config", str(config_path)],
            stdout=out,
            stderr=log,
            start_new_session=True,
        )
    try:
        base_url = _wait_for_ready(process, out_path, log_path)
        yield RunningSite(base_url, config_path, process, log_path)
    finally:
        _stop(process)
        shutil.rmtree(ray_temp, ignore_errors=True)


def _wait_for_ready(process: subprocess.Popen, out_path: Path, log_path: Path) -> str:
    """The URL `first site up` prints on stdout once every warm model has answered."""
    deadline = time.monotonic() + SITE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        for line in out_path.read_text().splitlines():
            if line.startswith("READY "):
                return line.split(" ", 1)[1].strip()
        if process.poll() is not None:
            tail = log_path.read_text()[-3000:]
            raise RuntimeError(f"`first site up` exited with {process.returncode}:\n{tail}")
        time.sleep(0.5)
    raise TimeoutError(f"site not ready after {SITE_START_TIMEOUT_S} s; see {log_path}")
