"""The `first` command as a user runs it: help, errors, status of a running site."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.conftest import FIRST, SIMULATED_MODEL, VLLM_MODEL, free_port


def first(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([FIRST, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "command",
    [[], ["site"], ["site", "up"], ["site", "status"], ["model"], ["model", "build-tiny"]],
)
def test_every_command_has_help(command):
    result = first(*command, "--help")
    assert result.returncode == 0
    assert "Usage: first" in result.stdout


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
