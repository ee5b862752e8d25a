"""Typed request and response bodies of the service.

Flows are validated here, per request and before adaptive batching merges requests, so one client's bad
row can never fail another client's batch. Every rule error carries its location (row index, field) and a
message naming the rule; the rules themselves live in nids.core.validation.

Flow models can be passed straight to nids.core.encoding.to_matrix: `flow["<canonical feature name>"]` reads the
feature, so no per-row dictionaries are built on the hot path.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    RootModel,
    Tag,
    create_model,
    field_validator,
)
from pydantic_core import PydanticCustomError

from nids.core.actions import AttackEvent, HealingAction
from nids.core.features import ATTACK_FEATURE_BY_SNAKE, ATTACK_FEATURES, THREAT_FEATURES
from nids.core.model import CaseResult
from nids.core.net import IpAddress
from nids.core.validation import (
    ATTACK_RULES,
    THREAT_RULES,
    FeatureRule,
    check_row_count,
)

FlowKind = Literal["threat", "attack"]


def _number(rule: FeatureRule, description: str, **alias: Any) -> Any:
    """A float field parsed and checked by `rule` in one call (NaN, +/-inf policy, range, float32, booleans)."""
    return Annotated[
        float,
        PlainValidator(rule.parse, json_schema_input_type=float),
        Field(
            description=f"{description}; {rule.describe()}: {rule.why}", json_schema_extra=rule.json_schema(), **alias
        ),
    ]


class Echoed(BaseModel):
    """Optional context of a flow: accepted with any flow, echoed in its prediction (null when not sent)."""

    flow_id: str | None = Field(None, description="caller's id of the flow")
    src_ip: str | None = Field(None, description="source IPv4/IPv6 address (block_ip acts on it)")
    dst_ip: str | None = Field(None, description="destination IPv4/IPv6 address")
    src_port: int | None = Field(None, ge=0, le=65535, description="source port")
    timestamp: str | None = Field(None, description="when the flow was seen, as the caller writes it")


class FlowContext(Echoed):
    """Base of the request flows: the context fields, validated; any unknown field is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    src_ip: IpAddress = Field(None, description="source IPv4/IPv6 address (block_ip acts on it)")
    dst_ip: IpAddress = Field(None, description="destination IPv4/IPv6 address")

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp_text(cls, value: object) -> object:
        # epoch seconds are common in stream messages: keep them, as text
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    def context(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in CONTEXT_FIELDS}


CONTEXT_FIELDS: tuple[str, ...] = tuple(FlowContext.model_fields)


