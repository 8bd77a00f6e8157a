"""What a Serve replica of ours logs to the terminal that started its Ray cluster.

Ray forwards every replica's stderr to the terminal of the `first ... up`
that started the cluster. Left as they are, a request there prints one line
for each replica it crosses, and the gateway's status polls one line each
every few seconds, which buries the banner, warnings and errors.
"""

from __future__ import annotations

import logging


def quiet_terminal() -> None:
    """Keep the per-request lines off this replica's stderr.

    Serve's access log lines stay in Serve's own files (under the Ray
    session's logs/serve; Serve's `enable_access_log: false` would drop them
    there too); httpx's line per request it makes goes below the level logged.
    """
    for handler in logging.getLogger("ray.serve").handlers:  # Serve's component logger
        if type(handler) is logging.StreamHandler:
            handler.addFilter(_not_an_access_log)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _not_an_access_log(record: logging.LogRecord) -> bool:
    return not getattr(record, "serve_access_log", False)
