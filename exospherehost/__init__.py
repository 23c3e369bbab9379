"""ExosphereHost SDK on Redis Streams."""

from exospherehost._version import VERSION
from exospherehost.client.statemanager import StateManager
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
