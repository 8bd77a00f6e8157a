"""The import contracts of `make lint` (pyproject.toml, import-linter) catch what they forbid.

Each case copies the project's packages into a temporary folder, adds one
module that breaks a contract, and runs `lint-imports` there with the
project's own pyproject.toml: it must fail and name the offending import.
The unchanged copy must pass, so the failure is the probe's doing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("serve_app", "deployments", "autoscaling", "monitoring", "tests", "bench")
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("layers")
    ignore = shutil.ignore_patterns("__pycache__", "results", "*.png")
    for package in PACKAGES:
        shutil.copytree(REPO / package, root / package, ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_project_keeps_every_contract(copy):
    result = lint(copy)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("probe", "imports", "contract"),
    [
        ("deployments/probe_upward.py", "serve_app.config", "a site runs without either"),
        ("autoscaling/probe_upward.py", "serve_app.metrics", "a site runs without either"),
        ("serve_app/probe_tests.py", "tests.conftest", "never imports its tests"),
        ("deployments/probe_bench.py", "bench.harness", "never imports its tests"),
        ("serve_app/store/probe_routing.py", "serve_app.routing.placement", "request flow"),
        ("monitoring/probe_gateway.py", "serve_app.config", "monitoring stands on its own"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(copy, probe, imports, contract):
    module = copy / probe
    module.write_text(f'"""A probe that breaks a contract."""\n\nimport {imports}  # noqa: F401\n')
    try:
        result = lint(copy)
    finally:
        module.unlink()
    probe_name = probe.removesuffix(".py").replace("/", ".")
    assert result.returncode == 1, result.stdout[-3000:]
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(contract in line for line in broken), result.stdout[-3000:]
    assert f"{probe_name} -> {imports}" in result.stdout
