"""Sites behind firewalls: the ssh-tunnel and globus-compute transports, end to end.

One site (`first site up`) runs in a network namespace whose firewall drops
every inbound connection (tests/support/firewall.py); the gateway runs
outside. Everything the site does is outbound, as at an HPC centre: its
endpoints (`first site endpoint`, globus-compute-endpoint's own engine in the
endpoint's own environment) dial in to the gateway's endpoint-engine
channels, and its connector (`first site connect`) keeps an OpenSSH
connection to the gateway host's real sshd open, with reverse dynamic
forwarding. The gateway knows the one site three ways:

- `walled`: ssh-tunnel (requests through the tunnel's SOCKS proxy);
- `walled-direct`: direct (the gateway would have to connect in: down);
- `walled-compute`: globus-compute (one Compute task per request).

Where this machine cannot make a namespace, the site runs on loopback
instead and only the test that needs the firewall skips, saying why.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import yaml

from serve_app.config import load_federation
from serve_app.routing.tunnels import authorized_keys
from tests.conftest import ENDPOINT_VENV, free_port, private_ray_temp
from tests.integration.conftest import SITE_START_TIMEOUT_S, simulated_model, site_config
from tests.support.firewall import Firewall, Sshd, site_key
from tests.support.processes import FirstProcess, start_standalone_gateway
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

ENDPOINT_FIRST = str(ENDPOINT_VENV / "bin/first")
MODEL = "sim-walled"
MESSAGES = [{"role": "user", "content": "hello through the wall"}]
COMPUTE_MAX_PAYLOAD = 64 * 1024


@dataclass
class WalledSite:
    url: str  # the gateway's
    firewall: Firewall | None
    why_no_firewall: str | None
    sshd: Sshd
    connector: FirstProcess
    keys: dict[str, tuple[Path, str]]
    ports: dict[str, int]  # each tunnel site's SOCKS port on the gateway host

    def client(self, site: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.url}/sites/{site}/v1", api_key="none", max_retries=0, timeout=60
        )

    def health(self) -> dict[str, dict]:
        sites = httpx.get(f"{self.url}/health", timeout=10).json()["sites"]
        return {site["name"]: site for site in sites}

    def ssh(
        self, key: Path, options: list[str], command: list[str] = (), timeout_s: float = 20
    ) -> subprocess.CompletedProcess:
        """OpenSSH's client from this host to the tunnel sshd, as site `key`."""
        destination = f"{self.sshd.user}@{self.sshd.host}"
        return subprocess.run(
            [*_ssh_base(self, key), *options, destination, *command],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )


def _up(walled: WalledSite, *names: str) -> bool:
    health = walled.health()
    return all(health[name]["health"] == "up" for name in names)


