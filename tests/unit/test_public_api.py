"""The top-level names: the original SDK's 13, plus the errors a caller catches."""

from __future__ import annotations

import exospherehost
from exospherehost import errors

ORIGINAL_SDK = {
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
    "VERSION",
}
ERRORS = {
    "ConfigError",
    "ExosphereError",
    "GraphNotFound",
    "GraphValidationError",
    "InvalidArgument",
    "KeyNameError",
    "KeyRefused",
    "MetricsPortError",
    "NodeValidationError",
    "RedriveRefused",
    "RetryRefused",
    "RunNotFound",
    "SecretsError",
    "SizeLimitExceeded",
    "StoreUnavailable",
    "WaitTimedOut",
}


def test_all_is_exactly_the_original_names_and_the_caught_errors() -> None:
    assert len(exospherehost.__all__) == len(set(exospherehost.__all__))
    assert set(exospherehost.__all__) == ORIGINAL_SDK | ERRORS


def test_every_exported_name_resolves() -> None:
    for name in exospherehost.__all__:
        assert getattr(exospherehost, name) is not None, name


def test_exported_errors_are_the_tree_s_own_classes() -> None:
    for name in ERRORS:
        cls = getattr(exospherehost, name)
        assert cls is getattr(errors, name), name
        assert issubclass(cls, errors.ExosphereError), name
