"""Autoscaling presets: what each temperature promises."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deployments.autoscaling_presets import PRESETS, resolve_autoscaling


def test_hot_never_goes_below_one_replica():
    assert resolve_autoscaling("hot", {})["min_replicas"] >= 1


def test_cold_scales_to_zero_and_starts_empty():
    cold = resolve_autoscaling("cold", {})
    assert cold["min_replicas"] == 0 and cold["initial_replicas"] == 0


def test_warm_starts_with_a_replica_but_may_reach_zero():
    warm = resolve_autoscaling("warm", {})
    assert warm["initial_replicas"] == 1 and warm["min_replicas"] == 0


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_scales_on_load(name):
    # ray.serve.llm's own default target is so high that a model never scales up.
    assert resolve_autoscaling(name, {})["target_ongoing_requests"] < 1000


def test_raising_the_minimum_raises_the_initial_count():
    assert (
        resolve_autoscaling("cold", {"min_replicas": 2, "max_replicas": 2})["initial_replicas"] == 2
    )


def test_serve_rejects_inconsistent_bounds():
    with pytest.raises(ValidationError):
        resolve_autoscaling("hot", {"max_replicas": 0})


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="use hot, warm, cold"):
        resolve_autoscaling("tepid", {})