@pytest.fixture(scope="module")
def walled(tmp_path_factory) -> Iterator[WalledSite]:
    workdir = tmp_path_factory.mktemp("walled")
    try:
        firewall: Firewall | None = Firewall.create()
        why_not = None
    except RuntimeError as exc:
        firewall, why_not = None, str(exc)
    host_ip = firewall.host_ip if firewall else "127.0.0.1"
    prefix = firewall.prefix if firewall else []

    site = site_config("walled", [{**simulated_model(MODEL, 20, 20), "max_ongoing_requests": 64}])
    site["serve"]["host"] = "0.0.0.0"
    site["ray"]["temp_dir"] = str(private_ray_temp())
    site_path = workdir / "walled.yaml"
    site_path.write_text(yaml.safe_dump(site))
    keys = {name: site_key(workdir, name) for name in ("walled", "other", "stranger")}
    ports = {"walled": free_port(), "other": free_port()}
    listens = {name: f"{host_ip}:{free_port()}" for name in ("walled", "direct", "compute")}
    endpoint_key = secrets.token_hex(16)

    def channel(name: str) -> dict:
        return {"kind": "endpoint-engine", "listen": listens[name], "poll_interval_s": 1}

    timeouts = {"connect_s": 1, "read_s": 10, "first_byte_s": 30}
    config = {
        "auth": {"required": False},
        "limits": None,
        "store": {"path": str(workdir / "first.db")},
        "status": {"down_after_failures": 2},
        "circuit_breaker": {"failure_threshold": 2, "open_s": 1},
        "sites": [
            {
                "name": "walled",
                "site": "walled.yaml",
                "channel": channel("walled"),
                "transport": {
                    "kind": "ssh-tunnel",
                    "port": ports["walled"],
                    "public_key": keys["walled"][1],
                },
                "timeouts": timeouts,
            },
            {
                "name": "walled-direct",
                "site": "walled.yaml",
                "base_url": f"http://{firewall.site_ip if firewall else '127.0.0.1'}:"
                f"{site['serve']['port']}",
                "channel": channel("direct"),
                "timeouts": timeouts,
            },
            {
                "name": "walled-compute",
                "site": "walled.yaml",
                "channel": channel("compute"),
                "transport": {"kind": "globus-compute", "max_payload_bytes": COMPUTE_MAX_PAYLOAD},
                "timeouts": timeouts,
            },
            {
                # Never connects: its key and port are here to be refused each other's.
                "name": "other",
                "site": site_config("other", [simulated_model("sim-other", 0, 0)]),
                "channel": {"kind": "endpoint-engine", "listen": f"{host_ip}:{free_port()}"},
                "transport": {
                    "kind": "ssh-tunnel",
                    "port": ports["other"],
                    "public_key": keys["other"][1],
                },
            },
        ],
    }
    federation_path = workdir / "federation.yaml"
    federation_path.write_text(yaml.safe_dump(config))
    started: list[FirstProcess] = []
    sshd = None
    gateway = None
    try:
        sshd = Sshd.start(
            workdir / "sshd", authorized_keys(load_federation(federation_path)), host_ip
        )
        site_process = FirstProcess.start(
            ["site", "up", "--config", str(site_path)], workdir, "site", prefix=prefix
        )
        started.append(site_process)
        site_process.wait_ready(SITE_START_TIMEOUT_S)
        env = {"FIRST_ENDPOINT_KEY": endpoint_key}
        for name, address in listens.items():
            args = ["site", "endpoint", "--gateway", address, "--workers", "1"]
            started.append(
                FirstProcess.start(
                    args, workdir, f"endpoint-{name}", env, program=ENDPOINT_FIRST, prefix=prefix
                )
            )
        connector = FirstProcess.start(
            [
                "site",
                "connect",
                "--gateway",
                f"{host_ip}:{sshd.port}",
                "--key",
                str(keys["walled"][0]),
                "--port",
                str(ports["walled"]),
                "--user",
                sshd.user,
                "--known-hosts",
                str(sshd.known_hosts()),
            ],
            workdir,
            "connector",
            prefix=prefix,
        )
        started.append(connector)
        gateway, url = start_standalone_gateway(config, federation_path, "gateway", env=env)
        walled = WalledSite(url, firewall, why_not, sshd, connector, keys, ports)
        eventually(lambda: _up(walled, "walled", "walled-compute"), 120, "the walled site up")
        yield walled
    finally:
        if gateway is not None:
            gateway.stop()
        for process in reversed(started):
            process.stop()
        if sshd is not None:
            sshd.stop()
        if firewall is not None:
            firewall.remove()


def test_a_direct_site_behind_the_firewall_is_down_with_the_reason(walled):
    if walled.firewall is None:
        pytest.skip(f"no firewall to be behind: {walled.why_no_firewall}")
    health = eventually(
        lambda: (h := walled.health()["walled-direct"])["health"] == "down" and h,
        30,
        "the direct site down",
    )
    assert "cannot connect" in health["error"] and "ssh-tunnel" in health["error"]
    with pytest.raises(openai.APIStatusError) as refused:
        walled.client("walled-direct").chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=4
        )
    assert refused.value.status_code == 503 and "walled-direct is down" in refused.value.message


def test_the_tunnel_carries_chat_and_streams(walled):
    client = walled.client("walled")
    answer = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=8
    )
    assert answer.headers["x-first-site"] == "walled"
    assert answer.parse().choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage.completion_tokens == 8


def test_a_batch_runs_at_the_walled_site_through_its_endpoint(walled):
    client = openai.OpenAI(base_url=f"{walled.url}/v1", api_key="none", max_retries=0)
    lines = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": MESSAGES, "max_tokens": 4},
        }
        for i in range(3)
    ]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    file_id = client.files.create(file=("input.jsonl", content), purpose="batch").id
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = eventually(
        lambda: (b := client.batches.retrieve(batch.id)).status in ("completed", "failed") and b,
        180,
        "the batch to finish",
    )
    assert done.status == "completed", done
    assert done.request_counts.completed == 3
    results = [
        json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()
    ]
    assert sorted(r["custom_id"] for r in results) == ["line-0", "line-1", "line-2"]


