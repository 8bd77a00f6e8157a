"""Serve's fast path on a site: HAProxy as the ingress, each vLLM model streamed from an
application of its own (`ray.haproxy.enabled`, `serve.direct_streaming`).

A site of its own (the tiny vLLM model and a simulated one), started with
`first site up`: HAProxy, not Serve's Python proxy, listens on the site's
port; the status gives the vLLM model a route of its own where vLLM's OpenAI
app (the one `vllm serve` runs) streams from the replica; the multi-model
`/v1` still serves both models; and stopping the site stops HAProxy, which
runs outside the command's process group.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import httpx
import openai
import psutil
import pytest
import yaml

from deployments.config_loading import load_config
from deployments.site_config import SiteConfig
from tests.conftest import (
    FIRST,
    SIMULATED_MODEL,
    VLLM_MODEL,
    free_port,
    local_site_for_tests,
    private_ray_temp,
)
from tests.support.processes import FirstProcess, listener_on

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fast_site(tiny_model_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fast-path")
    ray_temp = private_ray_temp()
    site = local_site_for_tests(tiny_model_dir)
    site["ray"].update(
        dashboard_port=free_port(),
        metrics_export_port=free_port(),
        temp_dir=str(ray_temp),
        serve_logs_dir=str(workdir / "serve-logs"),
        haproxy={"enabled": True},
    )
    site["serve"]["port"] = free_port()
    path = workdir / "site.yaml"
    path.write_text(yaml.safe_dump(site))
    process = FirstProcess.start(["site", "up", "--config", str(path)], workdir, "site")
    try:
        yield process, process.wait_ready(300), path
    finally:
        process.stop()
        shutil.rmtree(ray_temp, ignore_errors=True)


def test_haproxy_is_the_sites_ingress(fast_site):
    process, url, _ = fast_site
    ingress = listener_on(int(url.rsplit(":", 1)[1]))
    assert ingress is not None and ingress.name() == "haproxy", ingress
    assert os.getpgid(ingress.pid) != process.process.pid  # outside the command's group


def test_a_vllm_model_streams_from_an_application_of_its_own(fast_site):
    _, url, path = fast_site
    result = subprocess.run(
        [FIRST, "site", "status", "--config", str(path)], capture_output=True, text=True
    )
    status = json.loads(result.stdout)
    assert status["app_status"] == "RUNNING", status
    routes = {model["id"]: model["route"] for model in status["models"]}
    assert routes[SIMULATED_MODEL] == "" and routes[VLLM_MODEL].startswith("/models/"), routes
    own = openai.OpenAI(base_url=f"{url}{routes[VLLM_MODEL]}/v1", api_key="none", max_retries=0)
    assert [(m.id, m.owned_by) for m in own.models.list().data] == [(VLLM_MODEL, "vllm")]
    stream = own.chat.completions.create(
        model=VLLM_MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 4
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    with pytest.raises(openai.NotFoundError):
        own.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def test_haproxy_balances_a_model_that_is_not_prefix_aware_itself(fast_site):
    """No Ray LLMRouter for HAProxy to ask on every request: the model's application is
    its LLMServer deployment alone."""
    _, _, path = fast_site
    site = load_config(path, SiteConfig)
    answer = httpx.get(f"{site.dashboard_url}/api/serve/applications/", timeout=30)
    applications = answer.raise_for_status().json()["applications"]
    own = applications[site.model_app_name(site.model(VLLM_MODEL))]
    assert sorted(own["deployments"]) == [f"LLMServer:{VLLM_MODEL}"], own["deployments"]


def test_the_multi_model_endpoint_still_serves_every_model(fast_site):
    _, url, _ = fast_site
    shared = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    assert {m.id for m in shared.models.list().data} == {VLLM_MODEL, SIMULATED_MODEL}
    for model in (VLLM_MODEL, SIMULATED_MODEL):
        answer = shared.completions.create(model=model, prompt="hi", max_tokens=2)
        assert answer.usage.completion_tokens == 2


def test_stopping_the_site_stops_haproxy(fast_site):
    process, url, _ = fast_site
    ingress = listener_on(int(url.rsplit(":", 1)[1]))
    assert ingress is not None
    process.stop()
    assert not ingress.is_running() or ingress.status() == psutil.STATUS_ZOMBIE
