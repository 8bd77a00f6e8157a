"""The federation config, one module per section; every model is importable from here.

- `federation`: the file itself (`FederationConfig`, `load_federation`), the
  gateway's listener and each federated site with its channel and timeouts;
- `access`: authentication, the access policy, limits;
- `routing`: site status, circuit breaker, placement, cold start;
- `storage`: store, usage ledger, batches, metrics;
- `workflows`: bulk requests, tribunals, RAG collections.

The keeper's section is `autoscaling.config.KeeperConfig`: the keeper runs
below the gateway and must not import it.
"""

from serve_app.config.access import (
    AuthConfig,
    CacheIsolationConfig,
    CredentialCacheConfig,
    GlobusAuthConfig,
    LimitsConfig,
    ModelAccessConfig,
    PolicyConfig,
    UserLimitsConfig,
)
from serve_app.config.federation import (
    COLOCATED_PREFIX,
    COMPUTE_PAYLOAD_LIMIT_BYTES,
    ChannelConfig,
    EndpointEngineChannelConfig,
    FederatedSiteConfig,
    FederationConfig,
    GatewayConfig,
    GlobusComputeChannelConfig,
    GlobusComputeTransportConfig,
    LocalChannelConfig,
    SiteTimeoutsConfig,
    SshTunnelTransportConfig,
    load_federation,
)
from serve_app.config.routing import (
    CircuitBreakerConfig,
    ColdStartConfig,
    PlacementConfig,
    PlacementPolicy,
    PrefixAffinityConfig,
    StatusConfig,
)
from serve_app.config.storage import (
    BatchConfig,
    LedgerConfig,
    MetricsConfig,
    StoreConfig,
)
from serve_app.config.workflows import (
    BulkConfig,
    RagConfig,
    SeededCollectionConfig,
    TribunalConfig,
    TribunalPromptsConfig,
)

__all__ = [
    "COLOCATED_PREFIX",
    "COMPUTE_PAYLOAD_LIMIT_BYTES",
    "AuthConfig",
    "BatchConfig",
    "BulkConfig",
    "CacheIsolationConfig",
    "ChannelConfig",
    "CircuitBreakerConfig",
    "ColdStartConfig",
    "CredentialCacheConfig",
    "EndpointEngineChannelConfig",
    "FederatedSiteConfig",
    "FederationConfig",
    "GatewayConfig",
    "GlobusAuthConfig",
    "GlobusComputeChannelConfig",
    "GlobusComputeTransportConfig",
    "LedgerConfig",
    "LimitsConfig",
    "LocalChannelConfig",
    "MetricsConfig",
    "ModelAccessConfig",
    "PlacementConfig",
    "PlacementPolicy",
    "PolicyConfig",
    "PrefixAffinityConfig",
    "RagConfig",
    "SeededCollectionConfig",
    "SiteTimeoutsConfig",
    "SshTunnelTransportConfig",
    "StatusConfig",
    "StoreConfig",
    "TribunalConfig",
    "TribunalPromptsConfig",
    "UserLimitsConfig",
    "load_federation",
]
