"""The `first` command as a user runs it: help, errors, status of a running site."""

from __future__ import annotations

import json
import os
import subprocess

import click
import pytest
import yaml
from click.testing import CliRunner

from serve_app.cli import main
from tests.conftest import FIRST, SIMULATED_MODEL, VLLM_MODEL, free_port


def first(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([FIRST, *args], capture_output=True, text=True, timeout=timeout, env=env)


def every_command(group: click.Group = main, path: tuple[str, ...] = ()) -> list[list[str]]:
    """The path of every command and group below `group`, itself included."""
    found = [list(path)]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += every_command(command, (*path, name))
        else:
            found.append([*path, name])
    return found


@pytest.mark.parametrize("command", every_command(), ids=lambda c: " ".join(c) or "first")
def test_every_command_has_help(command):
    result = CliRunner().invoke(main, [*command, "--help"], prog_name="first")
    assert result.exit_code == 0, result.output
    assert "Usage: first" in result.output


def test_the_installed_command_runs():
    result = first("--help")
    assert result.returncode == 0 and "Usage: first" in result.stdout


def test_bad_config_exits_non_zero_with_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {"name": "s", "models": [{"id": "m", "engine": "simulated", "autoscaling": "hott"}]}
        )
    )
    result = first("site", "up", "--config", str(path))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "models[0].autoscaling: unknown preset 'hott'" in lines[0]


def test_bad_federation_file_exits_non_zero_with_one_line(tmp_path):
    path = tmp_path / "federation.yaml"
    site = {"name": "s", "models": [{"id": "m", "engine": "simulated"}]}
    path.write_text(
        yaml.safe_dump({"placement": {"policy": "fastest"}, "sites": [{"name": "s", "site": site}]})
    )
    result = first("gateway", "up", "--config", str(path))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"{path}: placement.policy: Input should be" in lines[0]


def _globus_federation(tmp_path) -> str:
    path = tmp_path / "federation.yaml"
    site = {"name": "polaris", "models": [{"id": "m", "engine": "simulated"}]}
    channel = {"kind": "globus-compute", "endpoint_id": "2f2d6c2a-9a8e-4b8e-9d3a-1c1b0d7f4e21"}
    sites = [
        {"name": "polaris", "site": site, "base_url": "http://127.0.0.1:9", "channel": channel}
    ]
    path.write_text(yaml.safe_dump({"gateway": {"port": free_port()}, "sites": sites}))
    return str(path)


