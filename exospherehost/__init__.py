"""ExosphereHost SDK on Redis Streams."""

from exospherehost._version import VERSION
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
from exospherehost.runtime import Runtime
from exospherehost.signals import PruneSignal, ReQueueAfterSignal
from exospherehost.statemanager import StateManager

__version__ = VERSION

__all__ = [
    "VERSION",
    "BaseNode",
    "CronTrigger",
    "GraphNodeModel",
    "PruneSignal",
    "ReQueueAfterSignal",
    "RetryPolicyModel",
    "RetryStrategyEnum",
    "Runtime",
    "StateManager",
    "StoreConfigModel",
    "UnitesModel",
    "UnitesStrategyEnum",
]
