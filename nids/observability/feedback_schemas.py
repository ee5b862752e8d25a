"""Bodies of the feedback APIs (nids.observability.feedback): a verdict in, a verdict stored, counts per version."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nids.core.features import ATTACK_CLASSES

Verdict = Literal["true_positive", "false_positive", "false_negative", "true_negative"]
VERDICTS: tuple[Verdict, ...] = ("true_positive", "false_positive", "false_negative", "true_negative")


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verdict: Verdict = Field(description="how the prediction's threat verdict compares with the truth")
    attack_type: str | None = Field(
        None, description="the right attack type (42-feature flows), one of the classifier's 14 classes"
    )
    note: str | None = Field(None, max_length=2000, description="free text for the next analyst")

    @field_validator("attack_type")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        if value is not None and value not in ATTACK_CLASSES:
            raise ValueError(f"attack_type must be one of {list(ATTACK_CLASSES)}")
        return value


class Feedback(BaseModel):
    prediction_id: int
    verdict: Verdict
    attack_type: str | None = Field(description="the right attack type the analyst named (null: none named)")
    note: str | None
    analyst: str = Field(description="the label of the token that gave the verdict")
    created_at: datetime
    updated_at: datetime
    revisions: int = Field(description="how many times the verdict was given (1: never changed)")
    kind: Literal["threat", "attack"]
    model_version: str | None = Field(description="the version whose verdict is judged")
    predicted_attack: bool
    predicted_type: str | None
    label: str | None = Field(
        description="the training label this verdict gives the flow: normal/attack for 10-feature flows, the "
        "attack type for 42-feature flows (null: an attack of unknown type)"
    )


class FeedbackCounts(BaseModel):
    """Verdicts on one model version's predictions and the rates they give (null: no verdict to divide by)."""

    model_version: str
    kind: Literal["threat", "attack"]
    true_positive: int
    false_positive: int
    false_negative: int
    true_negative: int
    total: int
    precision: float | None = Field(description="TP / (TP + FP)")
    false_positive_rate: float | None = Field(description="FP / (FP + TN)")
    false_negative_rate: float | None = Field(description="FN / (FN + TP)")
    attack_type_corrections: int = Field(description="true positives whose right attack type differs")
