"""Targets of the OpenAI contract suite: an `openai` client and a model name.

Each target is one way to reach a model: the site directly, the gateway on
Ray Serve in front of it, and the same gateway app standalone under uvicorn.
The same tests run against every target.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import openai
import pytest

from tests.conftest import SIMULATED_MODEL, TINY_CONTEXT, VLLM_MODEL


@dataclass
class Target:
    base_url: str
    model: str
    context_length: int
    api_key: str  # the site takes anything; the gateways need a valid key
    checks_credentials: bool

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=self.api_key, **kwargs)

    def http(self) -> httpx.Client:
        headers = {"authorization": f"Bearer {self.api_key}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=60)


ENGINES = {"vllm": (VLLM_MODEL, TINY_CONTEXT), "simulated": (SIMULATED_MODEL, 2048)}
HOSTS = ("site", "gateway", "standalone")
TARGETS = [f"{host}-{engine}" for host in HOSTS for engine in ENGINES]


@pytest.fixture(params=TARGETS, scope="session")
def target(request) -> Target:
    host, engine = request.param.split("-", 1)
    stack = request.getfixturevalue("stack")
    if host == "site":
        base_url = stack.site.base_url
    elif host == "gateway":
        base_url = stack.gateway_url
    else:
        base_url = request.getfixturevalue("standalone_gateway")
    model, context = ENGINES[engine]
    return Target(base_url, model, context, stack.api_key, checks_credentials=host != "site")


@pytest.fixture(scope="session")
def client(target) -> openai.OpenAI:
    return target.client(max_retries=0, timeout=120)
