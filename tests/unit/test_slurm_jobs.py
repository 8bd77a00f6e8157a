"""The Slurm layer without Slurm: config validation, the batch script, and reading job state."""

from __future__ import annotations

import json
import subprocess

import pytest
from pydantic import ValidationError

from deployments.site_config import SiteConfig
from deployments.site_status import JobStatus, slurm_model_state
from deployments.slurm import SiteJobs, _job_state, parse_slurm_duration


def site(tmp_path, **slurm) -> SiteConfig:
    return SiteConfig.model_validate(
        {
            "name": "hpc",
            "slurm": {"state_dir": str(tmp_path), **slurm},
            "models": [
                {
                    "id": "org/Model-7B",
                    "engine": "simulated",
                    "slurm": {"nodes": 2, "gpus_per_node": 4},
                }
            ],
        }
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("59:48", 3588.0),
        ("1:00:00", 3600.0),
        ("2-03:04:05", 183845.0),
        ("0:05", 5.0),
        ("UNLIMITED", None),
        ("NOT_SET", None),
        ("INVALID", 0.0),
    ],
)
def test_slurm_durations(text, seconds):
    assert parse_slurm_duration(text) == seconds


@pytest.mark.parametrize(
    ("slurm_state", "events", "expected"),
    [
        ("PENDING", {"submitted"}, "queued"),
        ("RUNNING", {"submitted", "started"}, "starting"),
        ("RUNNING", {"submitted", "started", "ray_up", "ready"}, "running"),
        ("RUNNING", {"started", "failed"}, "failed"),
        ("CANCELLED", {"submitted"}, "cancelled"),
        ("COMPLETING", {"started", "stopping"}, "cancelled"),
        ("CANCELLED", {"started", "ready", "stopping"}, "ended"),
        ("TIMEOUT", {"started", "ready"}, "ended"),
        ("TIMEOUT", {"started", "stopping"}, "failed"),
        ("FAILED", {"started", "exited"}, "failed"),
        (None, {"submitted"}, "cancelled"),
        (None, {"started", "exited"}, "failed"),
        (None, {"started", "ready", "exited"}, "ended"),
    ],
)
def test_what_became_of_a_job(slurm_state, events, expected):
    assert _job_state(slurm_state, {name: {"at": 1.0} for name in events}) == expected


def test_a_models_state_follows_its_most_advanced_job():
    def jobs(*states):
        return [JobStatus(job_id=str(i), model="m", state=s) for i, s in enumerate(states)]

    assert slurm_model_state([], ready=False) == "stopped"
    assert slurm_model_state(jobs("ended", "queued"), ready=False) == "queued"
    assert slurm_model_state(jobs("queued", "starting"), ready=False) == "starting"
    assert slurm_model_state(jobs("running"), ready=True) == "running"
    assert slurm_model_state(jobs("ended", "failed"), ready=False) == "failed"
    assert slurm_model_state(jobs("failed", "cancelled"), ready=False) == "stopped"


def test_the_batch_script_carries_the_slurm_section_and_is_valid_bash(tmp_path):
    config = site(
        tmp_path,
        partition="gpu",
        account="proj42",
        qos="high",
        time_limit="2-00:00:00",
        mem="500G",
        extra_sbatch=["--exclusive", "--constraint=a100"],
        setup=["module load cuda/12.4", "source /opt/venv/bin/activate"],
    )
    script = SiteJobs(config).render_script(config.models[0], python="/opt/venv/bin/python")
    for line in [
        "#SBATCH --job-name=first-hpc-org_Model-7B",
        "#SBATCH --nodes=2",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj42",
        "#SBATCH --qos=high",
        "#SBATCH --time=2-00:00:00",
        "#SBATCH --mem=500G",
        "#SBATCH --exclusive",
        "#SBATCH --constraint=a100",
        "module load cuda/12.4",
        "PYTHON=/opt/venv/bin/python",
    ]:
        assert line + "\n" in script, line
    assert script.index("module load") < script.index('"$RAY" start --head')
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    # The job's own site config: the one model, loadable as the job loads it.
    spec = json.loads(script.split("<<'SPEC'", 1)[1].split("\n", 2)[1])
    job_site = SiteConfig.model_validate(spec["site"])
    assert [m.id for m in job_site.models] == ["org/Model-7B"] and job_site.slurm is None


@pytest.mark.parametrize(
    ("slurm", "message"),
    [
        ({"time_limit": "soon"}, "slurm.time_limit"),
        ({"extra_sbatch": ["exclusive"]}, "slurm.extra_sbatch[0]: an sbatch option"),
        ({"mem": "lots"}, "slurm.mem"),
        ({"nodes": 0}, "slurm.nodes"),
        ({"partiton": "gpu"}, "slurm.partiton: unknown field"),
    ],
)
def test_bad_slurm_sections_are_named(slurm, message):
    with pytest.raises(ValidationError) as error:
        SiteConfig.model_validate(
            {"name": "hpc", "slurm": slurm, "models": [{"id": "m", "engine": "simulated"}]}
        )
    from deployments.config_loading import describe_validation_errors

    assert message in describe_validation_errors(error.value)


def test_model_overrides_need_a_slurm_site_and_valid_fields():
    with pytest.raises(ValidationError, match=r"models\[0\]\.slurm: the site has no `slurm`"):
        SiteConfig.model_validate(
            {"name": "s", "models": [{"id": "m", "engine": "simulated", "slurm": {"nodes": 2}}]}
        )
    with pytest.raises(ValidationError, match=r"models\[0\]\.slurm\.nodes"):
        SiteConfig.model_validate(
            {
                "name": "s",
                "slurm": {},
                "models": [{"id": "m", "engine": "simulated", "slurm": {"nodes": "two"}}],
            }
        )
    with pytest.raises(ValidationError, match=r"allocations: min \(2\) is above max \(1\)"):
        SiteConfig.model_validate(
            {
                "name": "s",
                "slurm": {},
                "models": [{"id": "m", "engine": "simulated", "allocations": {"min": 2}}],
            }
        )


def test_inside_its_allocation_even_a_cold_model_keeps_one_replica():
    from deployments.site_config import ModelConfig
    from deployments.slurm import in_allocation

    cold = ModelConfig(id="m", engine="simulated", autoscaling="cold")
    serve = in_allocation(cold).autoscaling.serve_config()
    assert (serve["min_replicas"], serve["initial_replicas"], serve["max_replicas"]) == (1, 1, 1)
    hot = ModelConfig(id="m", engine="simulated", autoscaling={"preset": "hot", "max_replicas": 3})
    assert in_allocation(hot).autoscaling.serve_config()["max_replicas"] == 3