def _category(value: object) -> str | int:
    """`service` / `flag`: a name (unknown names are allowed: the model has a code for them) or a code >= 0.

    A code's upper bound depends on the model that serves the request: the pipeline checks it against that
    model's categories (nids.core.pipeline), so validation never reads a second model snapshot.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PydanticCustomError("category_type", "Input should be a category name or an integer code")
    if isinstance(value, str) and value.strip().isdigit():  # codes from CSV uploads arrive as text
        value = int(value)
    if isinstance(value, int) and value < 0:
        raise PydanticCustomError(
            "category_code", "Input should be a known name or a code within [0, {high}]", {"high": "n-1"}
        )
    return value


_Category = Annotated[str | int, BeforeValidator(_category)]


class ThreatFlow(FlowContext):
    """The 10 NSL-KDD features of the threat detector, under their exact names."""

    service: _Category = Field(description="network service: name (e.g. 'http') or code")
    flag: _Category = Field(description="connection status flag: name (e.g. 'SF') or code")
    src_bytes: _number(THREAT_RULES["src_bytes"], "bytes from source to destination")
    dst_bytes: _number(THREAT_RULES["dst_bytes"], "bytes from destination to source")
    count: _number(THREAT_RULES["count"], "connections to the same host in the past two seconds")
    same_srv_rate: _number(THREAT_RULES["same_srv_rate"], "share of those connections to the same service")
    diff_srv_rate: _number(THREAT_RULES["diff_srv_rate"], "share of those connections to other services")
    dst_host_srv_count: _number(THREAT_RULES["dst_host_srv_count"], "connections to the destination's service")
    dst_host_same_srv_rate: _number(THREAT_RULES["dst_host_same_srv_rate"], "share to the same service")
    dst_host_same_src_port_rate: _number(THREAT_RULES["dst_host_same_src_port_rate"], "share from the same port")

    def __getitem__(self, feature: str) -> Any:
        return getattr(self, feature)


assert set(THREAT_FEATURES) == set(ThreatFlow.model_fields) - set(CONTEXT_FIELDS)

# attribute name of each attack feature: the snake_case alias (' Flow Bytes/s' -> flow_bytes_s)
ATTACK_ATTRIBUTE: dict[str, str] = {name: attribute for attribute, name in ATTACK_FEATURE_BY_SNAKE.items()}


class _AttackFlowBase(FlowContext):
    def __getitem__(self, feature: str) -> Any:
        return getattr(self, ATTACK_ATTRIBUTE[feature])


AttackFlow = create_model(
    "AttackFlow",
    __base__=_AttackFlowBase,
    __doc__="The 42 CICFlowMeter features of the attack classifier, under the original (spaced) names or in "
    "snake_case ('Flow Bytes/s' or 'flow_bytes_s'). Infinity is read as 0, as the model was trained.",
    **{
        attribute: (
            _number(
                ATTACK_RULES[name], f"CICFlowMeter '{name.strip()}'", validation_alias=AliasChoices(name, attribute)
            ),
            ...,
        )
        for name, attribute in ATTACK_ATTRIBUTE.items()
    },
)


def flow_kind(flow: object) -> FlowKind | None:
    """Which model a flow is for, recognised by its field names (None when it has neither set)."""
    keys = flow.keys() if isinstance(flow, dict) else type(flow).model_fields if isinstance(flow, BaseModel) else ()
    if not _ATTACK_KEYS.isdisjoint(keys):  # set operations in C: this runs once per flow validated
        return "attack"
    if not _THREAT_KEYS.isdisjoint(keys):
        return "threat"
    return None


_ATTACK_KEYS = frozenset(ATTACK_FEATURES) | frozenset(ATTACK_ATTRIBUTE.values())
_THREAT_KEYS = frozenset(THREAT_FEATURES)


# A root model rather than a bare annotated union: BentoML re-applies a field's annotations, and pydantic
# refuses a discriminator applied twice.
class AnalyzeFlow(
    RootModel[
        Annotated[
            Annotated[ThreatFlow, Tag("threat")] | Annotated[AttackFlow, Tag("attack")],
            Discriminator(
                flow_kind,
                custom_error_type="unknown_flow",
                custom_error_message="Input should have the 10 threat features or the 42 flow features",
            ),
        ]
    ]
):
    """A flow for either model, recognised by its field names: the 10 threat features or the 42 flow features."""


# request bodies: row limit checked before any row is validated (413); the batched APIs' bodies are
# nids.core.columns.ThreatFlows / AttackFlows (the same check, then the flows as columns)
AnalyzeFlows = Annotated[list[AnalyzeFlow], BeforeValidator(check_row_count)]
AttackEvents = Annotated[list[AttackEvent], BeforeValidator(check_row_count)]


# --- responses ---------------------------------------------------------------------------------------------
class ThreatPrediction(Echoed):
    prediction_score: float = Field(
        ge=0,
        le=1,
        description="threat score on the original system's scale: 0.0-0.5 normal, 0.5-1.0 attack; >= 0.5 exactly "
        "when is_attack (a monotone map of attack_probability that puts the model's operating point at 0.5)",
    )
    is_attack: bool = Field(description="prediction_score >= threshold")
    threshold: float = Field(description="always 0.5: the threshold on prediction_score, as the original reports it")
    model_version: str = Field(description="model-store tag that made the prediction")
    unknown_categories: list[str] = Field(
        default_factory=list,
        description="`service` / `flag` when the name sent is unknown to the model: still scored, with the code "
        "training gave unseen names (-1); counted in nids_unknown_categories_total",
    )
    attack_probability: float = Field(
        ge=0,
        le=1,
        description="the model's own probability of attack: P(attack) of the threat detector, or 1 - P(BENIGN) "
        "when the verdict comes from the attack classifier (analyze, 42-feature flows)",
    )
    decision_threshold: float | None = Field(
        description="the model's operating point on attack_probability (is_attack = attack_probability >= it); "
        "null when the verdict comes from the attack classifier (attack when the predicted class is not BENIGN)"
    )


class ClassProbability(BaseModel):
    attack_type_name: str
    attack_type_encoded: int
    probability: float


class AttackPrediction(Echoed):
    attack_type_encoded: int = Field(ge=0, description="class code 0..13")
    attack_type_name: str
    confidence: float = Field(ge=0, le=1, description="probability of the predicted class")
    top_classes: list[ClassProbability] = Field(description="the 3 most probable classes, most probable first")
    model_version: str


MAX_EXPLAINED_FEATURES = 42  # the attack classifier's feature count: asking for more lists them all


class FeatureContribution(BaseModel):
    feature: str = Field(description="the feature, under its canonical name")
    value: float | int | str = Field(description="the flow's value, as the model read it (categories as sent)")
    contribution: float = Field(description="its share of the explained probability (negative: pulls it down)")


class Explanation(BaseModel):
    """Why the model gave the flow its predicted class: base_value + every feature's contribution == score."""

    method: Literal["path_contributions"] = Field(
        "path_contributions",
        description="exact path contributions of the forest (docs/api.md, Explanations): per tree, each split's "
        "change of the class fraction is credited to the feature split on, averaged over the trees",
    )
    explained_class: str = Field(description="the predicted class, whose probability is explained")
    score: float = Field(description="the probability of explained_class by the stored estimator")
    base_value: float = Field(
        description="the probability of explained_class at the trees' roots (mean over the trees; calibrated as the "
        "served probability is)"
    )
    top_features: list[FeatureContribution] = Field(description="the largest contributions by magnitude, first")
    other_features: float = Field(description="the sum of the contributions not listed")
    model_version: str


