"""A federation of simulated sites for the routing, failover and fuzzing tests.

Two sites, east and west, each its own Ray cluster started with
`first site up` (as a real site would be), plus a third site, ghost, that is
listed but never started. One standalone gateway fronts all three, polling
every second so a stopped site shows as down within a few seconds.

- sim-even: the same engine on east and west (load must split evenly);
- sim-skew: fast on east, slow on west (most traffic must go east);
- sim-fast: east only, zero delay (the fuzzer's target);
- sim-ghost: only on the ghost site (no healthy site serves it: 503);
- sim-late: west only, 3 s to its first token (a stream that waits);
- sim-narrow: west only, 2 s per answer, 2 at once and 2 queued in Serve (a full site);
- sim-embed: east only, declared an embeddings-only model (`capabilities.apis`).

The gateway also declares the tribunals of `TRIBUNALS` over those models, and
`ALIASES` (of a model: tests that drop the tribunals keep them valid).
"""

from __future__ import annotations

import contextlib
import copy
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port, private_ray_temp
from tests.support.processes import FirstProcess, start_standalone_gateway

SITE_START_TIMEOUT_S = 300


def simulated_model(model_id: str, ttft_ms: float, tpot_ms: float) -> dict:
    return {
        "id": model_id,
        "engine": "simulated",
        "engine_kwargs": {"ttft_ms": ttft_ms, "tpot_ms": tpot_ms, "max_num_seqs": 64},
        "resources": {"cpus": 0.5},
        "stream_interval_ms": 0,
    }


SITE_MODELS = {
    "east": [
        simulated_model("sim-even", 20, 5),
        simulated_model("sim-skew", 10, 2),
        simulated_model("sim-fast", 0, 0),
        {**simulated_model("sim-embed", 0, 0), "capabilities": {"apis": ["embeddings"]}},
    ],
    "west": [
        simulated_model("sim-even", 20, 5),
        simulated_model("sim-skew", 200, 40),
        simulated_model("sim-late", 3000, 5),
        {
            **simulated_model("sim-narrow", 2000, 5),
            "engine_kwargs": {"ttft_ms": 2000, "tpot_ms": 5, "max_num_seqs": 2},
            "max_ongoing_requests": 2,
            "max_queued_requests": 2,
        },
    ],
}


# The tribunals of tests/integration/test_tribunal.py: critics on both sites and on each.
TRIBUNALS = [
    {
        "name": "panel",
        "generator": "sim-even",
        "critics": ["sim-skew", "sim-even"],
        "reviser": "sim-fast",
        "critic_max_tokens": 8,
    },
    {
        "name": "panel-twice",
        "generator": "sim-fast",
        "critics": ["sim-even", "sim-skew"],
        "reviser": "sim-even",
        "rounds": 2,
        "critic_max_tokens": 8,
    },
    {
        "name": "panel-late",
        "generator": "sim-late",
        "critics": ["sim-fast"],
        "reviser": "sim-fast",
        "critic_max_tokens": 8,
    },
    {
        "name": "panel-ghost",
        "generator": "sim-fast",
        "critics": ["sim-even", "sim-ghost"],
        "reviser": "sim-fast",
    },
]


# The aliases of tests/integration/test_capabilities.py.
ALIASES = {"sim-friendly": "sim-fast"}


@dataclass
class SimulatedSite:
    """A site in its own `first site up` process that a test may stop and start again."""

    name: str
    workdir: Path
    config: dict
    process: FirstProcess | None = None
    ray_temps: list[Path] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.workdir / f"{self.name}.yaml"

    def start(self) -> None:
        temp = private_ray_temp()
        self.ray_temps.append(temp)
        self.config["ray"]["temp_dir"] = str(temp)
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.process = FirstProcess.start(
            ["site", "up", "--config", str(self.config_path)], self.workdir, self.name
        )

    def wait_ready(self) -> None:
        assert self.process is not None
        self.process.wait_ready(SITE_START_TIMEOUT_S)

    def stop(self, grace_s: float = 90.0) -> None:
        if self.process is not None:
            self.process.stop(grace_s)

    def cleanup(self) -> None:
        self.stop()
        for temp in self.ray_temps:
            shutil.rmtree(temp, ignore_errors=True)


def site_config(name: str, models: list[dict]) -> dict:
    return {
        "name": name,
        "ray": {"dashboard_port": free_port(), "metrics_export_port": free_port()},
        "serve": {"port": free_port()},
        "models": models,
    }


@dataclass
class Federation:
    gateway_url: str
    sites: dict[str, SimulatedSite]
    gateway: FirstProcess
    config: dict  # the gateway's, as started: a test may start another gateway like it


@pytest.fixture(scope="session")
def federation(tmp_path_factory) -> Iterator[Federation]:
    workdir = tmp_path_factory.mktemp("federation")
    sites = {
        name: SimulatedSite(name, workdir, site_config(name, models))
        for name, models in SITE_MODELS.items()
    }
    ghost = site_config(
        "ghost", [simulated_model("sim-even", 20, 5), simulated_model("sim-ghost", 0, 0)]
    )
    config = {
        # Routing tests: anyone may call, without limits; the ledger stays in the workdir.
        "auth": {"required": False},
        "limits": None,
        "store": {"path": str(workdir / "first.db")},
        "status": {"down_after_failures": 2},
        "circuit_breaker": {"failure_threshold": 2, "open_s": 2},
        "tribunals": TRIBUNALS,
        "aliases": ALIASES,
        "sites": [
            {
                "name": name,
                "site": site,
                # Status calls to a site's dashboard take seconds on a loaded 2-core
                # machine: a short status timeout would mark busy sites down.
                "channel": {"kind": "local", "poll_interval_s": 1},
                "timeouts": {"connect_s": 1, "read_s": 10, "first_byte_s": 30},
            }
            for name, site in [*((n, s.config) for n, s in sites.items()), ("ghost", ghost)]
        ],
    }
    gateway = None
    try:
        for site in sites.values():
            site.start()
        with ThreadPoolExecutor(len(sites)) as pool:
            list(pool.map(SimulatedSite.wait_ready, sites.values()))
        # On another port if something took its port meanwhile (the sites' Ray
        # processes bind ephemeral ports while they start).
        gateway, url = start_standalone_gateway(config, workdir / "federation.yaml", "gateway")
        yield Federation(url, sites, gateway, config)
    finally:
        if gateway is not None:
            gateway.stop()
        for site in sites.values():
            site.cleanup()


@contextlib.contextmanager
def gateway_like(
    federation, tmp_path: Path, name: str, changes: dict, site_changes: dict | None = None
) -> Iterator[tuple[FirstProcess, str]]:
    """A standalone gateway of its own in front of the federation's sites, its config the
    fixture's with `changes` (top-level sections) and, on every site, `site_changes`
    (`timeouts` merged into the site's): it and its URL, stopped afterwards."""
    config = copy.deepcopy(federation.config)
    config["store"] = {"path": str(tmp_path / f"{name}.db")}
    config.update(changes)
    for site in config["sites"]:
        extra = dict(site_changes or {})
        site["timeouts"] = {**site["timeouts"], **extra.pop("timeouts", {})}
        site.update(extra)
    gateway, url = start_standalone_gateway(config, tmp_path / f"{name}.yaml", name)
    try:
        yield gateway, url
    finally:
        gateway.stop()
