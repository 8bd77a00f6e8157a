"""Added latency of authentication: the cached path, and a cache miss.

Runs the gateway's own `Authenticator` in this process (what every request
awaits before its route runs):

- cached: a credential checked before (the common case), API key and Globus token;
- miss, API key: the key looked up in the SQLite store;
- miss, Globus: introspection, a dependent token and the caller's groups from the
  fake Globus Auth and Groups on 127.0.0.1 (tests/fakes), over real HTTP through
  globus-sdk. Real Globus adds the network round trips to it.

    python -m bench.auth_bench --out bench/results/auth.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from serve_app.access.auth import build_authenticator
from serve_app.access.policy import Policy
from serve_app.config import AuthConfig, GlobusAuthConfig, PolicyConfig
from serve_app.settings import Settings
from serve_app.store import SqliteStore, new_api_key
from tests.fakes.globus_auth import FakeIdentity, running_fake_globus_auth

CLIENT_ID, SECRET = str(uuid.UUID(int=7)), "bench-secret"
SCOPE = f"https://auth.globus.org/scopes/{CLIENT_ID}/all"
GROUP = str(uuid.uuid4())


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ordered = sorted(samples_s)
    pick = lambda q: ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1000  # noqa: E731
    return {
        "n": len(ordered),
        "p50_ms": round(pick(0.50), 4),
        "p90_ms": round(pick(0.90), 4),
        "p99_ms": round(pick(0.99), 4),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 4),
    }


async def timed(authenticate, header: str) -> float:
    started = time.perf_counter()
    await authenticate(header)
    return time.perf_counter() - started


async def measure(fake, store: SqliteStore, cached_n: int, miss_n: int) -> dict:
    config = AuthConfig(globus=GlobusAuthConfig(scope=SCOPE, max_retries=0))
    policy = Policy(PolicyConfig(groups=[GROUP]))
    settings = Settings(globus_client_id=CLIENT_ID, globus_client_secret=SECRET)
    auth = build_authenticator(config, policy, store, settings).authenticate
    identity = FakeIdentity("bench@uni.example.edu", groups=[GROUP])

    key = new_api_key()
    store.add_key(key, "bench", [GROUP])
    token = f"tok-{uuid.uuid4().hex}"
    fake.issue(token, identity)
    results = {}
    for name, credential in (("cached_api_key", key), ("cached_globus_token", token)):
        await auth(f"Bearer {credential}")  # fills the cache
        results[name] = percentiles(
            [await timed(auth, f"Bearer {credential}") for _ in range(cached_n)]
        )

    misses = []
    for _ in range(miss_n):
        fresh = new_api_key()
        store.add_key(fresh, "bench", [GROUP])
        misses.append(await timed(auth, f"Bearer {fresh}"))
    results["miss_api_key"] = percentiles(misses)

    misses = []
    for _ in range(miss_n):
        fresh = f"tok-{uuid.uuid4().hex}"
        fake.issue(fresh, identity)
        misses.append(await timed(auth, f"Bearer {fresh}"))
    results["miss_globus_token_fake_service"] = percentiles(misses)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/auth.json"))
    parser.add_argument("--cached", type=int, default=20000, help="Cached calls per credential.")
    parser.add_argument("--misses", type=int, default=200, help="Cache misses per kind.")
    args = parser.parse_args()
    with running_fake_globus_auth(CLIENT_ID, SECRET) as fake, tempfile.TemporaryDirectory() as tmp:
        fake.resource_scope = SCOPE
        os.environ["GLOBUS_SDK_SERVICE_URL_AUTH"] = fake.url
        os.environ["GLOBUS_SDK_SERVICE_URL_GROUPS"] = fake.url
        store = SqliteStore(Path(tmp) / "first.db")
        results = asyncio.run(measure(fake, store, args.cached, args.misses))
    report = {
        "what": "added latency of Authenticator.authenticate, in process",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "target": "cached p50 under 0.2 ms",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
