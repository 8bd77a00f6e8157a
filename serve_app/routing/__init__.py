"""Where a request goes and how it gets there.

- `federation`: what this replica knows of its sites, and the sites to try
  for a request, best first (starting a model in Slurm when none runs it);
- `site_state`: one site's last report, health and our requests there, and
  the poller that keeps it current;
- `placement` (pure) and `prefix_affinity`: choosing among the sites;
- `circuit_breaker`: stop sending to a site that keeps failing;
- `cold_start`: one Slurm job for a model that runs nowhere;
- `forwarding`: the request to a site, retried before its first byte;
- `control_channel`: how the gateway runs site functions at each site.
"""

from serve_app.routing.control_channel import (
    ChannelError,
    GlobusComputeChannel,
    LocalChannel,
    build_site_clients,
)
from serve_app.routing.federation import Federation
from serve_app.routing.forwarding import SITE_HEADER, Forwarder
from serve_app.routing.placement import Candidate, Placer
from serve_app.routing.prefix_affinity import PrefixMemory, prefix_blocks, rendezvous_order
from serve_app.routing.site_state import SiteState, StatusPoller

__all__ = [
    "SITE_HEADER",
    "Candidate",
    "ChannelError",
    "Federation",
    "Forwarder",
    "GlobusComputeChannel",
    "LocalChannel",
    "Placer",
    "PrefixMemory",
    "SiteState",
    "StatusPoller",
    "build_site_clients",
    "prefix_blocks",
    "rendezvous_order",
]
