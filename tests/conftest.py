"""One Ray cluster, one tiny vLLM model and one simulated model for the whole test run.

The stack is started the way `make run` starts it: `first gateway up` with
the local site colocated on the gateway's Ray cluster, on free ports with a
private Ray temp folder, in its own session, and stopped by its own process
(SIGTERM, then its process group). Ready means every model answered a
completion through the gateway, which `first gateway up` checks before it
prints READY. A standalone gateway (uvicorn) fronts the same site.

Both gateways run with the whole access layer on: API keys made with
`first keys create` in a store of their own, Globus Auth tokens checked by a
fake Globus Auth and Groups on 127.0.0.1 (tests/fakes/globus_auth.py),
a policy with a required group and a restricted model, limits, and the
usage ledger. The Serve gateway runs two replicas, so limits are tested
across replicas.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from serve_app.config import load_federation
from tests.fakes.globus_auth import FakeGlobusAuth, FakeIdentity, running_fake_globus_auth
from tests.support.processes import FIRST, FirstProcess, free_port, start_standalone_gateway
from tests.support.waiting import eventually

REPO = Path(__file__).resolve().parent.parent
STACK_START_TIMEOUT_S = 600
# A site's Globus Compute endpoint environment (`make endpoint-venv`), apart from the gateway's.
ENDPOINT_VENV = REPO / ".first/endpoint-venv"
# `make test-haproxy`: the tests on the shared stack and on Slurm, with Serve's fast path
# switched on (HAProxy as the ingress, each vLLM model streamed from its replicas).
HAPROXY = os.environ.get("FIRST_TEST_HAPROXY") == "1"
VLLM_MODEL = "tiny-llama"
SIMULATED_MODEL = "sim-llama"
EMBEDDING_MODEL = "tiny-embed"
DEMO_COLLECTION = {"name": "first-docs", "paths": [str(REPO / "docs")]}
TINY_CONTEXT = 256
__all__ = ["FIRST", "SIMULATED_MODEL", "TINY_CONTEXT", "VLLM_MODEL", "free_port"]

# The access policy both test gateways run with.
GLOBUS_CLIENT_ID = str(uuid.UUID(int=1))
GLOBUS_CLIENT_SECRET = "gateway-secret"
GLOBUS_SCOPE = f"https://auth.globus.org/scopes/{GLOBUS_CLIENT_ID}/inference"
MEMBERS = str(uuid.uuid5(uuid.NAMESPACE_URL, "first-members"))  # may use the gateway
INSIDERS = str(uuid.uuid5(uuid.NAMESPACE_URL, "first-insiders"))  # may also use sim-llama
ADMINS = str(uuid.uuid5(uuid.NAMESPACE_URL, "first-admins"))  # may read everyone's usage
SHARERS = str(uuid.uuid5(uuid.NAMESPACE_URL, "first-sharers"))  # share one prefix cache
ALLOWED_DOMAIN = "uni.example.edu"
OTHER_IDP = str(uuid.uuid5(uuid.NAMESPACE_URL, "other-idp"))
UNI_IDP = str(uuid.uuid5(uuid.NAMESPACE_URL, "uni-idp"))
RESTRICTED_MODEL = SIMULATED_MODEL
STANDALONE_CACHE_S = 3.0
# Users with limits of their own (the defaults are high so other tests never meet them).
BURST_USER, BURST_RATE = "burst-tester", 10.0
CAPPED_USER, CAPPED_TOKENS_PER_MIN = "capped-tester", 40
BUDGET_USER, BUDGET_TOKENS_PER_MIN = "budget-tester", 3000
CROWD_USER, CROWD_IN_FLIGHT = "crowd-tester", 4
AGENT_USER = "agent-tester"  # 40 tokens/min, as CAPPED_USER, for the Responses/Messages APIs


def access_config(store_path: Path) -> dict:
    """The auth, policy, limits, store and ledger sections of the test federations."""
    return {
        "auth": {"globus": {"scope": GLOBUS_SCOPE, "max_retries": 0}},
        "policy": {
            "identity_domains": [ALLOWED_DOMAIN],
            "groups": [MEMBERS],
            "models": {RESTRICTED_MODEL: {"groups": [INSIDERS]}},
            "admin_groups": [ADMINS],
        },
        "limits": {
            "requests_per_s": 1000,
            "tokens_per_min": 10_000_000,
            "model_tokens_per_min": 10_000_000,
            "users": {
                BURST_USER: {"requests_per_s": BURST_RATE},
                CAPPED_USER: {"tokens_per_min": CAPPED_TOKENS_PER_MIN},
                BUDGET_USER: {"tokens_per_min": BUDGET_TOKENS_PER_MIN},
                CROWD_USER: {"max_in_flight": CROWD_IN_FLIGHT},
                AGENT_USER: {"tokens_per_min": CAPPED_TOKENS_PER_MIN},
            },
        },
        "cache_isolation": {"shared_groups": [SHARERS]},
        "store": {"path": str(store_path)},
        "ledger": {"flush_interval_s": 0.2},
    }


def globus_environment(auth: FakeGlobusAuth) -> dict[str, str]:
    """What points a gateway's globus-sdk at the fake, and its client credentials."""
    return {
        "FIRST_GLOBUS_CLIENT_ID": GLOBUS_CLIENT_ID,
        "FIRST_GLOBUS_CLIENT_SECRET": GLOBUS_CLIENT_SECRET,
        "GLOBUS_SDK_SERVICE_URL_AUTH": auth.url,
        "GLOBUS_SDK_SERVICE_URL_GROUPS": auth.url,
    }


