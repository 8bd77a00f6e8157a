"""What every `first` command shares: the `--config` option, loading it, messages, serving.

Every failure an operator can fix is a `FirstError` whose message is one
line; the root group (serve_app/cli/main.py) turns it into click's one-line
error and a non-zero exit, so commands let it through instead of catching it.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable

import click

from deployments.config_loading import load_config
from deployments.site_config import SiteConfig

DEFAULT_FEDERATION = "cluster_configs/local-federation.yaml"
# Shell syntax: the examples name the variable, so its value is never printed.
KEY_FROM_ENVIRONMENT = "$FIRST_API_KEY"


def echo(message: str) -> None:
    """Progress and outcomes on stderr; stdout is for what scripts read (ids, READY)."""
    click.echo(f"[first] {message}", err=True)


def config_option(help_text: str, default: str | None = None) -> Callable:
    """The `--config FILE` option: required, or with a default shown in `--help`."""
    return click.option(
        "--config",
        "config_path",
        required=default is None,
        default=default,
        show_default=default is not None,
        type=click.Path(dir_okay=False),
        help=help_text,
    )


def federation_option(help_text: str = "Federation YAML file.") -> Callable:
    """`--config` for commands that work on a federation, by default the embedded one."""
    return config_option(help_text, default=DEFAULT_FEDERATION)


def port_option(field: str) -> Callable:
    """`--port`, overriding `field` of the config."""
    return click.option("--port", type=int, default=None, help=f"Override {field} from the config.")


def start_timeout_option(what: str) -> Callable:
    """`--timeout-s`: how long a `... up` command waits for `what` to answer."""
    return click.option(
        "--timeout-s",
        type=float,
        default=600.0,
        show_default=True,
        help=f"How long to wait for {what} to answer.",
    )


def load_site(path: str, port: int | None = None) -> SiteConfig:
    site = load_config(path, SiteConfig)
    if port is not None:
        site.serve.port = port
    return site


def log_keeper_decisions() -> None:
    """Warnings from everything, and the hot-node keeper's decisions, on stderr."""
    logging.basicConfig(level=logging.WARNING, format="[first] %(asctime)s %(message)s")
    logging.getLogger("first.keeper").setLevel(logging.INFO)


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    """Ctrl-C (SIGINT) and SIGTERM both lead to a clean shutdown."""
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


def serve_until_signal(
    start: Callable[[], None], announce: Callable[[], None], stop: Callable[[], None]
) -> None:
    """`start`, `announce` once ready, serve until Ctrl-C or SIGTERM; `stop` in every case."""
    stop_on_signals()
    started = time.monotonic()
    try:
        start()
        stop_on_signals()  # ray.init replaces the handlers; Ctrl-C must still stop us
        echo(f"ready in {time.monotonic() - started:.1f} s")
        announce()
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        echo("shutting down")
        stop()


def usage_banner(
    headline: str, url: str, models: list[str], where: str = "", api_key: str | None = None
) -> str:
    """What to run against the endpoint that just came up; `where` follows the model list.

    `api_key` is a new key (shown this once) or KEY_FROM_ENVIRONMENT, which the
    examples then name instead of printing its value into a log.
    """
    model = models[0] if models else "MODEL"
    if api_key == KEY_FROM_ENVIRONMENT:
        key_line = "API key: the one in $FIRST_API_KEY\n"
    elif api_key:
        key_line = f"API key: {api_key}   (shown once; to reuse it: export FIRST_API_KEY=<key>)\n"
    else:
        key_line = ""
    auth = f' -H "Authorization: Bearer {api_key}"' if api_key else ""
    return f"""
{headline} is serving an OpenAI-compatible API at {url}/v1
Models: {", ".join(models)}{where}
{key_line}
  curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello"}}], "max_tokens": 16}}'

  python -c "from openai import OpenAI; c = OpenAI(base_url='{url}/v1', api_key='{api_key or "none"}'); \\
print(c.chat.completions.create(model='{model}', messages=[{{'role': 'user', 'content': 'Hello'}}], max_tokens=16).choices[0].message.content)"

Press Ctrl-C to stop.
"""