class ExplainedThreatPrediction(ThreatPrediction):
    explanation: Explanation


class ExplainedAttackPrediction(AttackPrediction):
    explanation: Explanation


class AnalyzeResult(Echoed):
    index: int = Field(description="position of the flow in the request")
    kind: FlowKind = Field(description="threat: 10 NSL-KDD features; attack: 42 CICFlowMeter features")
    threat_prediction: ThreatPrediction
    attack_prediction: AttackPrediction | None = Field(None, description="for 42-feature flows")
    self_healing_action: HealingAction | None = Field(None, description="for 42-feature flows (policy decision)")
    explanation: Explanation | None = Field(None, description="with explain=N: why the flow got its verdict")


class AnalyzeSummary(BaseModel):
    total: int
    by_verdict: dict[str, int] = Field(description="'attack' / 'benign' counts of the threat verdicts")
    by_attack_type: dict[str, int] = Field(description="counts per predicted class (42-feature flows)")
    by_action: dict[str, int] = Field(description="counts per self-healing action type")


class AnalyzeResponse(BaseModel):
    results: list[AnalyzeResult]
    summary: AnalyzeSummary
    ignored_columns: list[str] = Field(
        default_factory=list, description="CSV columns that are neither features nor context (CSV upload only)"
    )


class ModelDescription(BaseModel):
    tag: str
    name: str
    inference_form: str = Field(description="what runs the model: e.g. onnx or sklearn")
    feature_names: list[str]
    class_names: list[str]
    categories: dict[str, list[str]] = Field(
        description="the names of each categorical feature (threat detector: service, flag); a name's code is its "
        "index, and a name not listed is scored as unknown"
    )
    threshold: float | None = Field(description="decision threshold (threat detector)")
    metrics: dict[str, Any] = Field(description="evaluation metrics recorded at training time")
    reference_cases: list[CaseResult] = Field(description="results of the checks run at load time")


class ModelInfo(BaseModel):
    threat: ModelDescription
    attack: ModelDescription
