"""Monitoring end to end: the gateway's counters against the responses, bounded series, and
every dashboard panel and alert rule evaluated by a real Prometheus (`first monitor up`)
that scraped the running test stack.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitoring import DASHBOARDS_DIR
from tests.conftest import ADMINS, MEMBERS, VLLM_MODEL
from tests.integration.test_batches import chat, request_line, upload, wait_until
from tests.support.processes import FirstProcess, free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow
CHAT = "/v1/chat/completions"
# Dashboard variables as Grafana would fill them with "All" selected.
VARIABLES = {"$model": ".*", "$site": ".*", "$__rate_interval": "1m"}
# Panels that must show data after the traffic below (the others need Slurm, a failing
# site or a rate limit, which this stack does not have).
PANELS_WITH_DATA = {
    "Requests per second by model and site",
    "Request latency p50 / p99 by model",
    "Time to first token p50 / p99 (streams) against the objective",
    "Tokens per second by model and site",
    "Tokens in the last 24 hours by model and site",
    "Requests in flight per site",
    "Sites up and circuit breakers (0 closed, 1 half-open, 2 open)",
    "Refused: authentication and rate limits",
    "Replicas per model (site reports)",
    "Requests queued in Serve per model",
    "Healthy Serve replicas per deployment (Ray)",
    "Requests running and waiting in vLLM engines",
    "vLLM KV cache usage",
    "vLLM tokens per second (prompt and generation)",
    "Hot models and their running replicas",
    "Batches by state",
    "Batch requests per second by outcome",
    "Batch requests in the last 24 hours",
    "Tokens per day, whole federation",
    "Tokens per second by model",
}


def series(url: str) -> dict[tuple, float]:
    """Every sample the gateway's /metrics shows: (name, sorted labels) -> value."""
    text = httpx.get(f"{url}/metrics", timeout=30).raise_for_status().text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: dict[tuple, float], name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and labels.items() <= dict(sample_labels).items()
    )


@pytest.fixture(scope="module")
def prometheus(stack, tmp_path_factory) -> Iterator[str]:
    """`first monitor up` against the stack: Prometheus scraping every second."""
    workdir = tmp_path_factory.mktemp("monitoring")
    args = ["monitor", "up", "--config", str(stack.federation_path), "--port", str(free_port())]
    args += ["--scrape-interval", "1", "--dir", str(workdir)]
    process = FirstProcess.start(args, workdir, "monitor")
    try:
        yield process.wait_ready(90)
    finally:
        process.stop(grace_s=30)


def query_range(prometheus: str, expr: str) -> list:
    """The last five minutes of `expr`, as a dashboard shows it; fails on any PromQL error,
    at once: with pytest.fail, not an assert, which a wait on data would retry."""
    now = time.time()
    answer = httpx.get(
        f"{prometheus}/api/v1/query_range",
        params={"query": expr, "start": now - 300, "end": now, "step": 2},
        timeout=30,
    )
    if answer.status_code != 200:
        pytest.fail(f"{expr}: {answer.text}")
    return answer.json()["data"]["result"]


