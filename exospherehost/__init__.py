"""ExosphereHost SDK on Redis Streams."""

from exospherehost._version import VERSION
from exospherehost.client.statemanager import StateManager
from exospherehost.errors import (
    ConfigError,
    ExosphereError,
    GraphNotFound,
    GraphValidationError,
    InvalidArgument,
    KeyNameError,
    KeyRefused,
    MetricsPortError,
    NodeValidationError,
    RedriveRefused,
    RetryRefused,
    RunNotFound,
    SecretsError,
    SizeLimitExceeded,
    StoreUnavailable,
    WaitTimedOut,
)
from exospherehost.models import (
    CronTrigger,
    GraphNodeModel,
    RetryPolicyModel,
    RetryStrategyEnum,
    StoreConfigModel,
    UnitesModel,
    UnitesStrategyEnum,
)
from exospherehost.node import BaseNode
from exospherehost.runtime.process import Runtime
from exospherehost.signals import PruneSignal, ReQueueAfterSignal

__version__ = VERSION

# The original SDK's names and the errors a public call can raise at its caller (the
# whole tree, the Runtime's internal ones included, is in exospherehost.errors).
__all__ = [
    "VERSION",
    "BaseNode",
    "ConfigError",
    "CronTrigger",
    "ExosphereError",
    "GraphNodeModel",
    "GraphNotFound",
    "GraphValidationError",
    "InvalidArgument",
    "KeyNameError",
    "KeyRefused",
    "MetricsPortError",
    "NodeValidationError",
    "PruneSignal",
    "ReQueueAfterSignal",
    "RedriveRefused",
    "RetryPolicyModel",
    "RetryRefused",
    "RetryStrategyEnum",
    "RunNotFound",
    "Runtime",
    "SecretsError",
    "SizeLimitExceeded",
    "StateManager",
    "StoreConfigModel",
    "StoreUnavailable",
    "UnitesModel",
    "UnitesStrategyEnum",
    "WaitTimedOut",
]
