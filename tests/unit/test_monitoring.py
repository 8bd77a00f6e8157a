"""monitoring/: the committed dashboards match their code; promtool accepts config and rules."""

from __future__ import annotations

import subprocess
from pathlib import Path

from monitoring import ALERT_RULES, DASHBOARDS_DIR, prometheus_config
from monitoring.dashboards import dashboards, render

ALERT_TESTS = ALERT_RULES.parent / "alerts_test.yml"


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True)


def test_committed_dashboards_are_what_the_code_generates():
    generated = {f"{name}.json": render(board) for name, board in dashboards().items()}
    committed = {path.name: path.read_text() for path in DASHBOARDS_DIR.glob("*.json")}
    assert committed.keys() == generated.keys()
    stale = [name for name in generated if committed[name] != generated[name]]
    assert not stale, f"run `python -m monitoring.dashboards`: {stale} differ from the code"


def test_alert_rules_pass_promtool_check_and_their_unit_tests():
    checked = _promtool("check", "rules", str(ALERT_RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = _promtool("test", "rules", str(ALERT_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test():
    rules = {
        line.split(":", 1)[1].strip()
        for line in ALERT_RULES.read_text().splitlines()
        if line.strip().startswith("- alert:")
    }
    tested = {
        line.split(":", 1)[1].strip()
        for line in ALERT_TESTS.read_text().splitlines()
        if line.strip().startswith("alertname:")
    }
    assert rules and rules == tested


def test_the_generated_prometheus_config_passes_promtool(tmp_path: Path):
    path = tmp_path / "prometheus.yml"
    config = prometheus_config("http://127.0.0.1:8000", Path("/tmp/ray"), 5, "127.0.0.1:9101")
    path.write_text(config)
    checked = _promtool("check", "config", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
