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
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from nids.core.actions import HealingAction
from nids.core.schemas import AnalyzeFlow, AnalyzeResult, AttackPrediction, FlowKind, ThreatPrediction, flow_kind


class Record(Protocol):
    """The parts of a Kafka record the worker uses (aiokafka's ConsumerRecord has them)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


# Events are typed dicts, serialised by one TypeAdapter: no model is built per record on the hot path.
class Source(TypedDict):
    """Where the record a message answers was read: duplicates after a restart carry the same source."""

    topic: str
    partition: int
    offset: int


class PredictionEvent(TypedDict):
    """One scored record, in the original system's prediction event shape, plus its source.

    traffic_data_id: the record's flow_id when it has one, else topic:partition:offset. attack_prediction and
    self_healing_action: for 42-feature flows (null for 10-feature ones).
    """

    traffic_data_id: str
    kind: FlowKind
    threat_prediction: ThreatPrediction
    attack_prediction: AttackPrediction | None
    self_healing_action: HealingAction | None
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

    def refuse(self, detail: Sequence[dict[str, Any]]) -> None:
        """Dead-letter the flows an InvalidInput of the pipeline names (`loc` [..., index in flows, field])."""
        refused: dict[int, list[ErrorDetail]] = defaultdict(list)
        for item in detail:
            *_, index, name = item["loc"]
            kind = flow_kind(self.flows[int(index)].root)
            refused[int(index)].append(ErrorDetail(type=item["type"], loc=[kind or "flow", name], msg=item["msg"]))
        self.dead.extend((self.valid[i], dead_letter(self.valid[i], errors)) for i, errors in refused.items())
        keep = [i for i in range(len(self.flows)) if i not in refused]
        self.valid = [self.valid[i] for i in keep]
        self.flows = [self.flows[i] for i in keep]


_FLOWS = TypeAdapter(list[AnalyzeFlow])
_EVENT = TypeAdapter(PredictionEvent)


def source_of(record: Record) -> Source:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


def decode(value: bytes | None) -> Any:
    """The JSON value of a record; ValueError naming the problem when it is not JSON."""
    if not value:
        raise ValueError("the record is empty")
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return pydantic_core.from_json(value, allow_inf_nan=True)  # NaN/Infinity tokens, or the real error


def triage(records: Sequence[Record]) -> Triage:
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


def dead_letter(record: Record, detail: list[ErrorDetail]) -> DeadLetter:
    value = record.value
    try:
        text, raw = (None if value is None else value.decode("utf-8")), None
    except UnicodeDecodeError:
        text, raw = None, base64.b64encode(value or b"").decode("ascii")
    summary = "; ".join(f"{'.'.join(map(str, d.loc)) or 'record'}: {d.msg}" for d in detail)
    return DeadLetter(source=source_of(record), error=summary, detail=detail, record=text, record_base64=raw)


def prediction_event(record: Record, result: AnalyzeResult) -> PredictionEvent:
    return {
        "traffic_data_id": result.flow_id or f"{record.topic}:{record.partition}:{record.offset}",
        "kind": result.kind,
        "threat_prediction": result.threat_prediction,
        "attack_prediction": result.attack_prediction,
        "self_healing_action": result.self_healing_action,
        "source": source_of(record),
    }


def event_json(event: PredictionEvent) -> bytes:
    return _EVENT.dump_json(event)


def dead_letter_json(letter: DeadLetter) -> bytes:
    return letter.__pydantic_serializer__.to_json(letter)