def test_globus_compute_sends_a_request_as_one_task_and_says_where_the_time_went(walled):
    client = walled.client("walled-compute")
    answer = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=8
    )
    assert answer.headers["x-first-site"] == "walled-compute"
    assert answer.parse().usage.completion_tokens == 8
    timing = dict(
        part.strip().split(";dur=") for part in answer.headers["server-timing"].split(",")
    )
    assert set(timing) == {"submit", "queue", "run"}
    assert float(timing["run"]) > 0


def test_globus_compute_refuses_streams_and_bodies_over_its_limit(walled):
    client = walled.client("walled-compute")
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    assert refused.value.code == "stream_unsupported" and refused.value.param == "stream"
    assert "walled-compute" in refused.value.message

    huge = [{"role": "user", "content": "x" * (COMPUTE_MAX_PAYLOAD + 1)}]
    with pytest.raises(openai.APIStatusError) as too_large:
        client.chat.completions.create(model=MODEL, messages=huge, max_tokens=4)
    assert too_large.value.status_code == 413
    assert "Globus Compute" in too_large.value.message


def test_a_stream_unpinned_skips_the_compute_site(walled):
    """Unpinned, streams go to sites that stream (the tunnel), never the Compute site."""
    client = openai.OpenAI(base_url=f"{walled.url}/v1", api_key="none", max_retries=0)
    for _ in range(4):
        with client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=2, stream=True
        ) as response:
            assert response.headers["x-first-site"] == "walled"
            response.read()


def _ssh_child(connector: FirstProcess) -> psutil.Process:
    children = psutil.Process(connector.process.pid).children(recursive=True)
    (ssh,) = [child for child in children if child.name() == "ssh"]
    return ssh


def test_a_cut_tunnel_ends_the_stream_with_an_error_and_comes_back(walled):
    ssh = _ssh_child(walled.connector)
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 400, "stream": True}
    events = []
    with httpx.stream(
        "POST", f"{walled.url}/sites/walled/v1/chat/completions", json=body, timeout=30
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 3:
                    ssh.kill()  # the site's SSH connection is gone
    assert len(events) < 400
    error = json.loads(events[-1])["error"]
    assert "walled" in error["message"] and "broke off" in error["message"]

    cut_at = time.monotonic()
    client = walled.client("walled")

    def answers() -> bool:
        try:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
        except openai.APIError:
            return False
        return True

    # The connector's backoff (1 s) and a status poll (1 s), with room for a busy machine.
    eventually(answers, 30, "the tunnel back")
    assert _ssh_child(walled.connector).pid != ssh.pid
    print(f"requests succeed again {time.monotonic() - cut_at:.1f} s after the cut")


def test_each_site_key_opens_its_own_port_and_nothing_else(walled):
    other_key = walled.keys["other"][0]
    # Another site's key may not listen on any port but its own...
    taken = walled.ssh(other_key, ["-N", "-R", str(free_port())])
    assert taken.returncode != 0 and "remote port forwarding failed" in taken.stderr
    # ...and on its own it may (so the refusal above was the permission).
    own = subprocess.Popen(
        [
            *_ssh_base(walled, other_key),
            "-N",
            "-R",
            str(walled.ports["other"]),
            f"{walled.sshd.user}@{walled.sshd.host}",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        eventually(
            lambda: _socks_port_open("127.0.0.1", walled.ports["other"]),
            15,
            "the other site's own port",
        )
        assert own.poll() is None
    finally:
        own.terminate()
        _, stderr = own.communicate(timeout=10)
        print(stderr)


def test_a_key_not_in_the_config_is_refused(walled):
    refused = walled.ssh(walled.keys["stranger"][0], ["-N", "-R", str(free_port())])
    assert refused.returncode == 255 and "Permission denied" in refused.stderr


def test_the_tunnel_account_cannot_run_a_command(walled):
    done = walled.ssh(walled.keys["walled"][0], ["-T"], ["echo", "should-not-run"])
    assert done.returncode != 0
    assert "should-not-run" not in done.stdout


def _ssh_base(walled: WalledSite, key: Path) -> list[str]:
    sshd = walled.sshd
    return [
        "ssh",
        "-i",
        str(key),
        "-p",
        str(sshd.port),
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"UserKnownHostsFile={sshd.known_hosts()}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "ExitOnForwardFailure=yes",
    ]


def _socks_port_open(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"\x05\x01\x00")
            return sock.recv(2) == b"\x05\x00"
    except OSError:
        return False
