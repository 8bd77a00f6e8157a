"""Functions the endpoint-engine tests send to the site's endpoint, which imports this module.

It imports nothing but the standard library: the endpoint's environment has
no pytest (tests/integration/test_endpoint_engine.py).
"""

# Globus Compute's result limit (globus_compute_endpoint.engines.helper), and a byte more.
OVER_THE_RESULT_LIMIT = 10 * 1024 * 1024 + 1


def over_the_result_limit() -> str:
    return "x" * OVER_THE_RESULT_LIMIT


def needs_what_the_endpoint_lacks() -> str:
    import vllm  # the gateway's environment has it; the endpoint's does not

    return vllm.__version__
