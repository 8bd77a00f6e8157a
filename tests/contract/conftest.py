"""Targets of the OpenAI contract suite: an `openai` client and a model name.

Each target is one way to reach a model. The same tests run against every
target; later issues add the ingress in front of each engine as targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import openai
import pytest

from tests.conftest import SIMULATED_MODEL, VLLM_MODEL


@dataclass
class Target:
    base_url: str
    model: str
    context_length: int

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key="unused", **kwargs)


TARGETS = {
    "site-vllm": (VLLM_MODEL, 256),
    "site-simulated": (SIMULATED_MODEL, 2048),
}


@pytest.fixture(params=list(TARGETS), scope="session")
def target(request, site) -> Target:
    model, context = TARGETS[request.param]
    return Target(base_url=site.base_url, model=model, context_length=context)


@pytest.fixture(scope="session")
def client(target) -> openai.OpenAI:
    return target.client(max_retries=0, timeout=120)
