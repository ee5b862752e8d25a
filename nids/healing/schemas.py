"""The audit log's records and queries, and the state of the stop switch."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nids.core.actions import ActionStatus, ActionType, HealingAction, Mode
from nids.core.net import IpAddress


class ActionQuery(BaseModel):
    """Filters of the audit log listing (all optional; newest first)."""

    model_config = ConfigDict(extra="forbid")

    action_type: ActionType | None = None
    status: ActionStatus | None = None
    address: IpAddress = Field(None, description="matches the source or the destination address")
    since: datetime | None = Field(None, description="decisions at or after this time (datetime or epoch s)")
    until: datetime | None = Field(None, description="decisions before this time")
    limit: int = Field(100, ge=1, le=1000)


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
    status: ActionStatus
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
    caller: str | None = Field(
        None,
        description="label of the caller authorised to enforce (a sensor or admin token, 'in-process'); null: a "
        "caller without that authority, whose decisions are dry-run and never count against the rate limits",
    )

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
