"""Typed input and output of the self-healing API, and the audit record behind each action."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nids.features import ATTACK_CLASSES, normalise_attack_label

ActionType = Literal["restart_service", "block_ip", "alert_admin", "log_only"]
ACTION_TYPES: tuple[ActionType, ...] = ("restart_service", "block_ip", "alert_admin", "log_only")
Mode = Literal["dry_run", "enforce"]


def attack_class(value: object) -> str:
    """Class name of an attack given by name (any dash variant) or by its code (index in ATTACK_CLASSES)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("attack type must be a class name or an integer code")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)  # a code sent as a string
    if isinstance(value, int):
        if not 0 <= value < len(ATTACK_CLASSES):
            raise ValueError(f"attack type code must be within [0, {len(ATTACK_CLASSES) - 1}], got {value}")
        return ATTACK_CLASSES[value]
    name = normalise_attack_label(value)
    if name is None:
        raise ValueError(f"attack type {value!r} is not one of the 14 classes the classifier predicts")
    return name


def ip_text(value: str | None) -> str | None:
    """Canonical text of an IPv4/IPv6 address; ValueError naming the value otherwise."""
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError(f"{value!r} is not a valid IPv4 or IPv6 address") from None


class AttackEvent(BaseModel):
    """One detected attack (or benign verdict) with the flow context the policy may act on."""

    model_config = ConfigDict(extra="forbid")

    attack_type: str | int = Field(description="class name (e.g. 'SSH-Patator') or its code 0..13")
    confidence: float | None = Field(None, ge=0.0, le=1.0, description="classifier confidence of attack_type")
    src_ip: str | None = Field(None, description="source address of the flow (the address block_ip acts on)")
    dst_ip: str | None = None
    target_service: str | None = Field(None, description="service under attack (restart_service acts on it)")
    flow_id: str | None = None
    timestamp: str | None = None
    model_version: str | None = Field(None, description="model-store tag that produced the verdict")

    @field_validator("attack_type", mode="before")
    @classmethod
    def _known_attack(cls, value: object) -> str:
        return attack_class(value)

    @field_validator("src_ip", "dst_ip")
    @classmethod
    def _valid_ip(cls, value: str | None) -> str | None:
        return ip_text(value)


class HealingAction(BaseModel):
    """The decision taken for one event, as the API returns it."""

    action_id: str | None = Field(None, description="id of the audit record (list/show/revert it)")
    attack_type: str
    action_type: ActionType
    action_description: str
    action_params: dict[str, Any] = Field(default_factory=dict)
    status: str = Field(description="dry_run, queued, executed, failed, extended, rate_limited, suppressed, ...")
    mode: Mode
    rule: str = Field(description="name of the policy rule that decided")
    reason: str | None = Field(None, description="why the rule's action was degraded, when it was")
    command: str | None = Field(None, description="the exact command (or request) that runs / would run")
    expires_at: datetime | None = Field(None, description="for block_ip: when the block is lifted")


class ActionQuery(BaseModel):
    """Filters of the audit log listing (all optional; newest first)."""

    model_config = ConfigDict(extra="forbid")

    action_type: ActionType | None = None
    status: str | None = None
    address: str | None = Field(None, description="matches the source or the destination address")
    since: datetime | None = Field(None, description="decisions at or after this time (datetime or epoch s)")
    until: datetime | None = Field(None, description="decisions before this time")
    limit: int = Field(100, ge=1, le=1000)

    @field_validator("address")
    @classmethod
    def _valid_ip(cls, value: str | None) -> str | None:
        return ip_text(value)


class ActionRecord(BaseModel):
    """One row of the audit log: the decision, its context, and what became of it."""

    action_id: str
    created_at: datetime
    updated_at: datetime
    attack_type: str
    confidence: float | None
    model_version: str | None
    src_ip: str | None
    dst_ip: str | None
    target_service: str | None
    flow_id: str | None
    event_timestamp: str | None
    rule: str
    action_type: ActionType
    mode: Mode
    status: str
    description: str
    params: dict[str, Any]
    reason: str | None
    command: str | None
    outcome: str | None = Field(description="executor output or error")
    expires_at: datetime | None
    parent_id: str | None = Field(description="for an extension: the block it extended")
    ended_at: datetime | None = Field(description="when it was reverted or expired, or failed / was suppressed")
    undo_command: str | None
    undo_outcome: str | None

    def to_action(self) -> HealingAction:
        return HealingAction(
            action_id=self.action_id,
            attack_type=self.attack_type,
            action_type=self.action_type,
            action_description=self.description,
            action_params=self.params,
            status=self.status,
            mode=self.mode,
            rule=self.rule,
            reason=self.reason,
            command=self.command,
            expires_at=self.expires_at,
        )


class EnforcementState(BaseModel):
    """Whether self-healing actions of enforced types really run (the stop switch is off)."""

    enforcement_enabled: bool
