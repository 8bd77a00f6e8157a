"""Parsing what Ray reports into site status, on captured payloads."""

from __future__ import annotations

from deployments.site_status import (
    ReplicaCounts,
    alive_node_metrics_addresses,
    model_state,
    parse_serve_applications,
    parse_serve_load,
)

APPLICATIONS = {
    "applications": {
        "site": {
            "status": "RUNNING",
            "deployments": {
                "LLMServer:tiny-llama": {
                    "status": "HEALTHY",
                    "target_num_replicas": 2,
                    "replicas": [{"state": "RUNNING"}, {"state": "STARTING"}],
                },
                "LLMServer:cold": {"status": "HEALTHY", "target_num_replicas": 0, "replicas": []},
            },
        },
        "other": {"status": "RUNNING", "deployments": {}},
    }
}

METRICS = """\
# HELP ray_serve_replica_processing_queries The current number of queries being processed.
# TYPE ray_serve_replica_processing_queries gauge
ray_serve_replica_processing_queries{application="site",deployment="LLMServer:tiny-llama",replica="a"} 3.0
ray_serve_replica_processing_queries{application="site",deployment="LLMServer:tiny-llama",replica="b"} 2.0
ray_serve_replica_processing_queries{application="other",deployment="LLMServer:tiny-llama",replica="c"} 9.0
# HELP ray_serve_deployment_queued_queries The current number of queries queued.
# TYPE ray_serve_deployment_queued_queries gauge
ray_serve_deployment_queued_queries{application="site",deployment="LLMServer:tiny-llama",handle="h1"} 4.0
ray_serve_deployment_queued_queries{application="site",deployment="LLMServer:tiny-llama",handle="h2"} 1.0
"""


def test_replica_states_are_counted_per_deployment():
    status, counts = parse_serve_applications(APPLICATIONS, ["site"])
    assert status == "RUNNING"
    assert counts["LLMServer:tiny-llama"] == ReplicaCounts(running=1, starting=1, target=2)
    assert counts["LLMServer:cold"].running == 0


def test_missing_application_reports_nothing():
    assert parse_serve_applications(APPLICATIONS, ["absent"]) == (None, {})


def test_load_sums_replicas_handles_and_nodes_of_this_application_only():
    load = parse_serve_load([METRICS, METRICS], ["site"])
    assert load["LLMServer:tiny-llama"] == (10.0, 10.0)


def test_model_states():
    assert model_state(None) == "not_deployed"
    assert model_state(ReplicaCounts(running=1)) == "running"
    assert model_state(ReplicaCounts(starting=1, target=1)) == "starting"
    assert model_state(ReplicaCounts(target=0)) == "scaled_to_zero"
    assert model_state(ReplicaCounts(healthy=False)) == "unhealthy"


def test_only_alive_nodes_are_scraped():
    nodes = {
        "data": {
            "summary": [
                {
                    "raylet": {
                        "state": "ALIVE",
                        "nodeManagerAddress": "10.0.0.1",
                        "metricsExportPort": 8266,
                    }
                },
                {
                    "raylet": {
                        "state": "DEAD",
                        "nodeManagerAddress": "10.0.0.2",
                        "metricsExportPort": 8266,
                    }
                },
            ]
        }
    }
    assert alive_node_metrics_addresses(nodes) == ["10.0.0.1:8266"]


def test_a_site_of_several_applications_is_read_as_one():
    """Direct streaming: a model's own application beside the site's multi-model one."""
    payload = {
        "applications": {
            **APPLICATIONS["applications"],
            "site-big": {
                "status": "DEPLOYING",
                "deployments": {
                    "LLMServer:big": {
                        "status": "UPSCALING",
                        "target_num_replicas": 1,
                        "replicas": [{"state": "STARTING"}],
                    }
                },
            },
        }
    }
    status, counts = parse_serve_applications(payload, ["site-big", "site"])
    assert status == "DEPLOYING"  # the worst of the site's applications
    assert set(counts) == {"LLMServer:tiny-llama", "LLMServer:cold", "LLMServer:big"}
    assert parse_serve_applications(payload, ["site-gone", "site"])[0] == "DEPLOYING"
    load = parse_serve_load([METRICS], ["site", "other"])
    assert load["LLMServer:tiny-llama"] == (14.0, 5.0)
