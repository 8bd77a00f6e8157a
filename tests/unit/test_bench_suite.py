"""The benchmark harness's control of the kernel's scheduler (bench/suite.py)."""

from __future__ import annotations

import pytest

from bench import suite


@pytest.fixture
def switch(tmp_path, monkeypatch):
    """A stand-in for /proc/sys/kernel/sched_autogroup_enabled, autogroup on."""
    path = tmp_path / "sched_autogroup_enabled"
    path.write_text("1\n")
    monkeypatch.setattr(suite, "AUTOGROUP", path)
    return path


def test_autogroup_is_off_while_a_benchmark_runs_and_on_again_after(switch):
    with suite.without_autogroup() as autogroup:
        assert autogroup is False
        assert switch.read_text() == "0"
    assert switch.read_text() == "1"


def test_autogroup_comes_back_when_the_benchmark_fails(switch):
    with pytest.raises(RuntimeError), suite.without_autogroup():
        raise RuntimeError("the benchmark failed")
    assert switch.read_text() == "1"


def test_autogroup_already_off_is_left_off(switch):
    switch.write_text("0\n")
    with suite.without_autogroup() as autogroup:
        assert autogroup is False
    assert switch.read_text() == "0\n"


def test_a_kernel_without_autogroup_is_recorded_as_such(tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "AUTOGROUP", tmp_path / "missing")
    with suite.without_autogroup() as autogroup:
        assert autogroup is None
    assert suite.machine(autogroup)["sched_autogroup"] is None