def test_request_and_token_counters_equal_the_responses(stack):
    client = stack.client(stack.key("metrics-counter"))
    labels = {"model": VLLM_MODEL, "site": "local", "route": CHAT}
    before = series(stack.gateway_url)
    prompt = completion = 0
    for i in range(4):
        answer = client.chat.completions.create(
            model=VLLM_MODEL, messages=[{"role": "user", "content": f"count {i}"}], max_tokens=5
        )
        prompt += answer.usage.prompt_tokens
        completion += answer.usage.completion_tokens
    for i in range(3):
        stream = client.chat.completions.create(
            model=VLLM_MODEL,
            messages=[{"role": "user", "content": f"stream {i}"}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = [chunk.usage for chunk in stream if chunk.usage][-1]
        prompt += usage.prompt_tokens
        completion += usage.completion_tokens

    def grown(after: dict[tuple, float], name: str, **extra: str) -> float:
        return total(after, name, **extra) - total(before, name, **extra)

    def all_counted() -> dict[tuple, float]:
        after = series(stack.gateway_url)
        counted = grown(after, "first_requests_total", **labels, status="200")
        assert counted >= 7, f"{counted} of 7 requests counted"
        return after

    # A stream is counted once the gateway has relayed its end.
    after = eventually(
        all_counted, 15, "the 7 requests counted", interval_s=0.2, retry_on=(AssertionError,)
    )
    assert grown(after, "first_requests_total", **labels, status="200") == 7
    model_site = {"model": VLLM_MODEL, "site": "local"}
    assert grown(after, "first_tokens_total", **model_site, kind="prompt") == prompt
    assert grown(after, "first_tokens_total", **model_site, kind="completion") == completion
    assert grown(after, "first_request_duration_seconds_count", model=VLLM_MODEL, route=CHAT) == 7
    assert grown(after, "first_time_to_first_token_seconds_count", **model_site) == 3


def test_many_users_and_request_ids_add_no_series(stack):
    def traffic(user: str, unknown_model: str) -> None:
        with stack.http(stack.key(user)) as http:
            body = {"model": VLLM_MODEL, "messages": [{"role": "user", "content": "hi"}]}
            headers = {"x-request-id": uuid.uuid4().hex}
            http.post(CHAT, json={**body, "max_tokens": 2}, headers=headers).raise_for_status()
            refused = http.post(CHAT, json={**body, "model": unknown_model}, headers=headers)
            assert refused.status_code == 404

    traffic("series-warm-up", "no-such-model-0")
    before = set(series(stack.gateway_url))
    users = [f"series-user-{i}" for i in range(8)]
    for i, user in enumerate(users):
        traffic(user, f"no-such-model-{uuid.uuid4().hex}-{i}")
    after_text = httpx.get(f"{stack.gateway_url}/metrics", timeout=30).text
    assert set(series(stack.gateway_url)) == before
    assert not any(user in after_text for user in users)
    assert "no-such-model" not in after_text


def _traffic_of_every_kind(stack) -> None:
    """Interactive, streaming, refused and failed requests, and a batch run to the end."""
    client = stack.client(stack.api_key, timeout=60)
    messages = [{"role": "user", "content": "monitoring"}]
    client.chat.completions.create(model=VLLM_MODEL, messages=messages, max_tokens=4)
    list(client.chat.completions.create(model=VLLM_MODEL, messages=messages, stream=True))
    with stack.http("not-a-key") as http:
        assert http.post(CHAT, json={"model": VLLM_MODEL}).status_code == 401
    with stack.http() as http:
        too_long = {"model": VLLM_MODEL, "messages": messages, "max_tokens": 100_000}
        assert http.post(CHAT, json=too_long).status_code == 400
    lines = [request_line(f"mon-{i}", chat(f"batch {i}")) for i in range(3)]
    batch = client.batches.create(
        input_file_id=upload(client, lines), endpoint=CHAT, completion_window="24h"
    )
    done = wait_until(client, batch.id, lambda b: b.status == "completed")
    assert done.request_counts.completed == 3


def _dashboard_queries() -> Iterator[tuple[str, str, dict]]:
    """(dashboard file, panel title, target) of every panel target."""
    for path in sorted(DASHBOARDS_DIR.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                yield path.name, panel["title"], target


def _filled(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def test_every_dashboard_panel_and_alert_rule_evaluates(stack, prometheus):
    _traffic_of_every_kind(stack)
    titles = {title for _, title, target in _dashboard_queries() if "expr" in target}
    assert titles >= PANELS_WITH_DATA, PANELS_WITH_DATA - titles

    def every_panel_has_data() -> bool:
        with_data = {
            title
            for _, title, target in _dashboard_queries()
            if "expr" in target and query_range(prometheus, _filled(target["expr"]))
        }
        assert with_data >= PANELS_WITH_DATA, f"no data: {sorted(PANELS_WITH_DATA - with_data)}"
        return True

    # Until Prometheus has scraped what the traffic left behind.
    eventually(
        every_panel_has_data,
        90,
        "every panel to show data",
        interval_s=2,
        retry_on=(AssertionError,),
    )

    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=30).json()["data"]["groups"]
    evaluated = [rule for group in rules for rule in group["rules"]]
    assert len(evaluated) >= 8
    for rule in evaluated:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"

    admin = stack.key("monitoring-admin", [MEMBERS, ADMINS])
    for name, title, target in _dashboard_queries():
        if "url" in target:  # the usage ledger, through the gateway
            url = target["url"].replace("${gateway}", stack.gateway_url)
            url = url.replace("${__range_s}", "3600")
            answer = httpx.get(url, headers={"authorization": f"Bearer {admin}"}, timeout=30)
            assert answer.status_code == 200, f"{name}: {title}: {answer.text}"
            assert answer.json()[target["root_selector"]], f"{name}: {title}: no rows"


def test_prometheus_finds_the_gateway_and_the_ray_nodes(stack, prometheus):
    def both_up() -> bool:
        targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=30).json()["data"]
        healthy = {t["labels"]["job"] for t in targets["activeTargets"] if t["health"] == "up"}
        assert {"first-gateway", "ray"} <= healthy, targets["activeTargets"]
        return True

    what = "the gateway and the Ray nodes up in Prometheus"
    eventually(both_up, 60, what, interval_s=1, retry_on=(AssertionError,))


def test_the_gateway_lists_each_sites_ray_nodes_for_prometheus(federation):
    def both_sites() -> dict[str, list]:
        groups = httpx.get(f"{federation.gateway_url}/metrics/targets", timeout=30).json()
        by_site = {group["labels"]["site"]: group["targets"] for group in groups}
        assert {"east", "west"} <= by_site.keys(), by_site
        return by_site

    what = "a status report from both sites"
    by_site = eventually(both_sites, 60, what, interval_s=0.5, retry_on=(AssertionError,))
    assert all(by_site[site] for site in ("east", "west"))
    # A site stopped by an earlier test keeps its last targets (Prometheus then sees
    # them down); the ones that are up serve Ray's metrics there.
    sites = httpx.get(f"{federation.gateway_url}/health", timeout=30).json()["sites"]
    up = [s["name"] for s in sites if s["name"] in ("east", "west") and s["health"] == "up"]
    assert up, sites
    for site in up:
        text = httpx.get(f"http://{by_site[site][0]}/metrics", timeout=30).text
        assert "ray_serve_" in text
    # The standalone gateway exports its own metrics from its one process.
    assert "first_site_up" in httpx.get(f"{federation.gateway_url}/metrics", timeout=30).text
