"""Bring a site up on Ray (start or join a cluster, deploy, wait until it answers) and down again.

Used by `first site up`, and by the test suite through that command. Ready
means every model that keeps a replica warm has answered a real completion:
`/v1/models` lists a model about half a minute before its engine can serve.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from deployments.errors import FirstError
from deployments.site_config import HAProxyConfig, ModelConfig, RayClusterConfig, SiteConfig

Progress = Callable[[str], None]


class SiteStartError(FirstError):
    """The site could not be brought up; the message says why, in one line."""


def _looks_like_path(source: str) -> bool:
    """A folder rather than a hub id (`name` or `namespace/name`)."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or Path(source).exists()


def check_sources(site: SiteConfig) -> None:
    """Fail early, with the fix, when a model's local weights folder is missing."""
    for index, model in enumerate(site.models):
        if model.engine == "vllm" and model.source and _looks_like_path(model.source):
            path = Path(model.source).expanduser()
            if not (path / "config.json").is_file():
                raise SiteStartError(
                    f"models[{index}].source: no model at {path} (no config.json); build the "
                    f"tiny model with `first model build-tiny --out {model.source}` or point "
                    "source at a model folder or hub id"
                )


def free_ports(count: int) -> list[int]:
    """Ports free now on this node, all different (held open together while chosen)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# Ray starts its workers at nice 15, so that its own daemons stay responsive; on a
# site the workers are the engines, and plain `vllm serve` runs at 0. At 15 the
# engine gets about 1/28 of a contended core's time against any process at 0
# (a load generator, a gateway, another user's job), so it is the workload here.
ENGINE_PRIORITY = {"RAY_worker_niceness": "0"}


def haproxy_environment(config: HAProxyConfig) -> dict[str, str]:
    """The environment that gives a Ray cluster Serve's HAProxy ingress, or keeps the proxy.

    Serve reads these when its controller and proxies start, so they must be
    in the cluster's environment before Ray starts. HAProxy's Prometheus and
    stats listeners default to fixed ports (9101, 8404) on every interface; a
    machine that runs a site and a gateway, or several Slurm jobs, needs its
    own for each cluster. HAProxy's files are already kept per Ray node.
    """
    if not config.enabled:
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    metrics_port, stats_port = free_ports(2)
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(config.metrics_port or metrics_port),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(config.stats_port or stats_port),
        # HAProxy shows a directly streamed request's body to Ray's LLMRouter, so that a
        # prefix-aware model routes on its prompt (without it: load balancing only).
        "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY": "1",
        # The rest of Ray's high-throughput mode (with HAProxy and direct streaming, as
        # Ray documents it): replica to replica over gRPC, request logs buffered and
        # kept in Serve's log files only (not also in stderr), the user code on the
        # replica's own event loop, the garbage collector frozen after start-up.
        # bench/README.md has what it is worth here.
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    }


RAY_AUTH_MODE = "RAY_AUTH_MODE"


def ray_auth_mode() -> str:
    """Ray's token auth for a cluster started here: as set, else off.

    Ray 2.60 turns it on for any cluster it starts once ~/.ray/auth_token exists (and
    any `ray.init()` of a new local cluster writes one); the status calls and the
    gateway reach the dashboard and Serve without a token, so the mode is explicit.
    """
    return os.environ.get(RAY_AUTH_MODE, "disabled")


def cluster_environment(haproxy: HAProxyConfig) -> dict[str, str]:
    """What a Ray cluster that this project starts needs in its environment before
    Ray starts: here (`start_ray`) and in a Slurm job's shell (`slurm_job ports`)."""
    return ENGINE_PRIORITY | haproxy_environment(haproxy) | {RAY_AUTH_MODE: ray_auth_mode()}


def start_ray(cluster: RayClusterConfig) -> None:
    """Join the configured Ray cluster, or start a private one with the configured ports."""
    import ray

    os.environ[RAY_AUTH_MODE] = ray_auth_mode()
    if cluster.address:
        ray.init(address=cluster.address, logging_level="WARNING")
        return
    # The cluster's processes (and so Serve's controller) inherit this one's environment.
    os.environ.update(cluster_environment(cluster.haproxy))
    ray.init(
        address="local",
        num_cpus=cluster.num_cpus,
        num_gpus=cluster.num_gpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=cluster.dashboard_port,
        _metrics_export_port=cluster.metrics_export_port,
        _temp_dir=cluster.temp_dir,
        logging_level="WARNING",
    )


