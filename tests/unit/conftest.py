"""Unit tests run without a Ray cluster: one started here by accident (a Ray API that
initialises Ray on first use) leaks, and Ray 2.60 then writes ~/.ray/auth_token and sets
RAY_AUTH_MODE=token in this process, which every cluster a later test starts inherits."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def _no_ray_cluster_started():
    yield
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized(), "this unit test started a Ray cluster"
