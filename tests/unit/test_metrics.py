"""The gateway's metrics: bounded labels, and one sum over every Serve process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from serve_app.metrics import REQUESTS, GatewayMetrics, exposition
from serve_app.usage.metering import Meter

ROUTE = "/v1/chat/completions"


def _value(name: str, labels: dict[str, str], text: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def test_a_model_nobody_serves_is_counted_as_other():
    metrics = GatewayMetrics({"tiny"})
    before = REQUESTS.labels("other", "none", ROUTE, "404")._value.get()
    for name in ("made-up-1", "made-up-2", "made-up-3"):
        meter = Meter(name)
        meter.status = 404
        metrics.request_done(meter, ROUTE, started=0.0)
    text = exposition()[0].decode()
    assert REQUESTS.labels("other", "none", ROUTE, "404")._value.get() == before + 3
    assert "made-up" not in text


def test_disabled_metrics_record_nothing():
    metrics = GatewayMetrics({"tiny"}, enabled=False)
    before = REQUESTS.labels("tiny", "east", ROUTE, "200")._value.get()
    meter = Meter("tiny", site="east")
    meter.status = 200
    metrics.request_done(meter, ROUTE, started=0.0)
    assert REQUESTS.labels("tiny", "east", ROUTE, "200")._value.get() == before


SERVE_PROCESS = textwrap.dedent(
    """
    import sys
    from serve_app.usage.metering import Meter
    from serve_app.metrics import GatewayMetrics
    metrics = GatewayMetrics({"tiny"})
    for _ in range(int(sys.argv[1])):
        meter = Meter("tiny", site="east", prompt_tokens=7, completion_tokens=5)
        meter.status = 200
        metrics.request_done(meter, "/v1/chat/completions", started=0.0)
    metrics.in_flight("east", int(sys.argv[2]))
    """
)


def _in_process(directory: Path, *args: str) -> str:
    """Run `code` as another gateway process writing to `directory`; its stdout."""
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    done = subprocess.run(
        [sys.executable, "-c", *args], env=environment, capture_output=True, text=True, check=True
    )
    return done.stdout


def test_a_scrape_adds_up_every_process_and_drops_the_gauges_of_dead_ones(tmp_path):
    _in_process(tmp_path, SERVE_PROCESS, "3", "2")
    _in_process(tmp_path, SERVE_PROCESS, "4", "1")
    scrape = textwrap.dedent(
        """
        from serve_app.metrics import exposition, forget_dead_processes
        print(exposition()[0].decode())
        forget_dead_processes()
        print("-- after --")
        print(exposition()[0].decode())
        """
    )
    before, after = _in_process(tmp_path, scrape).split("-- after --")
    labels = {"model": "tiny", "site": "east", "route": ROUTE, "status": "200"}
    assert _value("first_requests_total", labels, before) == 7
    assert _value("first_tokens_total", {"model": "tiny", "kind": "prompt"}, before) == 49
    assert _value("first_tokens_total", {"model": "tiny", "kind": "completion"}, before) == 35
    # Both writers have exited: their requests stay counted, their in-flight gauges go.
    assert _value("first_site_requests_in_flight", {"site": "east"}, before) == 3
    assert _value("first_requests_total", labels, after) == 7
    assert _value("first_site_requests_in_flight", {"site": "east"}, after) in (None, 0)
