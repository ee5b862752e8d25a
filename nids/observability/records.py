"""What a predicting API hands to the prediction log: one `PredictionBatch` per call, built in microseconds.

The batch keeps references to the validated flows and the predictions the API returns; turning them into rows
(`PredictionBatch.rows()`) happens on the log's writer thread, off the request path: from the columns of a
`FlowBatch` and its scores for the batched APIs, from the response objects for analyze. Any producer (the service's
APIs, the stream worker) builds one with `of_threats`, `of_attacks` or `of_analysis` and passes it to a
`PredictionSink`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson

from nids.core.columns import AttackScores, FlowBatch, ThreatScores
from nids.core.features import ATTACK_CLASSES, ATTACK_FEATURES, THREAT_FEATURES
from nids.core.schemas import ATTACK_ATTRIBUTE, CONTEXT_FIELDS, ThreatFlow

if TYPE_CHECKING:
    from nids.core.actions import HealingAction
    from nids.core.model import ActiveModels
    from nids.core.schemas import AnalyzeFlow, AnalyzeResponse, AttackFlow, AttackPrediction, ThreatPrediction

Source = Literal["api", "csv", "stream"]
SOURCES: tuple[Source, ...] = ("api", "csv", "stream")
BENIGN = ATTACK_CLASSES[0]

# the columns of one logged prediction (besides its id), in table order
COLUMNS: tuple[str, ...] = (
    "created_at",
    "source",
    "batch_id",
    "kind",
    *CONTEXT_FIELDS,
    "is_attack",
    "threat_score",
    "threshold",
    "attack_type",
    "attack_confidence",
    "action_id",
    "action_type",
    "action_status",
    "action_description",
    "action_params",
    "threat_model_version",
    "attack_model_version",
    "features",
    "attack_probability",
)


class PredictionSink(Protocol):
    """Where predictions go (the prediction log): `record` must return at once, whatever the store does."""

    def record(self, batch: PredictionBatch) -> None: ...


@dataclass(frozen=True)
class PredictionBatch:
    """The flows of one API call and what was predicted and decided for each (None where a part does not apply)."""

    source: Source
    threat_model_version: str
    attack_model_version: str
    flows: FlowBatch | Sequence[ThreatFlow | AttackFlow]
    threats: ThreatScores | Sequence[ThreatPrediction | None]
    attacks: AttackScores | Sequence[AttackPrediction | None]
    actions: Sequence[HealingAction | None]
    created_at: float = field(default_factory=time.time)
    batch_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # a worker's own warm-up predictions (nids.serving.warmup): through the whole path, dropped before the insert
    warm_up: bool = False

    def __len__(self) -> int:
        return len(self.flows)

    @classmethod
    def of_threats(
        cls, models: ActiveModels, flows: FlowBatch | Sequence[ThreatFlow], scores: ThreatScores, source: Source
    ) -> PredictionBatch:
        none = [None] * len(flows)
        return cls(source, models.threat.tag, models.attack.tag, FlowBatch.of("threat", flows), scores, none, none)

    @classmethod
    def of_attacks(
        cls, models: ActiveModels, flows: FlowBatch | Sequence[AttackFlow], scores: AttackScores, source: Source
    ) -> PredictionBatch:
        none = [None] * len(flows)
        return cls(source, models.threat.tag, models.attack.tag, FlowBatch.of("attack", flows), none, scores, none)

    @classmethod
    def of_analysis(
        cls, models: ActiveModels, items: Sequence[AnalyzeFlow], response: AnalyzeResponse, source: Source
    ) -> PredictionBatch:
        results = response.results
        return cls(
            source,
            models.threat.tag,
            models.attack.tag,
            [item.root for item in items],
            [r.threat_prediction for r in results],
            [r.attack_prediction for r in results],
            [r.self_healing_action for r in results],
        )

    def rows(self) -> list[tuple[Any, ...]]:
        """One row per flow: its values in COLUMNS order."""
        if isinstance(self.flows, FlowBatch):
            return self._batch_rows(self.flows)
        return _part_rows(self._common(), [flow.__dict__ for flow in self.flows], self._parts())

    def _common(self) -> tuple[float, str, str, str, str]:
        return self.created_at, self.source, self.batch_id, self.threat_model_version, self.attack_model_version

    def _parts(self) -> list[Part]:
        """Per flow, what its row takes from the flow's kind, predictions and action (plain values)."""
        return [
            (
                isinstance(flow, ThreatFlow),
                None if t is None else (t.is_attack, t.prediction_score, t.threshold, t.attack_probability),
                None if a is None else (a.attack_type_name, a.confidence),
                None
                if x is None
                else (x.action_id, x.action_type, str(x.status), x.action_description, x.action_params),
            )
            for flow, t, a, x in zip(self.flows, self.threats, self.attacks, self.actions, strict=True)
        ]

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled for the log's writer process (nids.observability.process): a batch of per-flow objects (analyze,
        the stream) travels as an EncodedBatch, two JSON documents written by orjson (~2 us per flow, where
        pickling the pydantic objects took ~20); a batch of columns as itself (numpy arrays and lists)."""
        if isinstance(self.flows, FlowBatch):
            return PredictionBatch, tuple(getattr(self, f.name) for f in fields(self))
        flows = orjson.dumps([flow.__dict__ for flow in self.flows])
        return EncodedBatch, (self._common(), len(self.flows), flows, orjson.dumps(self._parts()), self.warm_up)

    def _batch_rows(self, flows: FlowBatch) -> list[tuple[Any, ...]]:
        """The rows of a batched API's call, column by column (one kind, no action)."""
        n = len(flows)
        none: list[Any] = [None] * n
        columns: dict[str, Sequence[Any]] = {
            "created_at": [self.created_at] * n,
            "source": [self.source] * n,
            "batch_id": [self.batch_id] * n,
            "kind": [flows.kind] * n,
            **flows.context,
            "threat_model_version": [self.threat_model_version] * n,
            "attack_model_version": [self.attack_model_version] * n,
            "features": [orjson.dumps(features).decode() for features in flows.feature_dicts()],
        }
        if isinstance(self.threats, ThreatScores):
            columns["is_attack"] = self.threats.is_attack.astype(int).tolist()
            columns["threat_score"] = self.threats.scores.tolist()
            columns["threshold"] = [self.threats.threshold] * n
            columns["attack_probability"] = self.threats.probability.tolist()
        elif isinstance(self.attacks, AttackScores):
            names = [self.attacks.class_names[code] for code in self.attacks.codes.tolist()]
            columns["is_attack"] = [int(name != BENIGN) for name in names]
            columns["attack_type"] = names
            columns["attack_confidence"] = self.attacks.top_proba[:, 0].tolist()
        ordered = [columns.get(column, none) for column in COLUMNS]
        return list(zip(*ordered, strict=True))


