"""Graph-template models. Names and meaning follow the original ExosphereHost SDK."""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


def _strip_nonempty(value: str, what: str) -> str:
    trimmed = value.strip()
    if not trimmed:
        raise ValueError(f"{what} cannot be empty")
    return trimmed


class UnitesStrategyEnum(str, Enum):
    ALL_SUCCESS = "ALL_SUCCESS"
    ALL_DONE = "ALL_DONE"


class UnitesModel(BaseModel):
    model_config = ConfigDict(frozen=True)

    identifier: str = Field(..., description="Identifier of the node whose descendants are united")
    strategy: UnitesStrategyEnum = UnitesStrategyEnum.ALL_SUCCESS

    @field_validator("identifier")
    @classmethod
    def _identifier(cls, v: str) -> str:
        return _strip_nonempty(v, "Unites identifier")


class GraphNodeModel(BaseModel):
    node_name: str = Field(..., description="Name of the node class (BaseNode subclass)")
    namespace: str = Field(..., description="Namespace the node is registered in")
    identifier: str = Field(..., description="Unique name of this node within the graph")
    inputs: dict[str, Any] = Field(default_factory=dict, description="Input templates")
    next_nodes: list[str] | None = None
    unites: UnitesModel | None = None

    @field_validator("node_name")
    @classmethod
    def _node_name(cls, v: str) -> str:
        return _strip_nonempty(v, "Node name")

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        return _strip_nonempty(v, "Namespace")

    @field_validator("identifier")
    @classmethod
    def _identifier(cls, v: str) -> str:
        v = _strip_nonempty(v, "Node identifier")
        if v == "store":
            raise ValueError("Node identifier cannot be reserved word 'store'")
        return v

    @field_validator("next_nodes")
    @classmethod
    def _next_nodes(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        seen: list[str] = []
        errors: list[str] = []
        for raw in v:
            ident = raw.strip()
            if not ident:
                errors.append("Next node identifier cannot be empty")
            elif ident in seen:
                errors.append(f"Next node identifier {ident} is not unique")
            else:
                seen.append(ident)
        if errors:
            raise ValueError("\n".join(errors))
        return seen


class RetryStrategyEnum(str, Enum):
    EXPONENTIAL = "EXPONENTIAL"
    EXPONENTIAL_FULL_JITTER = "EXPONENTIAL_FULL_JITTER"
    EXPONENTIAL_EQUAL_JITTER = "EXPONENTIAL_EQUAL_JITTER"
    LINEAR = "LINEAR"
    LINEAR_FULL_JITTER = "LINEAR_FULL_JITTER"
    LINEAR_EQUAL_JITTER = "LINEAR_EQUAL_JITTER"
    FIXED = "FIXED"
    FIXED_FULL_JITTER = "FIXED_FULL_JITTER"
    FIXED_EQUAL_JITTER = "FIXED_EQUAL_JITTER"


class RetryPolicyModel(BaseModel):
    max_retries: int = Field(default=3, ge=0, description="Retries after the first attempt")
    strategy: RetryStrategyEnum = RetryStrategyEnum.EXPONENTIAL
    backoff_factor: int = Field(default=2000, gt=0, description="Base delay in milliseconds")
    exponent: int = Field(default=2, gt=0)
    max_delay: int | None = Field(default=None, gt=0, description="Cap in milliseconds")


def _check_store_key(key: str, seen: set[str], errors: list[str]) -> str | None:
    trimmed = key.strip() if key is not None else ""
    if not trimmed:
        errors.append("Key cannot be empty or contain only whitespace")
    elif "." in trimmed:
        errors.append(f"Key '{trimmed}' cannot contain '.' character")
    elif trimmed in seen:
        errors.append(f"Key '{trimmed}' is duplicated")
    else:
        seen.add(trimmed)
        return trimmed
    return None


class StoreConfigModel(BaseModel):
    required_keys: list[str] = Field(default_factory=list)
    default_values: dict[str, Any] = Field(default_factory=dict)

    @field_validator("required_keys")
    @classmethod
    def _required(cls, v: list[str]) -> list[str]:
        seen: set[str] = set()
        errors: list[str] = []
        out = [k for k in (_check_store_key(k, seen, errors) for k in v) if k is not None]
        if errors:
            raise ValueError("\n".join(errors))
        return out

    @field_validator("default_values")
    @classmethod
    def _defaults(cls, v: dict[str, Any]) -> dict[str, Any]:
        seen: set[str] = set()
        errors: list[str] = []
        out: dict[str, Any] = {}
        for key, value in v.items():
            k = _check_store_key(key, seen, errors)
            if k is not None:
                out[k] = value
        if errors:
            raise ValueError("\n".join(errors))
        return out


class CronTrigger(BaseModel):
    type: Literal["CRON"] = "CRON"
    expression: str

    @field_validator("expression")
    @classmethod
    def _expression(cls, v: str) -> str:
        return _strip_nonempty(v, "Cron expression")
