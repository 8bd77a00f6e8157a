"""The `first` command line, one module per command group (`first --help` lists them)."""

import os

# Serve reads its ingress switch once, when ray.serve is first imported (the
# config models import it), and checks a directly streamed model's application
# against it in this process. HAProxy is the default ingress
# (`ray.haproxy.enabled`); start_ray sets the cluster's own value from the config.
os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")

from serve_app.cli.main import main

__all__ = ["main"]
