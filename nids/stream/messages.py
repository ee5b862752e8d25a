"""What the worker reads and writes: flow records in, prediction events and dead letters out.

A batch of records is decoded and validated at once (`triage`): JSON decoding per record (orjson; the stdlib's
non-strict tokens `NaN`/`Infinity`, which the REST API also accepts, through pydantic's parser), then one
pydantic validation of the whole list with the REST API's own flow model (nids.schemas.AnalyzeFlow), so a
record means, and is refused for, exactly what it would be over HTTP. The valid records go to the models; each
invalid one becomes a dead letter carrying the record as received and the errors naming field and rule.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import pydantic_core
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from nids.core.actions import HealingAction
from nids.core.errors import InvalidInput
from nids.core.model import LoadedModel
from nids.core.pipeline import check_codes
from nids.core.schemas import AnalyzeFlow, AnalyzeResult, AttackPrediction, FlowKind, ThreatFlow, ThreatPrediction


class Record(Protocol):
    """The parts of a Kafka record the worker uses (aiokafka's ConsumerRecord has them)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class Source(BaseModel):
    """Where the record a message answers was read: duplicates after a restart carry the same source."""

    topic: str
    partition: int
    offset: int


class PredictionEvent(BaseModel):
    """One scored record, in the original system's prediction event shape, plus its source."""

    traffic_data_id: str = Field(description="the record's flow_id when it has one, else topic:partition:offset")
    kind: FlowKind
    threat_prediction: ThreatPrediction
    attack_prediction: AttackPrediction | None = Field(None, description="for 42-feature flows")
    self_healing_action: HealingAction | None = Field(None, description="for 42-feature flows")
    source: Source


class ErrorDetail(BaseModel):
    type: str = Field(description="the rule broken (nids.validation; docs/api.md, Validation)")
    loc: list[str | int] = Field(description="flow kind and field (empty when the record is not a flow at all)")
    msg: str


class DeadLetter(BaseModel):
    """An invalid record: why it was refused and the record as received."""

    source: Source
    error: str = Field(description="every error on one line: field: message")
    detail: list[ErrorDetail]
    record: str | None = Field(description="the record's value as received (UTF-8 text); null if absent")
    record_base64: str | None = Field(None, description="the value as received, when it is not UTF-8 text")


@dataclass
class Triage:
    """A batch split into the records to score (with their validated flows) and dead letters."""

    valid: list[Record] = field(default_factory=list)
    flows: list[AnalyzeFlow] = field(default_factory=list)
    dead: list[tuple[Record, DeadLetter]] = field(default_factory=list)


_FLOWS = TypeAdapter(list[AnalyzeFlow])


def source_of(record: Record) -> Source:
    return Source(topic=record.topic, partition=record.partition, offset=record.offset)


def decode(value: bytes | None) -> Any:
    """The JSON value of a record; ValueError naming the problem when it is not JSON."""
    if not value:
        raise ValueError("the record is empty")
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return pydantic_core.from_json(value, allow_inf_nan=True)  # NaN/Infinity tokens, or the real error


def triage(records: Sequence[Record], threat_model: LoadedModel) -> Triage:
    """Decode and validate a batch: the flow model's rules, then the category codes the threat model knows."""
    out = Triage()
    candidates: list[tuple[Record, dict[str, Any]]] = []
    for record in records:
        try:
            value = decode(record.value)
        except ValueError as error:
            detail = ErrorDetail(type="json_invalid", loc=[], msg=f"Invalid JSON: {error}")
        else:
            if isinstance(value, dict):
                candidates.append((record, value))
                continue
            detail = ErrorDetail(
                type="dict_type", loc=[], msg=f"Input should be a JSON object (one flow), not {type(value).__name__}"
            )
        out.dead.append((record, dead_letter(record, [detail])))
    errors = _validate_into(out, candidates)
    out.dead.extend((candidates[i][0], dead_letter(candidates[i][0], detail)) for i, detail in errors.items())
    _refuse_unknown_codes(out, threat_model)
    return out


def _validate_into(out: Triage, candidates: Sequence[tuple[Record, dict[str, Any]]]) -> dict[int, list[ErrorDetail]]:
    """Validate all candidates in one call; when some fail, the others again without them. Errors by index."""
    errors: dict[int, list[ErrorDetail]] = defaultdict(list)
    try:
        flows = _FLOWS.validate_python([value for _, value in candidates])
    except ValidationError as error:
        for item in error.errors(include_url=False, include_input=False):
            index, *loc = item["loc"]
            errors[int(index)].append(ErrorDetail(type=item["type"], loc=loc, msg=item["msg"]))
        candidates = [pair for i, pair in enumerate(candidates) if i not in errors]
        flows = _FLOWS.validate_python([value for _, value in candidates])  # each flow is validated on its own
    out.valid.extend(record for record, _ in candidates)
    out.flows.extend(flows)
    return errors


def _refuse_unknown_codes(batch: Triage, model: LoadedModel) -> None:
    """Dead-letter threat flows whose `service`/`flag` code is past the model's categories (the pipeline's check)."""
    threat = [i for i, flow in enumerate(batch.flows) if isinstance(flow.root, ThreatFlow)]
    try:
        check_codes(model, [batch.flows[i].root for i in threat], rows=threat)
        return
    except InvalidInput as error:
        refused: dict[int, list[ErrorDetail]] = defaultdict(list)
        for item in error.detail:
            _, row, feature = item["loc"]
            refused[row].append(ErrorDetail(type=item["type"], loc=["threat", feature], msg=item["msg"]))
    batch.dead.extend((batch.valid[i], dead_letter(batch.valid[i], detail)) for i, detail in refused.items())
    keep = [i for i in range(len(batch.flows)) if i not in refused]
    batch.valid = [batch.valid[i] for i in keep]
    batch.flows = [batch.flows[i] for i in keep]


def dead_letter(record: Record, detail: list[ErrorDetail]) -> DeadLetter:
    value = record.value
    try:
        text, raw = (None if value is None else value.decode("utf-8")), None
    except UnicodeDecodeError:
        text, raw = None, base64.b64encode(value or b"").decode("ascii")
    summary = "; ".join(f"{'.'.join(map(str, d.loc)) or 'record'}: {d.msg}" for d in detail)
    return DeadLetter(source=source_of(record), error=summary, detail=detail, record=text, record_base64=raw)


def prediction_event(record: Record, result: AnalyzeResult) -> PredictionEvent:
    source = source_of(record)
    return PredictionEvent.model_construct(
        traffic_data_id=result.flow_id or f"{source.topic}:{source.partition}:{source.offset}",
        kind=result.kind,
        threat_prediction=result.threat_prediction,
        attack_prediction=result.attack_prediction,
        self_healing_action=result.self_healing_action,
        source=source,
    )


def to_json(message: BaseModel) -> bytes:
    return message.__pydantic_serializer__.to_json(message)
