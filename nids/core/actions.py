"""Self-healing's vocabulary, shared by every layer: attack events in, decisions out, and their status.

The healing engine (nids.healing) decides; the pipeline (nids.core.pipeline) only passes events to a
`Healer` and returns its decisions, so the core never depends on the engine, its store or its executors.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nids.core.features import ATTACK_CLASSES, normalise_attack_label
from nids.core.net import IpAddress

ActionType = Literal["restart_service", "block_ip", "alert_admin", "log_only"]
ACTION_TYPES: tuple[ActionType, ...] = ("restart_service", "block_ip", "alert_admin", "log_only")
Mode = Literal["dry_run", "enforce"]


class ActionStatus(StrEnum):
    """Where an action stands; stored as its value in the audit log."""

    DRY_RUN = "dry_run"  # decided, not enforced: nothing runs
    QUEUED = "queued"  # enforced, waiting for its executor
    RUNNING = "running"
    EXECUTED = "executed"
    FAILED = "failed"
    EXTENDED = "extended"  # a repeat attack extended a live block instead of adding one
    RATE_LIMITED = "rate_limited"
    SUPPRESSED = "suppressed"  # the stop switch was thrown before it ran
    REVERTED = "reverted"
    REVERT_FAILED = "revert_failed"
    EXPIRED = "expired"


# The status vocabulary of the original system's clients (its documents show "logged": recorded, nothing run);
# answers in the original's shape carry it as `status`, this project's finer ActionStatus as `execution_status`.
ORIGINAL_STATUS: dict[str, str] = {
    ActionStatus.DRY_RUN: "logged",
    ActionStatus.RATE_LIMITED: "logged",
    ActionStatus.SUPPRESSED: "logged",
    ActionStatus.QUEUED: "pending",
    ActionStatus.RUNNING: "pending",
    ActionStatus.EXECUTED: "executed",
    ActionStatus.EXTENDED: "executed",
    ActionStatus.REVERTED: "executed",
    ActionStatus.EXPIRED: "executed",
    ActionStatus.FAILED: "failed",
    ActionStatus.REVERT_FAILED: "failed",
}


def original_status(status: str | None) -> str:
    """The original system's status word for one of ours ("logged" when unknown: recorded, nothing claimed)."""
    return ORIGINAL_STATUS.get(str(status), "logged")


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


class AttackEvent(BaseModel):
    """One detected attack (or benign verdict) with the flow context the policy may act on."""

    model_config = ConfigDict(extra="forbid")

    attack_type: str | int = Field(description="class name (e.g. 'SSH-Patator') or its code 0..13")
    confidence: float | None = Field(None, ge=0.0, le=1.0, description="classifier confidence of attack_type")
    src_ip: IpAddress = Field(None, description="source address of the flow (the address block_ip acts on)")
    dst_ip: IpAddress = None
    target_service: str | None = Field(None, description="service under attack (restart_service acts on it)")
    flow_id: str | None = None
    timestamp: str | None = None
    model_version: str | None = Field(None, description="model-store tag that produced the verdict")

    @field_validator("attack_type", mode="before")
    @classmethod
    def _known_attack(cls, value: object) -> str:
        return attack_class(value)


class HealingAction(BaseModel):
    """The decision taken for one event, as the API returns it."""

    action_id: str | None = Field(None, description="id of the audit record (list/show/revert it)")
    attack_type: str
    action_type: ActionType
    action_description: str
    action_params: dict[str, Any] = Field(default_factory=dict)
    status: ActionStatus = Field(description="where the action stands (dry_run unless its type is enforced)")
    mode: Mode
    rule: str = Field(description="name of the policy rule that decided")
    reason: str | None = Field(None, description="why the rule's action was degraded, when it was")
    command: str | None = Field(None, description="the exact command (or request) that runs / would run")
    expires_at: datetime | None = Field(None, description="for block_ip: when the block is lifted")
