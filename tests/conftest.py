"""One Ray cluster, one tiny vLLM model and one simulated model for the whole test run.

The stack is started the way `make run` starts it: `first gateway up` with
the local site colocated on the gateway's Ray cluster, on free ports with a
private Ray temp folder, in its own session, and stopped by its own process
(SIGTERM, then its process group). Ready means every model answered a
completion through the gateway, which `first gateway up` checks before it
prints READY. A standalone gateway (uvicorn) fronts the same site.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from serve_app.cli_process import FIRST, FirstProcess, free_port
from serve_app.config import load_federation

REPO = Path(__file__).resolve().parent.parent
STACK_START_TIMEOUT_S = 600
VLLM_MODEL = "tiny-llama"
SIMULATED_MODEL = "sim-llama"
TINY_CONTEXT = 256
__all__ = ["FIRST", "SIMULATED_MODEL", "TINY_CONTEXT", "VLLM_MODEL", "free_port"]


def private_ray_temp() -> Path:
    # Ray's socket paths must stay short: a folder directly under /tmp.
    return Path(tempfile.mkdtemp(prefix="first-ray-", dir="/tmp"))


@dataclass
class RunningSite:
    base_url: str
    config_path: Path


@dataclass
class RunningStack:
    gateway_url: str
    site: RunningSite
    federation_path: Path
    process: FirstProcess


def local_site_for_tests(model_dir: Path) -> dict:
    """The shipped local site, with the model built for this run."""
    site = yaml.safe_load((REPO / "cluster_configs" / "local.yaml").read_text())
    site["models"][0]["source"] = str(model_dir)
    # Every token in its own chunk, so streaming tests see several chunks.
    for model in site["models"]:
        model["stream_interval_ms"] = 0
    return site


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    import subprocess

    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    subprocess.run([FIRST, "model", "build-tiny", "--out", str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def stack(tiny_model_dir, tmp_path_factory) -> Iterator[RunningStack]:
    """`first gateway up` on the shipped federation, with the local site colocated."""
    ray_temp = private_ray_temp()
    workdir = tmp_path_factory.mktemp("stack")
    federation = yaml.safe_load((REPO / "cluster_configs" / "local-federation.yaml").read_text())
    federation["gateway"]["port"] = free_port()
    federation["gateway"]["ray"].update(
        dashboard_port=free_port(), metrics_export_port=free_port(), temp_dir=str(ray_temp)
    )
    federation["sites"][0]["site"] = local_site_for_tests(tiny_model_dir)
    federation["sites"][0]["channel"]["poll_interval_s"] = 0.5
    federation_path = workdir / "federation.yaml"
    federation_path.write_text(yaml.safe_dump(federation))
    # The colocated site as the gateway runs it, for `first site status` and direct calls.
    site_config = load_federation(federation_path).sites[0].site_config
    site_path = workdir / "site.yaml"
    site_path.write_text(yaml.safe_dump(site_config.model_dump(mode="json")))
    process = FirstProcess.start(
        ["gateway", "up", "--config", str(federation_path)], workdir, "stack"
    )
    try:
        url = process.wait_ready(STACK_START_TIMEOUT_S)
        site = RunningSite(base_url=site_config.base_url, config_path=site_path)
        yield RunningStack(url, site, federation_path, process)
    finally:
        process.stop()
        shutil.rmtree(ray_temp, ignore_errors=True)


@pytest.fixture(scope="session")
def site(stack) -> RunningSite:
    return stack.site


@pytest.fixture(scope="session")
def standalone_gateway(stack, tmp_path_factory) -> Iterator[str]:
    """`first gateway up --standalone` in front of the stack's site, reached over HTTP."""
    workdir = tmp_path_factory.mktemp("standalone")
    site = yaml.safe_load(stack.site.config_path.read_text())
    federation = {
        "gateway": {"port": free_port()},
        "sites": [
            {
                "name": "local",
                "site": site,
                "base_url": stack.site.base_url,
                "channel": {"kind": "local", "poll_interval_s": 0.5},
            }
        ],
    }
    path = workdir / "federation.yaml"
    path.write_text(yaml.safe_dump(federation))
    process = FirstProcess.start(
        ["gateway", "up", "--standalone", "--config", str(path)], workdir, "standalone"
    )
    try:
        yield process.wait_ready(60)
    finally:
        process.stop()
