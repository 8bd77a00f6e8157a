"""Placement is a pure choice: these tests pin down who gets the next request."""

from __future__ import annotations

from collections import Counter

from deployments.site_status import ModelStatus, SiteStatus
from serve_app.config import FederationConfig
from serve_app.metrics import GatewayMetrics
from serve_app.routing.placement import Candidate, Placer
from serve_app.routing.site_state import SiteState


def first_choice(placer: Placer, candidates: list[Candidate]) -> str:
    return placer.order(candidates)[0].site


def test_least_loaded_prefers_fewer_requests_per_ready_replica():
    busy = Candidate("a", ready_replicas=1, reported_requests=8)
    roomy = Candidate("b", ready_replicas=4, reported_requests=8)
    assert first_choice(Placer("least-loaded"), [busy, roomy]) == "b"


def test_own_requests_since_the_report_count_as_load():
    # Both reported idle; 'a' has since received 5 of our requests.
    a = Candidate("a", ready_replicas=1, in_flight=5)
    b = Candidate("b", ready_replicas=1, in_flight=0)
    assert first_choice(Placer("least-loaded"), [a, b]) == "b"


def test_own_requests_already_in_the_report_are_not_counted_twice():
    # 'a' reported 4, all of them ours and still running: its load is 4, not 8.
    a = Candidate("a", ready_replicas=1, reported_requests=4, in_flight_at_report=4, in_flight=4)
    assert a.load == 4
    b = Candidate("b", ready_replicas=1, reported_requests=5)
    assert first_choice(Placer("least-loaded"), [a, b]) == "a"


def test_a_burst_between_polls_spreads_over_equal_sites():
    placer = Placer("least-loaded")
    in_flight = {"a": 0, "b": 0}
    for _ in range(10):
        candidates = [Candidate(s, ready_replicas=1, in_flight=n) for s, n in in_flight.items()]
        in_flight[first_choice(placer, candidates)] += 1
    assert in_flight == {"a": 5, "b": 5}


def test_ties_go_to_the_clearly_faster_site():
    fast = Candidate("fast", ready_replicas=1, latency_s=0.1)
    slow = Candidate("slow", ready_replicas=1, latency_s=0.5)
    placer = Placer("least-loaded")
    assert {first_choice(placer, [slow, fast]) for _ in range(6)} == {"fast"}


def test_sites_of_similar_latency_take_turns_one_request_at_a_time():
    a = Candidate("a", ready_replicas=1, latency_s=0.100)
    b = Candidate("b", ready_replicas=1, latency_s=0.110)
    placer = Placer("least-loaded", latency_tolerance=0.25)
    assert Counter(first_choice(placer, [a, b]) for _ in range(10)) == {"a": 5, "b": 5}


def test_a_site_with_a_ready_replica_beats_one_still_starting():
    starting = Candidate("starting", ready_replicas=0)
    ready = Candidate("ready", ready_replicas=1, reported_requests=3)
    assert first_choice(Placer("least-loaded"), [starting, ready]) == "ready"


def test_a_stale_report_still_counts_by_load_and_loses_only_ties():
    idle_stale = Candidate("stale", ready_replicas=8, fresh=False)
    busy_fresh = Candidate("fresh", ready_replicas=1, reported_requests=2)
    assert first_choice(Placer("least-loaded"), [idle_stale, busy_fresh]) == "stale"
    tied_stale = Candidate("stale", ready_replicas=1, in_flight=1, fresh=False)
    tied_fresh = Candidate("fresh", ready_replicas=1, in_flight=1)
    placer = Placer("least-loaded")
    assert {first_choice(placer, [tied_stale, tied_fresh]) for _ in range(4)} == {"fresh"}


def test_higher_priority_wins_even_when_busier_and_the_rest_are_fallbacks():
    primary = Candidate("primary", priority=10, ready_replicas=1, reported_requests=50)
    spare = Candidate("spare", priority=0, ready_replicas=1)
    order = Placer("least-loaded").order([spare, primary])
    assert [c.site for c in order] == ["primary", "spare"]


def test_every_candidate_appears_once_as_a_fallback():
    candidates = [Candidate(name, ready_replicas=1) for name in "abcd"]
    for policy in ("least-loaded", "round-robin", "random"):
        order = Placer(policy, seed=1).order(candidates)
        assert sorted(c.site for c in order) == list("abcd")


def test_round_robin_cycles_through_the_sites():
    candidates = [Candidate(name) for name in "abc"]
    placer = Placer("round-robin")
    assert [first_choice(placer, candidates) for _ in range(6)] == list("abcabc")


def test_random_uses_every_site():
    candidates = [Candidate(name) for name in "abc"]
    placer = Placer("random", seed=7)
    assert set(first_choice(placer, candidates) for _ in range(60)) == {"a", "b", "c"}


def _site_state() -> SiteState:
    federation = FederationConfig.model_validate(
        {
            "sites": [
                {"name": "s", "site": {"name": "s", "models": [{"id": "m", "engine": "simulated"}]}}
            ]
        }
    )
    return SiteState(federation.sites[0], federation, GatewayMetrics({"m"}, enabled=False))


def _report(ongoing: int) -> SiteStatus:
    model = ModelStatus(
        id="m",
        engine="vllm",
        state="running",
        ready=True,
        replicas_running=1,
        ongoing_requests=ongoing,
    )
    return SiteStatus(site="s", reachable=True, collected_at=0.0, base_url="x", models=[model])


def test_our_requests_that_end_while_the_status_call_runs_leave_no_phantom_load():
    state = _site_state()
    state.status_requested()
    for _ in range(3):
        state.request_started("m")
    report = _report(ongoing=3)  # the site counted our three
    for _ in range(3):
        state.request_ended("m")
    state.record_status(report, now=0.0)
    assert state.candidate("m", now=0.0).load == 0


def test_someone_elses_requests_in_the_report_count_as_load():
    state = _site_state()
    state.request_started("m")
    state.status_requested()
    state.record_status(_report(ongoing=3), now=0.0)  # ours plus two others
    assert state.candidate("m", now=0.0).load == 3


def test_a_directly_streamed_model_is_called_at_its_own_route():
    state = _site_state()
    report = _report(0)
    state.record_status(report, now=0.0)
    assert state.endpoint("m") == state.config.url
    report.models[0].route = "/models/m"
    state.record_status(report, now=0.0)
    assert state.endpoint("m") == state.config.url + "/models/m"


def test_a_latency_measured_under_an_old_burst_gives_way_to_the_next_answer():
    state = _site_state()
    state.record_status(_report(0), now=0.0)
    state.record_latency("m", 3.0, now=0.0)  # queued behind a burst
    state.record_latency("m", 0.1, now=0.1)  # back to back: the average moves a fifth
    assert 2.0 < state.candidate("m", now=0.1).latency_s < 3.0
    state.record_latency("m", 0.1, now=25.0)  # idle since: the new answer counts
    assert state.candidate("m", now=25.0).latency_s < 0.2


def test_a_latency_not_measured_again_for_long_is_forgotten_so_the_site_takes_turns_again():
    state = _site_state()
    state.record_latency("m", 3.0, now=0.0)
    state.record_status(_report(0), now=10.0)
    assert state.candidate("m", now=10.0).latency_s == 3.0
    state.record_status(_report(0), now=40.0)
    assert state.candidate("m", now=40.0).latency_s is None