def globus_user(name: str, groups: list[str], idp: str = UNI_IDP) -> FakeIdentity:
    return FakeIdentity(username=f"{name}@{ALLOWED_DOMAIN}", identity_provider=idp, groups=groups)


def make_key(federation_path: Path, user: str, groups: list[str]) -> str:
    """`first keys create`, as an operator runs it; the key is its only stdout line."""
    result = subprocess.run(
        [
            FIRST,
            "keys",
            "create",
            "--config",
            str(federation_path),
            "--user",
            user,
            "--groups",
            ",".join(groups),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.strip()


def records_of(store_path: Path, user: str, count: int, timeout_s: float = 10) -> list:
    """The user's usage records once `count` (one or more) have been written (they are
    written in batches)."""
    from serve_app.store import SqliteStore

    store = SqliteStore(store_path)

    def written() -> list:
        records = store.usage(user)
        assert len(records) >= count, f"{len(records)} of {count} records written"
        return records

    return eventually(
        written,
        timeout_s,
        f"{count} usage records of {user}",
        interval_s=0.2,
        retry_on=(AssertionError,),
    )


@pytest.fixture(scope="session")
def globus_auth() -> Iterator[FakeGlobusAuth]:
    """The fake Globus Auth and Groups every test gateway checks tokens with."""
    with running_fake_globus_auth(GLOBUS_CLIENT_ID, GLOBUS_CLIENT_SECRET) as auth:
        auth.resource_scope = GLOBUS_SCOPE
        yield auth


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests on the development Slurm run first, tests on the simulated federation last.

    The Slurm tests start Ray clusters and vLLM engines in jobs, several at
    once at a handover; they run before the shared stack is up, and their jobs
    are gone before it starts. The federation's three Ray clusters stay up from
    its first test to the end of the run and load the 2 cores; the tests that
    measure rates and timings (limits, caching, disconnects) must run on a
    machine that is not also busy with them.
    """

    def group(item: pytest.Item) -> tuple[bool, bool]:
        names = getattr(item, "fixturenames", ())
        return "federation" in names, "dev_slurm" not in names

    if HAPROXY:  # the contract suite's `target` asks for the stack when it runs
        on_stack = {"stack", "target", "dev_slurm"}
        others = [item for item in items if not on_stack & set(getattr(item, "fixturenames", ()))]
        config.hook.pytest_deselected(items=others)
        items[:] = [item for item in items if item not in others]
    items.sort(key=group)


def private_ray_temp() -> Path:
    # Ray's socket paths must stay short: a folder directly under /tmp.
    return Path(tempfile.mkdtemp(prefix="first-ray-", dir="/tmp"))


@dataclass
class RunningSite:
    base_url: str
    config_path: Path


@dataclass
class RunningStack:
    gateway_url: str
    site: RunningSite
    federation_path: Path
    process: FirstProcess
    api_key: str  # a member of every group: may use every model
    workdir: Path
    ray_temp: Path

    @property
    def store_path(self) -> Path:
        return self.workdir / "first.db"

    def key(self, user: str, groups: list[str] | None = None) -> str:
        """A new API key in the stack's store (both gateways share it)."""
        return make_key(self.federation_path, user, [MEMBERS] if groups is None else groups)

    def client(self, api_key: str, url: str | None = None, **kwargs) -> openai.OpenAI:
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=f"{url or self.gateway_url}/v1", api_key=api_key, **kwargs)

    def http(self, api_key: str | None = None, url: str | None = None) -> httpx.Client:
        key = api_key or self.api_key
        return httpx.Client(
            base_url=url or self.gateway_url,
            headers={"authorization": f"Bearer {key}"},
            timeout=60,
        )


def local_site_for_tests(model_dir: Path, embedding_dir: Path | None = None) -> dict:
    """The shipped local site, with the models built for this run; without
    `embedding_dir`, without the embedding model."""
    site = yaml.safe_load((REPO / "cluster_configs" / "local.yaml").read_text())
    site["models"][0]["source"] = str(model_dir)
    embedder = next(m for m in site["models"] if m["id"] == EMBEDDING_MODEL)
    if embedding_dir is None:
        site["models"].remove(embedder)
    else:
        embedder["source"] = str(embedding_dir)
    # Every token in its own chunk, so streaming tests see several chunks.
    for model in site["models"]:
        model["stream_interval_ms"] = 0
    # Batches keep fewer requests in flight than a replica's autoscaling target, so
    # the batch tests do not scale the shared model up under the tests that follow.
    site["batch"] = {"concurrency": 16}
    return site


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    import subprocess

    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    subprocess.run([FIRST, "model", "build-tiny", "--out", str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def tiny_embedding_dir(tmp_path_factory) -> Path:
    import subprocess

    out = tmp_path_factory.mktemp("models") / "tiny-embed"
    subprocess.run([FIRST, "model", "build-tiny", "--embedding", "--out", str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def stack(
    tiny_model_dir, tiny_embedding_dir, tmp_path_factory, globus_auth
) -> Iterator[RunningStack]:
    """`first gateway up` on the shipped federation, with the local site colocated."""
    ray_temp = private_ray_temp()
    workdir = tmp_path_factory.mktemp("stack")
    federation = yaml.safe_load((REPO / "cluster_configs" / "local-federation.yaml").read_text())
    federation.update(access_config(workdir / "first.db"))
    federation["gateway"]["port"] = free_port()
    federation["gateway"]["autoscaling"] = {"min_replicas": 2, "max_replicas": 2}
    federation["gateway"]["ray"].update(
        dashboard_port=free_port(),
        metrics_export_port=free_port(),
        temp_dir=str(ray_temp),
        serve_logs_dir=str(workdir / "serve-logs"),  # not the checkout's .first/
    )
    if HAPROXY:
        federation["gateway"]["ray"]["haproxy"] = {"enabled": True}
    federation["sites"][0]["site"] = local_site_for_tests(tiny_model_dir, tiny_embedding_dir)
    # The demo collection of the project's docs, kept in the workdir.
    federation["rag"].update(path=str(workdir / "rag"), collections=[DEMO_COLLECTION])
    # Every replica polls the site, and each status call makes the site's Ray metrics
    # agent render its whole metrics text (1-2 MB once the suite has run a while, 0.3-0.5 s
    # of CPU): at 2 s for two replicas and 1 s for the standalone gateway it kept most of
    # a core busy and starved the limits test. The local site never goes down in these
    # tests, so a slow poll loses nothing.
    federation["sites"][0]["channel"]["poll_interval_s"] = 3.0
    federation_path = workdir / "federation.yaml"
    federation_path.write_text(yaml.safe_dump(federation))
    # The colocated site as the gateway runs it, for `first site status` and direct calls.
    site_config = load_federation(federation_path).sites[0].site_config
    site_path = workdir / "site.yaml"
    site_path.write_text(yaml.safe_dump(site_config.model_dump(mode="json")))
    api_key = make_key(federation_path, "contract-tester", [MEMBERS, INSIDERS])
    process = FirstProcess.start(
        ["gateway", "up", "--config", str(federation_path), "--with-key", "contract-tester"],
        workdir,
        "stack",
        env={**globus_environment(globus_auth), "FIRST_API_KEY": api_key},
    )
    try:
        url = process.wait_ready(STACK_START_TIMEOUT_S)
        site = RunningSite(base_url=site_config.base_url, config_path=site_path)
        yield RunningStack(url, site, federation_path, process, api_key, workdir, ray_temp)
    finally:
        process.stop()
        shutil.rmtree(ray_temp, ignore_errors=True)


@pytest.fixture(scope="session")
def site(stack) -> RunningSite:
    return stack.site


def start_standalone(
    stack: RunningStack, workdir: Path, globus_auth: FakeGlobusAuth, **sections
) -> tuple[FirstProcess, str]:
    """`first gateway up --standalone` in front of the stack's site, with the stack's
    access config and store, `sections` replacing top-level sections; ready: it and its
    URL. Its config is WORKDIR/federation.yaml."""
    site = yaml.safe_load(stack.site.config_path.read_text())
    federation = {
        **access_config(stack.store_path),
        "sites": [
            {
                "name": "local",
                "site": site,
                "base_url": stack.site.base_url,
                # As slow as the stack's replicas' polls, for the same reason (`stack`).
                "channel": {"kind": "local", "poll_interval_s": 3.0},
            }
        ],
        **sections,
    }
    return start_standalone_gateway(
        federation,
        workdir / "federation.yaml",
        "standalone",
        env=globus_environment(globus_auth),
        timeout_s=60,
    )


@pytest.fixture(scope="session")
def standalone_gateway(stack, tmp_path_factory, globus_auth) -> Iterator[str]:
    """The standalone gateway (uvicorn) in front of the stack's site, reached over HTTP.

    Same policy and store as the stack; one process, so one credential cache,
    kept short here so the cache tests can watch entries expire.
    """
    auth = {**access_config(stack.store_path)["auth"]}
    auth["cache"] = {"max_s": STANDALONE_CACHE_S, "failure_s": 1}
    workdir = tmp_path_factory.mktemp("standalone")
    process, url = start_standalone(stack, workdir, globus_auth, auth=auth)
    try:
        yield url
    finally:
        process.stop()


@pytest.fixture(scope="session")
def dev_slurm(tmp_path_factory) -> Iterator[Path]:
    """A private single-node Slurm (scripts/dev-slurm.sh), stopped at the end of the run.

    Its SLURM_CONF goes into this process's environment, so the gateways and
    `first` commands the tests start submit to it.
    """
    import os

    root = Path(tempfile.mkdtemp(prefix="first-slurm-", dir="/tmp"))
    script = str(REPO / "scripts" / "dev-slurm.sh")
    started = subprocess.run(
        [script, "start", str(root)], capture_output=True, text=True, timeout=120, check=False
    )
    if started.returncode != 0:
        subprocess.run([script, "stop", str(root)], timeout=60, check=False)
        pytest.fail(f"dev Slurm did not start: {started.stderr[-2000:]}")
    conf = started.stdout.strip().split("=", 1)[1]
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    try:
        yield root
    finally:
        subprocess.run([script, "stop", str(root)], timeout=120, check=False)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        shutil.rmtree(root, ignore_errors=True)