def deploy(site: SiteConfig, cluster: RayClusterConfig) -> None:
    """Start Serve's ingress on the site's address and run the site's applications: each
    directly streamed model's own first (the site's ingress holds their handles).
    `cluster` is the Ray cluster's config (the site's own, or its gateway's when colocated):
    where Serve's logs go."""
    from ray import serve
    from ray.serve._private.constants import RAY_SERVE_ENABLE_HA_PROXY

    from deployments.site_app import build_model_app, build_site_app
    from deployments.site_config import deployment_name

    if site.direct_models() and not RAY_SERVE_ENABLE_HA_PROXY:
        raise SiteStartError(
            "ray.haproxy.enabled, but this process imported Ray Serve without "
            "RAY_SERVE_ENABLE_HA_PROXY=1: set it, or set ray.haproxy.enabled: false"
        )
    logging_config = cluster.serve_logging()
    serve.start(
        http_options={"host": site.serve.host, "port": site.serve.port},
        logging_config=logging_config,
    )
    try:
        direct = {}
        for model in site.direct_models():
            app_name = site.model_app_name(model)
            serve.run(
                build_model_app(model),
                name=app_name,
                route_prefix=site.serve.route_prefix.rstrip("/") + site.model_route(model),
                blocking=False,
                logging_config=logging_config,
            )
            direct[model.id] = serve.get_deployment_handle(deployment_name(model.id), app_name)
        serve.run(
            build_site_app(site, direct),
            name=site.serve.app_name,
            route_prefix=site.serve.route_prefix,
            blocking=False,
            logging_config=logging_config,
        )
    except RuntimeError as error:  # Serve's word for a replica that did not start
        reason = str(error).strip().splitlines()[0]
        raise SiteStartError(f"{reason} (the replica's log is in Ray's session folder)") from error


def warm_models(site: SiteConfig) -> list[ModelConfig]:
    """The models that start with a replica, so they must answer before the site is ready."""
    return [m for m in site.models if m.autoscaling.serve_config().get("initial_replicas", 1) > 0]


def ping_model(client: httpx.Client, model: ModelConfig) -> httpx.Response:
    """A one-token completion (an embedding, for an embedding model): the model answers
    only once its engine runs."""
    if model.embeds:
        return client.post("/v1/embeddings", json={"model": model.id, "input": "ping"})
    return client.post(
        "/v1/completions", json={"model": model.id, "prompt": "ping", "max_tokens": 1}
    )


def poll_until_ok(
    call: Callable[[], httpx.Response], deadline: float, interval_s: float = 1.0
) -> str | None:
    """Call until it answers 200 (None) or `deadline` passes (the last failure, in words)."""
    while True:
        try:
            response = call()
            if response.status_code == 200:
                return None
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        if time.monotonic() > deadline:
            return last
        time.sleep(interval_s)


def wait_until_answering(site: SiteConfig, timeout_s: float, progress: Progress) -> None:
    """Poll each warm model with a one-token completion until it answers 200."""
    deadline = time.monotonic() + timeout_s
    warm = warm_models(site)
    with httpx.Client(base_url=site.base_url, timeout=30.0) as client:
        for model in warm:
            failure = poll_until_ok(lambda m=model: ping_model(client, m), deadline)
            if failure is not None:
                raise SiteStartError(
                    f"model {model.id} did not answer within {timeout_s:.0f} s (last: {failure})"
                )
            progress(f"model {model.id} answers")
    for model in site.models:
        if model not in warm:
            progress(f"model {model.id} is cold: it starts on its first request")


def bring_up(site: SiteConfig, timeout_s: float, progress: Progress) -> None:
    check_sources(site)
    progress("starting Ray" if not site.ray.address else f"joining Ray at {site.ray.address}")
    start_ray(site.ray)
    progress(f"deploying {len(site.models)} model(s): {', '.join(m.id for m in site.models)}")
    deploy(site, site.ray)
    wait_until_answering(site, timeout_s, progress)


def shut_down(cluster: RayClusterConfig, app_names: list[str]) -> None:
    """Remove what was deployed: the apps on a joined cluster, or the whole private cluster."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    if cluster.address:
        for name in app_names:
            serve.delete(name)
        ray.shutdown()
        return
    # The cluster is ours and about to go: no point draining Serve replicas one
    # by one (vLLM engines took over 90 s). Ray's dashboard and runtime-env
    # agents, and Serve's HAProxy (a child of a Ray worker, in a process group
    # of its own), can outlive ray.shutdown() as orphans, so remember every
    # process this one started and reap what is left.
    started = psutil.Process().children(recursive=True)
    ray.shutdown()
    stop_processes(started, grace_s=10.0)


def stop_processes(processes: list[psutil.Process], grace_s: float) -> None:
    """SIGTERM the processes still alive, then SIGKILL those that outlast `grace_s`."""
    alive = [p for p in processes if p.is_running()]
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, still_alive = psutil.wait_procs(alive, timeout=grace_s)
    for process in still_alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
