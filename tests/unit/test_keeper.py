"""The hot-node keeper's rules, one at a time, on status reports written out by hand."""

from __future__ import annotations

from autoscaling.config import KeeperConfig
from autoscaling.keeper import Decision, ModelMemory, Rules, decide
from deployments.site_config import ModelConfig
from deployments.site_status import JobStatus, ModelStatus

HANDOVER_S = 300.0
KEEPER = KeeperConfig(drain_s=30, scale_up_queue=8, scale_up_window_s=60, idle_window_s=900)
RULES = Rules(KEEPER, HANDOVER_S)


def model(preset: str = "hot", **allocations) -> ModelConfig:
    return ModelConfig(id="m", engine="simulated", autoscaling=preset, allocations=allocations)


def job(job_id: str, state: str = "running", left: float | None = 3000.0) -> JobStatus:
    return JobStatus(job_id=job_id, model="m", state=state, time_left_s=left)


def status(*jobs: JobStatus, ongoing: float = 0, queued: float = 0) -> ModelStatus:
    return ModelStatus(
        id="m",
        engine="simulated",
        state="running",
        ready=True,
        jobs=list(jobs),
        ongoing_requests=ongoing,
        queued_requests=queued,
    )


def run(config: ModelConfig, report: ModelStatus, memory: ModelMemory, now: float):
    return decide(config, report, RULES, memory, now)


def test_a_hot_model_with_no_job_gets_its_minimum():
    (decision,) = run(model("hot"), status(), ModelMemory(last_busy=0.0), now=1.0)
    assert decision == Decision("launch", "m", "minimum", decision.detail, at_least=1)


def test_a_cold_model_with_no_job_is_left_alone():
    assert run(model("cold"), status(), ModelMemory(last_busy=0.0), now=1.0) == []


def test_a_job_near_its_wall_time_gets_a_replacement_once():
    memory = ModelMemory(last_busy=0.0)
    (decision,) = run(model(), status(job("1", left=200)), memory, now=1.0)
    assert (decision.action, decision.reason, decision.at_least) == ("launch", "handover", 1)
    assert "job 1 has 200 s" in decision.detail
    # Once the replacement is queued, nothing more is submitted.
    assert run(model(), status(job("1", left=190), job("2", "queued")), memory, now=5.0) == []


def test_the_old_job_is_released_drain_s_after_its_replacement_answers():
    memory = ModelMemory(last_busy=0.0)
    report = status(job("1", left=150), job("2", left=3500))
    assert run(model(), report, memory, now=10.0) == []
    assert run(model(), report, memory, now=39.0) == []
    (decision,) = run(model(), report, memory, now=40.0)
    assert (decision.action, decision.reason, decision.job_id) == ("stop", "superseded", "1")


def test_an_idle_cold_model_is_not_replaced_at_its_wall_time():
    memory = ModelMemory(last_busy=0.0)
    assert run(model("cold"), status(job("1", left=200)), memory, now=1000.0) == []


def test_a_long_queue_adds_an_allocation_after_the_window_up_to_max():
    memory = ModelMemory(last_busy=0.0)
    busy = status(job("1"), queued=20)
    assert run(model(max=2), busy, memory, now=0.0) == []
    assert run(model(max=2), busy, memory, now=59.0) == []
    (decision,) = run(model(max=2), busy, memory, now=60.0)
    assert (decision.action, decision.reason, decision.at_least) == ("launch", "queue", 2)
    # At the maximum, a queue adds nothing.
    full = status(job("1"), job("2"), queued=40)
    assert run(model(max=2), full, ModelMemory(last_busy=0.0), now=0.0) == []
    assert run(model(max=2), full, ModelMemory(last_busy=0.0, queue_high_since=0.0), now=99) == []


def test_a_short_burst_of_queueing_adds_nothing():
    memory = ModelMemory(last_busy=0.0)
    assert run(model(max=2), status(job("1"), queued=20), memory, now=0.0) == []
    assert run(model(max=2), status(job("1"), queued=0), memory, now=30.0) == []
    assert run(model(max=2), status(job("1"), queued=20), memory, now=61.0) == []


def test_idle_allocations_are_released_but_never_below_the_minimum():
    memory = ModelMemory(last_busy=0.0)
    two = status(job("1", left=3000), job("2", left=2000))
    assert run(model(max=2), two, memory, now=899.0) == []
    (decision,) = run(model(max=2), two, memory, now=900.0)
    assert (decision.action, decision.reason, decision.job_id) == ("stop", "idle", "2")
    one = status(job("1"))
    assert run(model(max=2), one, ModelMemory(last_busy=0.0), now=5000.0) == []
    # A cold model goes down to nothing.
    (decision,) = run(model("cold"), one, ModelMemory(last_busy=0.0), now=5000.0)
    assert decision.action == "stop"


def test_requests_keep_a_model_busy():
    memory = ModelMemory(last_busy=0.0)
    assert run(model("cold"), status(job("1"), ongoing=1), memory, now=5000.0) == []
    assert memory.last_busy == 5000.0


def test_a_model_whose_last_jobs_died_while_starting_gets_no_more_jobs():
    failed = [JobStatus(job_id=str(i), model="m", state="failed") for i in (1, 2)]
    memory = ModelMemory(last_busy=0.0)
    assert run(model("hot"), status(*failed), memory, now=1.0) == []
    # One success after the failures clears the way again.
    recovered = [*failed, JobStatus(job_id="3", model="m", state="ended")]
    (decision,) = run(model("hot"), status(*recovered), memory, now=2.0)
    assert decision.reason == "minimum"


def test_a_replacement_that_started_too_slowly_still_takes_over_from_the_older_job():
    memory = ModelMemory(last_busy=0.0)
    # Both within the handover window: the one with more time left is the successor.
    report = status(job("1", left=20), job("2", left=200))
    run(model(), report, memory, now=0.0)
    decisions = run(model(), report, memory, now=30.0)
    stops = [d for d in decisions if d.action == "stop"]
    assert [(d.reason, d.job_id) for d in stops] == [("superseded", "1")]
