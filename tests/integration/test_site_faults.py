"""A site frozen and then killed under steady mixed load, behind a gateway of its own.

A site of its own (`victim`, a `first site up` like the federation's) and
the federation's east both serve sim-even; a standalone gateway fronts the
two, and eight clients keep sending to it, every other request streamed.
The victim is frozen first (SIGSTOP to every process of it, the Ray
workers included: a machine that stops answering, not one that refuses),
thawed, then killed (SIGKILL to all of them: a machine gone). What must
hold, per request: it ends within 30 s; a stream ends with `[DONE]` or with
one error event, never silently; and only a request in flight on the
victim when it was killed may fail, everything else is answered.
"""

from __future__ import annotations

import copy
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.integration.conftest import SimulatedSite, simulated_model, site_config
from tests.support.processes import start_standalone_gateway
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow
MODEL = "sim-even"  # 20 ms to the first token, 5 ms per next one, on east and the victim
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 60}
CLIENTS = 8
ANSWER_WITHIN_S = 30


@dataclass
class Outcome:
    started: float
    ended: float
    streamed: bool
    site: str | None
    ok: bool
    detail: str


def one_request(http: httpx.Client, streamed: bool) -> Outcome:
    started = time.monotonic()
    site, ok, detail = None, False, ""
    try:
        with http.stream("POST", "/v1/chat/completions", json={**BODY, "stream": streamed}) as r:
            site = r.headers.get("x-first-site")
            if not streamed:
                r.read()
                ok, detail = r.status_code == 200, f"HTTP {r.status_code}: {r.text[:300]}"
            else:
                events = [line for line in r.iter_lines() if line.startswith("data: ")]
                last = events[-1] if events else "(no event)"
                ok = r.status_code == 200 and last == "data: [DONE]"
                ended_properly = last == "data: [DONE]" or '"error"' in last
                detail = f"HTTP {r.status_code}, last event {last[:300]!r}"
                if not ended_properly:
                    detail = "ENDED SILENTLY: " + detail
    except httpx.HTTPError as exc:
        detail = f"transport error: {exc!r}"
    return Outcome(started, time.monotonic(), streamed, site, ok, detail)


class SteadyLoad:
    """CLIENTS threads sending one request after another, alternately streamed."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.outcomes: list[Outcome] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(CLIENTS)]

    def _client(self, index: int) -> None:
        timeout = httpx.Timeout(ANSWER_WITHIN_S + 30, connect=5)
        with httpx.Client(base_url=self.url, timeout=timeout) as http:
            streamed = index % 2 == 0
            while not self.stopping.is_set():
                self.outcomes.append(one_request(http, streamed))
                streamed = not streamed

    def __enter__(self) -> SteadyLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(ANSWER_WITHIN_S + 60)

    def served_by(self, site: str, since: float) -> int:
        return sum(1 for o in list(self.outcomes) if o.site == site and o.started >= since)


@pytest.fixture(scope="module")
def victim(federation, tmp_path_factory) -> Iterator[tuple[SimulatedSite, str]]:
    """The victim site and a gateway in front of it and east (breaker and status as the
    federation's; `read_s` Ray's default, longer than the freeze)."""
    workdir = tmp_path_factory.mktemp("site-faults")
    site = SimulatedSite("victim", workdir, site_config("victim", [simulated_model(MODEL, 20, 5)]))
    config = copy.deepcopy(federation.config)
    config["store"] = {"path": str(workdir / "gateway.db")}
    east = next(s for s in config["sites"] if s["name"] == "east")
    victim_entry = {**east, "name": "victim", "site": site.config}
    config["sites"] = [east, victim_entry]
    config.pop("tribunals")  # over models these two sites do not serve
    for entry in config["sites"]:
        entry["timeouts"] = {"connect_s": 1, "read_s": 60, "first_byte_s": 60}
    gateway = None
    try:
        site.start()
        site.wait_ready()
        gateway, url = start_standalone_gateway(config, workdir / "gateway.yaml", "gateway")
        yield site, url
    finally:
        if gateway is not None:
            gateway.stop()
        site.cleanup()


def wait_for_both(url: str) -> None:
    def both_up() -> bool:
        sites = httpx.get(f"{url}/health", timeout=10).json()["sites"]
        return {s["name"] for s in sites if s["health"] == "up"} >= {"east", "victim"}

    eventually(both_up, 60, "east and the victim up at the gateway", interval_s=0.5)


def check(outcomes: list[Outcome]) -> None:
    slow = [o for o in outcomes if o.ended - o.started > ANSWER_WITHIN_S]
    assert not slow, [(round(o.ended - o.started, 1), o.detail) for o in slow]
    silent = [o.detail for o in outcomes if o.detail.startswith("ENDED SILENTLY")]
    assert not silent, silent


def test_a_frozen_site_fails_nothing_and_a_killed_one_only_what_it_held(victim):
    site, url = victim
    assert site.process is not None
    wait_for_both(url)
    with SteadyLoad(url) as load:
        began = time.monotonic()
        eventually(lambda: load.served_by("victim", began) >= 10, 30, "traffic on the victim")
        # Frozen for 8 s: shorter than read_s and first_byte_s, so what it holds waits.
        assert site.process.signal_tree(signal.SIGSTOP) > 5
        frozen_at = time.monotonic()
        time.sleep(8)
        site.process.signal_tree(signal.SIGCONT)
        thawed_at = time.monotonic()
        eventually(lambda: load.served_by("victim", thawed_at) >= 10, 60, "the victim back")
        killed_at = time.monotonic()
        assert site.process.signal_tree(signal.SIGKILL) > 5
        time.sleep(10)
    outcomes = list(load.outcomes)
    check(outcomes)
    before_kill = [o for o in outcomes if o.ended < killed_at]
    failed = [o.detail for o in before_kill if not o.ok]
    assert not failed, failed  # the freeze, and the minutes around it, failed nothing
    assert any(o.started < frozen_at < o.ended and o.site == "victim" for o in before_kill)

    # Killed: only what the victim held then may fail, and it says which site broke off.
    failed = [o for o in outcomes if not o.ok]
    for outcome in failed:
        assert outcome.started < killed_at < outcome.ended, outcome
        assert "victim" in outcome.detail or outcome.site == "victim", outcome
    assert len(failed) <= CLIENTS
    after = [o for o in outcomes if o.started > killed_at]
    assert len(after) >= 20 and all(o.ok and o.site == "east" for o in after), [
        (o.site, o.detail) for o in after if not (o.ok and o.site == "east")
    ]
