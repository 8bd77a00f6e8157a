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

    Serve's access log lines, and its warning for each request a full
    deployment refuses (a flood would print thousands), stay in Serve's own
    files (under the Ray session's logs/serve; Serve's
    `enable_access_log: false` would drop them there too); httpx's line per
    request it makes goes below the level logged.
    """
    for handler in logging.getLogger("ray.serve").handlers:  # Serve's component logger
        if type(handler) is logging.StreamHandler:
            handler.addFilter(_not_per_request)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _not_per_request(record: logging.LogRecord) -> bool:
    if getattr(record, "serve_access_log", False):
        return False
    return not record.getMessage().startswith(BACKPRESSURE_WARNING)


BACKPRESSURE_WARNING = "Request dropped due to backpressure"
