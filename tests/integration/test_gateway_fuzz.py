"""Property-based fuzzing of the gateway from its own /openapi.json (schemathesis).

Whatever a client sends, the gateway answers with a status its schema
documents and never a 5xx: malformed input stops at the gateway or gets a
4xx from the site, and never makes a site fail.
Each operation gets valid and invalid inputs generated from the live
schema, sent over real HTTP to the federation's gateway; the site behind it
is a zero-delay simulated model, so valid requests are cheap.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from serve_app.app import build_app
from serve_app.config import FederationConfig

pytestmark = pytest.mark.slow
EXAMPLES_PER_MODE = 100  # 3,003 cases in all (an operation without inputs has one)


def _fuzz_cases() -> list[tuple[str, GenerationMode]]:
    """(operation, mode) pairs, from the same app code the running gateway serves.

    Negative (invalid) inputs only for operations that take any input at all.
    """
    site = {"name": "s", "models": [{"id": "m", "engine": "simulated"}]}
    app = build_app(FederationConfig.model_validate({"sites": [{"name": "s", "site": site}]}))
    cases = []
    for result in schemathesis.openapi.from_dict(app.openapi()).get_all_operations():
        operation = result.ok()
        cases.append((operation.label, GenerationMode.POSITIVE))
        # A path parameter that is any string has no invalid values.
        takes_input = any(p.location != "path" for p in operation.iter_parameters())
        if takes_input or len(operation.body):
            cases.append((operation.label, GenerationMode.NEGATIVE))
    return cases


@pytest.fixture(scope="module")
def live_schema(federation):
    spec = httpx.get(f"{federation.gateway_url}/openapi.json", timeout=10).json()
    return schemathesis.openapi.from_dict(spec)


def _steer(case) -> None:
    """Random model names only ever reach "unknown model": send half the bodies to a real
    model, and pinned requests to a real site, so fuzzed fields get past the lookups."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("model"), str) and len(body["model"]) % 2:
        body["model"] = "sim-fast"
    if case.path_parameters and "site" in case.path_parameters:
        case.path_parameters["site"] = "east"


@pytest.mark.parametrize(("label", "mode"), _fuzz_cases(), ids=lambda v: getattr(v, "value", v))
def test_fuzzed_requests_get_documented_statuses_and_no_gateway_errors(
    live_schema, federation, label, mode
):
    (operation,) = [
        result.ok() for result in live_schema.get_all_operations() if result.ok().label == label
    ]

    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case) -> None:
        _steer(case)
        response = case.call(base_url=federation.gateway_url, timeout=30)
        # The fuzzed models' site is up: any 5xx (the gateway's own, or a site's failure
        # passed on as 502) means malformed input got through.
        case.validate_response(response, checks=[status_code_conformance, not_a_server_error])

    check()
