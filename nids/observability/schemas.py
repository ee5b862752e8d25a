"""Bodies of the observability APIs: logged predictions, statistics, queries and drift reports."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nids.core.drift import DriftStatus
from nids.core.net import IpAddress
from nids.observability.feedback_schemas import FeedbackCounts
from nids.observability.records import Source

MAX_PAGE = 1_000


class LoggedThreat(BaseModel):
    is_attack: bool
    prediction_score: float | None = Field(
        description="the threat score on the original's scale (>= 0.5 exactly when is_attack); null for "
        "classify_attack-only predictions"
    )
    threshold: float | None = Field(description="0.5 (null for classify_attack-only predictions)")
    model_version: str | None
    attack_probability: float | None = Field(
        None, description="the model's own probability of attack (null for rows logged before it was recorded)"
    )


class LoggedAttack(BaseModel):
    attack_type_name: str
    confidence: float | None
    model_version: str | None


class LoggedAction(BaseModel):
    action_id: str | None
    action_type: str
    status: str | None
    action_description: str | None
    action_params: dict[str, Any] = Field(
        default_factory=dict, description="what the action acts on, e.g. {'service': 'nginx'} ({} if logged before)"
    )


class LoggedPrediction(BaseModel):
    """One logged prediction; `traffic_data_id` is its id in the log (the original system's name)."""

    traffic_data_id: int
    timestamp: datetime = Field(description="when the service made the prediction (UTC)")
    source: Source
    batch_id: str = Field(
        description="shared by the flows of one pipeline call (request, adaptive batch or stream batch)"
    )
    kind: Literal["threat", "attack"] = Field(description="threat: 10 NSL-KDD features; attack: 42 CICFlowMeter")
    flow_id: str | None
    src_ip: str | None
    dst_ip: str | None
    src_port: int | None
    flow_timestamp: str | None = Field(description="the flow's own timestamp, as the caller sent it")
    threat_prediction: LoggedThreat
    attack_prediction: LoggedAttack | None
    self_healing_action: LoggedAction | None
    features: dict[str, Any] | None = Field(None, description="the flow's features (the list API only)")


class LogHealth(BaseModel):
    """Whether this worker's prediction log records everything (also on /readyz, under `degraded`, when not)."""

    complete: bool = Field(description="nothing dropped and the store reachable")
    lost_rows: dict[str, int] = Field(description="rows not recorded since this worker started, per reason")
    lost_since: datetime | None = Field(description="when the first of them was dropped")
    last_lost_at: datetime | None
    store_unavailable_since: datetime | None = Field(description="the store has failed every write since then")
    store_error: str | None
    buffered_rows: int = Field(description="rows held in memory until the store is back (bounded, then dropped)")
    detail: str = Field(description="the same in words ('' when complete)")


class PredictionStats(BaseModel):
    total_predictions: int
    total_attacks: int
    total_normal: int
    attack_rate: float = Field(description="percent of predictions that are attacks")
    attack_type_distribution: dict[str, int] = Field(description="predictions per attack type (42-feature flows)")
    recent_predictions: list[LoggedPrediction] = Field(description="the last 100, newest first")
    since: datetime | None
    until: datetime | None
    log: LogHealth | None = Field(None, description="what this worker's log dropped or holds back, since when")
    feedback: list[FeedbackCounts] = Field(
        default_factory=list,
        description="analysts' verdicts per model version on the predictions of the window: counts, precision, "
        "false-positive and false-negative rates (POST /api/v1/predictions/{id}/feedback)",
    )


class TimeWindow(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown query parameter is a 400, not silently ignored

    since: datetime | None = Field(None, description="from this time on (ISO 8601)")
    until: datetime | None = Field(None, description="before this time (ISO 8601)")
    window_seconds: float | None = Field(
        None, ge=0.001, le=315_360_000, description="the last N seconds (instead of since)"
    )

    @model_validator(mode="after")
    def _one_start(self) -> TimeWindow:
        if self.since is not None and self.window_seconds is not None:
            raise ValueError("give either since or window_seconds, not both")
        return self


class PredictionQuery(TimeWindow):
    verdict: Literal["attack", "benign"] | None = None
    attack_type: str | None = Field(None, description="predicted attack type, e.g. 'DDoS' or 'BENIGN'")
    src_ip: IpAddress = Field(None, description="source address")
    source: Source | None = None
    before_id: int | None = Field(None, ge=1, le=2**63 - 1, description="keyset page: predictions older than this id")
    skip: int = Field(0, ge=0, le=100_000, description="offset page: skip this many (newest first)")
    limit: int = Field(100, ge=1, le=MAX_PAGE)
    include_features: bool = Field(True, description="include each flow's features")


MAX_BUCKETS = 720


class TimelineQuery(BaseModel):
    """The query of GET /api/v1/predictions/timeline: the last `window_seconds`, in buckets of `bucket_seconds`."""

    model_config = ConfigDict(extra="forbid")

    window_seconds: int = Field(60, ge=1, le=86_400, description="the last N seconds, ending now")
    bucket_seconds: int = Field(5, ge=1, le=3_600, description="the length of each bucket")

    @model_validator(mode="after")
    def _whole_buckets(self) -> TimelineQuery:
        if self.window_seconds % self.bucket_seconds:
            raise ValueError("window_seconds must be a multiple of bucket_seconds")
        if self.window_seconds // self.bucket_seconds > MAX_BUCKETS:
            raise ValueError(f"at most {MAX_BUCKETS} buckets: raise bucket_seconds or lower window_seconds")
        return self


class TimelineBucket(BaseModel):
    start: datetime = Field(description="the bucket covers [start, start + bucket_seconds)")
    predictions: int
    attacks: int


class AttackTimeline(BaseModel):
    """Predictions and attacks per bucket over the last seconds, from the prediction log (every worker and replica
    sharing it): what the dashboard's "attack rate (last 60 s)" and its sparkline show from the first second."""

    window_seconds: int
    bucket_seconds: int
    since: datetime
    until: datetime = Field(description="the server's time of the answer: the last bucket ends here")
    predictions: int = Field(description="logged in the window")
    attacks: int
    attack_rate: float | None = Field(description="percent of the window's predictions that are attacks (null: none)")
    buckets: list[TimelineBucket] = Field(description="oldest first, every bucket of the window (empty ones at 0)")


class FeatureDrift(BaseModel):
    feature: str
    psi: float
    status: DriftStatus


class ModelDrift(BaseModel):
    role: Literal["threat", "attack"]
    model_version: str
    status: DriftStatus | Literal["no_reference", "insufficient_data"]
    reason: str | None = None
    window_rows: int = Field(description="recent predictions the PSI was computed over")
    reference_rows: int | None = Field(description="training rows of the reference distribution")
    overall_psi: float | None = Field(description="mean PSI over the features")
    features: list[FeatureDrift] = Field(description="most drifted first")


class DriftReport(BaseModel):
    window_size: int
    thresholds: dict[str, float] = Field(description="PSI cut-offs: watch and drift")
    computed_at: datetime
    models: list[ModelDrift]