def _environment(**variables: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FIRST_GLOBUS_")}
    return {**environ, **variables}


@pytest.mark.parametrize("standalone", [False, True], ids=["serve", "standalone"])
def test_globus_site_without_credentials_fails_in_one_line_before_ray_starts(tmp_path, standalone):
    args = ["gateway", "up", "--config", _globus_federation(tmp_path)]
    result = first(*args, *(["--standalone"] if standalone else []), env=_environment())
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "sites[0] (polaris).channel: a globus-compute channel needs" in lines[0]
    assert "FIRST_GLOBUS_CLIENT_ID" in lines[0]


@pytest.mark.parametrize("standalone", [False, True], ids=["serve", "standalone"])
def test_globus_auth_without_credentials_fails_in_one_line_before_ray_starts(tmp_path, standalone):
    path = tmp_path / "federation.yaml"
    site = {"name": "s", "models": [{"id": "m", "engine": "simulated"}]}
    federation = {
        "gateway": {"port": free_port()},
        "auth": {"globus": {"scope": "https://auth.globus.org/scopes/x/all"}},
        "store": {"path": str(tmp_path / "first.db")},
        "sites": [{"name": "s", "site": site, "base_url": "http://127.0.0.1:9"}],
    }
    path.write_text(yaml.safe_dump(federation))
    args = ["gateway", "up", "--config", str(path), *(["--standalone"] if standalone else [])]
    result = first(*args, env=_environment(), timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: auth.globus needs the gateway's Globus client"), lines
    assert "starting Ray" not in result.stderr


def test_globus_site_with_bad_credentials_fails_at_start_in_one_line(tmp_path):
    from tests.fakes.globus_auth import running_fake_globus_auth

    client_id = "8c1a3b7e-5f0d-4c9e-a2b4-6d3e1f0a9b87"
    with running_fake_globus_auth(client_id, "right") as auth:
        env = _environment(
            FIRST_GLOBUS_CLIENT_ID=client_id,
            FIRST_GLOBUS_CLIENT_SECRET="wrong",
            GLOBUS_SDK_SERVICE_URL_AUTH=auth.url,
        )
        result = first(
            "gateway", "up", "--standalone", "--config", _globus_federation(tmp_path), env=env
        )
    assert result.returncode != 0
    assert len(auth.token_requests) == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "site polaris: Globus Auth rejected the gateway's client credentials" in lines[0]


def test_missing_model_folder_is_reported_before_ray_starts(tmp_path):
    path = tmp_path / "site.yaml"
    missing = tmp_path / "no-model"
    path.write_text(yaml.safe_dump({"name": "s", "models": [{"id": "m", "source": str(missing)}]}))
    result = first("site", "up", "--config", str(path), timeout=60)
    assert result.returncode != 0
    assert f"no model at {missing}" in result.stderr
    assert "first model build-tiny" in result.stderr


def test_status_of_an_unreachable_site_fails_in_one_line(tmp_path):
    path = tmp_path / "site.yaml"
    site = {
        "name": "gone",
        "ray": {"dashboard_port": free_port()},
        "models": [{"id": "m", "engine": "simulated"}],
    }
    path.write_text(yaml.safe_dump(site))
    result = first("site", "status", "--config", str(path))
    assert result.returncode != 0
    assert json.loads(result.stdout)["reachable"] is False
    assert "site 'gone' is not reachable" in result.stderr


@pytest.mark.slow
def test_status_of_the_running_site_reports_both_models_ready(site):
    result = first("site", "status", "--config", str(site.config_path))
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["reachable"] and status["app_status"] == "RUNNING"
    models = {m["id"]: m for m in status["models"]}
    for model_id, engine in ((VLLM_MODEL, "vllm"), (SIMULATED_MODEL, "simulated")):
        assert models[model_id]["engine"] == engine
        assert models[model_id]["ready"] is True
        assert models[model_id]["state"] == "running"
        assert models[model_id]["replicas_running"] == 1


@pytest.mark.slow
def test_tiny_model_builds_are_identical(tiny_model_dir, tmp_path):
    from deployments.tiny_model import model_fingerprint

    again = tmp_path / "again"
    assert first("model", "build-tiny", "--out", str(again)).returncode == 0
    assert model_fingerprint(again) == model_fingerprint(tiny_model_dir)


def test_standalone_gateway_on_a_busy_port_fails_in_one_line(tmp_path):
    import socket

    site = {"name": "s", "models": [{"id": "m", "engine": "simulated"}]}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = tmp_path / "federation.yaml"
        federation = {"gateway": {"port": port}, "sites": [{"name": "s", "site": site}]}
        path.write_text(yaml.safe_dump(federation))
        result = first("gateway", "up", "--standalone", "--config", str(path), timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == f"Error: could not listen on 127.0.0.1:{port}: Address already in use"
    assert "Traceback" not in result.stderr


def test_keys_are_made_listed_and_revoked_without_ever_showing_the_key(tmp_path):
    path = tmp_path / "federation.yaml"
    site = {"name": "s", "models": [{"id": "m", "engine": "simulated"}]}
    store = tmp_path / "keys.db"
    path.write_text(
        yaml.safe_dump({"store": {"path": str(store)}, "sites": [{"name": "s", "site": site}]})
    )
    made = first("keys", "create", "--config", str(path), "--user", "ann", "--groups", "g1, g2")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("first-") and len(made.stdout.splitlines()) == 1
    listing = first("keys", "list", "--config", str(path))
    assert "ann" in listing.stdout and "g1,g2" in listing.stdout and "active" in listing.stdout
    assert key not in listing.stdout + listing.stderr and key.encode() not in store.read_bytes()
    key_id = listing.stdout.splitlines()[1].split()[0]
    assert first("keys", "revoke", key_id, "--config", str(path)).returncode == 0
    assert "revoked" in first("keys", "list", "--config", str(path)).stdout
    missing = first("keys", "revoke", "k-nothere", "--config", str(path))
    assert missing.returncode != 0
    assert missing.stderr.strip().splitlines() == [
        "Error: no key with id 'k-nothere' (see `first keys list`)"
    ]
