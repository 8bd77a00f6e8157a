"""What runs at a site: its config, its Serve application, its status and the functions
the gateway's control channel runs there. Imports nothing of the gateway or the keeper.

The Serve application itself (`site_app`, `simulated_engine`) imports Ray
Serve LLM and vLLM, so it is not imported here; `site_runner` starts it.
"""

from deployments.batch_jobs import (
    BatchPoll,
    BatchResult,
    BatchStopResult,
    BatchSubmission,
    JobResult,
    StageResult,
)
from deployments.capabilities import CapabilitiesConfig
from deployments.config_loading import ConfigError, StrictConfig, load_config
from deployments.errors import FirstError
from deployments.site_client import ControlChannel, SiteCallTimeout, SiteClient
from deployments.site_config import ModelConfig, SiteConfig
from deployments.site_functions import LaunchResult, StopResult
from deployments.site_status import JobStatus, ModelStatus, SiteStatus

__all__ = [
    "BatchPoll",
    "BatchResult",
    "BatchStopResult",
    "BatchSubmission",
    "CapabilitiesConfig",
    "ConfigError",
    "ControlChannel",
    "FirstError",
    "JobResult",
    "JobStatus",
    "LaunchResult",
    "ModelConfig",
    "ModelStatus",
    "SiteCallTimeout",
    "SiteClient",
    "SiteConfig",
    "SiteStatus",
    "StageResult",
    "StopResult",
    "StrictConfig",
    "load_config",
]
