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
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson

from nids.core.columns import AttackScores, FlowBatch, ThreatScores
from nids.core.features import ATTACK_CLASSES, ATTACK_FEATURES, THREAT_FEATURES
from nids.core.schemas import CONTEXT_FIELDS, ThreatFlow

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
        common = {
            "created_at": self.created_at,
            "source": self.source,
            "batch_id": self.batch_id,
            "threat_model_version": self.threat_model_version,
            "attack_model_version": self.attack_model_version,
        }
        rows = []
        for flow, threat, attack, action in zip(self.flows, self.threats, self.attacks, self.actions, strict=True):
            is_threat = isinstance(flow, ThreatFlow)
            names = THREAT_FEATURES if is_threat else ATTACK_FEATURES
            rows.append(
                {
                    **common,
                    **flow.context(),
                    "kind": "threat" if is_threat else "attack",
                    "is_attack": int(threat.is_attack if threat else attack is not None and _is_attack(attack)),
                    "threat_score": threat.prediction_score if threat else None,
                    "threshold": threat.threshold if threat else None,
                    "attack_type": attack.attack_type_name if attack else None,
                    "attack_confidence": attack.confidence if attack else None,
                    "action_id": action.action_id if action else None,
                    "action_type": action.action_type if action else None,
                    "action_status": str(action.status) if action else None,
                    "action_description": action.action_description if action else None,
                    "action_params": orjson.dumps(action.action_params).decode() if action else None,
                    "attack_probability": threat.attack_probability if threat else None,
                    "features": orjson.dumps({name: flow[name] for name in names}).decode(),
                }
            )
        return list(map(_IN_ORDER, rows))

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


_IN_ORDER = itemgetter(*COLUMNS)


def _is_attack(prediction: AttackPrediction) -> bool:
    return prediction.attack_type_name != BENIGN
