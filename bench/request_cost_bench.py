"""Request cost benchmark: what token reservation and cache salting add to a request.

The issue's target: under 0.2 ms p50 added at concurrency 1 on the
standalone gateway. Two standalone gateways, identical but for these, in
front of the fixed backend (`bench/fixed_backend.py`, so the gateway's own
work is what shows), measured in interleaved rounds with wrk:

- `bare`: `limits: null` and `cache_isolation.enabled: false`;
- `reserve-and-salt`: limits on (high enough that nothing is refused), so
  every request reserves its tokens and a place in flight at admission and
  settles them at the end, and every request is salted for its caller.

The added latency is the median, over rounds, of the difference of the two
p50s in the same round. `python -m bench.request_cost_bench`; part of
`make bench-full`.
"""

from __future__ import annotations

import argparse
import statistics

from bench.gateway_bench import log
from bench.metrics_bench import gateways_on_a_fixed_backend, measure, write_result

TARGET_MS = 0.2
VARIANTS: dict[str, tuple[dict, dict[str, str]]] = {
    "bare": ({"limits": None, "cache_isolation": {"enabled": False}}, {}),
    "reserve-and-salt": (
        {
            "limits": {"requests_per_s": 1e6, "tokens_per_min": 10**12},
            "cache_isolation": {"enabled": True},
        },
        {},
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/request_cost.json")
    parser.add_argument("--duration-s", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1])
    args = parser.parse_args()
    with gateways_on_a_fixed_backend("request-cost", VARIANTS) as (workdir, targets):
        log("both gateways answer; measuring")
        runs = measure(args, targets, workdir)
    added = {}
    for concurrency in args.concurrency:
        pairs = zip(
            runs[("reserve-and-salt", concurrency)], runs[("bare", concurrency)], strict=True
        )
        per_round = [on["p50_ms"] - off["p50_ms"] for on, off in pairs]
        added[f"c{concurrency}"] = {
            "median_ms": round(statistics.median(per_round), 3),
            "rounds_ms": [round(r, 3) for r in per_round],
        }
    write_result(
        args,
        runs,
        what="p50 added by token reservation and cache salting, standalone gateway, fixed backend",
        target_ms=TARGET_MS,
        variants={name: changes for name, (changes, _) in VARIANTS.items()},
        added_p50_ms=added,
    )
    for name, value in added.items():
        log(f"{name}: {value['median_ms']:+.3f} ms p50 added (rounds {value['rounds_ms']})")


if __name__ == "__main__":
    main()
