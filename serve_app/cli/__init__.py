"""The `first` command line, one module per command group (`first --help` lists them)."""

import os

# Serve reads its ingress switch once, when ray.serve is first imported (the
# config models import it, before any config is read), and checks a directly
# streamed model's application against it in this process, so this process
# allows HAProxy; the cluster's own value (`ray.haproxy.enabled`, off by
# default) is what start_ray puts in the cluster's environment.
os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")

from serve_app.cli.main import main

__all__ = ["main"]