# per flow: is it a 10-feature flow; (is_attack, prediction_score, threshold, attack_probability) of its threat
# verdict; (attack_type_name, confidence) of its attack type; (action_id, action_type, status, description, params)
Part = tuple[bool, tuple[Any, ...] | None, tuple[Any, ...] | None, tuple[Any, ...] | None]
_ATTACK_ATTRIBUTES = tuple(ATTACK_ATTRIBUTE[name] for name in ATTACK_FEATURES)
assert COLUMNS[:4] == ("created_at", "source", "batch_id", "kind") and COLUMNS[4:9] == CONTEXT_FIELDS
assert COLUMNS[9:] == (
    "is_attack", "threat_score", "threshold", "attack_type", "attack_confidence", "action_id", "action_type",
    "action_status", "action_description", "action_params", "threat_model_version", "attack_model_version",
    "features", "attack_probability",
)  # fmt: skip


def _part_rows(common: Sequence[Any], flows: Sequence[dict[str, Any]], parts: Sequence[Part]) -> list[tuple[Any, ...]]:
    """The rows of per-flow batches, in COLUMNS order: each flow's attributes (its `__dict__`) and its parts."""
    created_at, source, batch_id, threat_version, attack_version = common
    rows = []
    for flow, (is_threat, threat, attack, action) in zip(flows, parts, strict=True):
        if is_threat:
            features = {name: flow[name] for name in THREAT_FEATURES}
        else:
            features = dict(zip(ATTACK_FEATURES, map(flow.__getitem__, _ATTACK_ATTRIBUTES), strict=True))
        is_attack = threat[0] if threat is not None else attack is not None and attack[0] != BENIGN
        rows.append(
            (
                created_at, source, batch_id, "threat" if is_threat else "attack",
                flow["flow_id"], flow["src_ip"], flow["dst_ip"], flow["src_port"], flow["timestamp"],
                int(is_attack),
                *(threat[1:3] if threat is not None else (None, None)),
                *(attack if attack is not None else (None, None)),
                *(action[:4] if action is not None else (None, None, None, None)),
                orjson.dumps(action[4]).decode() if action is not None else None,
                threat_version, attack_version,
                orjson.dumps(features).decode(),
                threat[3] if threat is not None else None,
            )
        )  # fmt: skip
    return rows


def user_rows(batches: Iterable[PredictionBatch | EncodedBatch]) -> int:
    """The rows of users' predictions in `batches`: a worker's warm-up is never stored, so never counted as lost."""
    return sum(len(batch) for batch in batches if not batch.warm_up)


@dataclass(frozen=True)
class EncodedBatch:
    """A PredictionBatch of per-flow objects as it reaches the log's writer process: JSON decoded only there."""

    common: tuple[float, str, str, str, str]  # created_at, source, batch_id, threat and attack model versions
    count: int
    flows: bytes  # the flows' attributes
    parts: bytes  # their Parts
    warm_up: bool = False  # as PredictionBatch.warm_up

    def __len__(self) -> int:
        return self.count

    def rows(self) -> list[tuple[Any, ...]]:
        return _part_rows(self.common, orjson.loads(self.flows), [tuple(p) for p in orjson.loads(self.parts)])
