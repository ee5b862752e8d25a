"""What a predicting API hands to the prediction log: one `PredictionBatch` per call, built in microseconds.

The batch keeps references to the validated flows and the predictions the API returns; turning them into rows
(`PredictionBatch.rows()`) happens on the log's writer thread, off the request path. Any producer (the service's
APIs, the stream worker) builds one with `of_threats`, `of_attacks` or `of_analysis` and passes it to a
`PredictionSink`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

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
    "threat_model_version",
    "attack_model_version",
    "features",
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
    flows: Sequence[ThreatFlow | AttackFlow]
    threats: Sequence[ThreatPrediction | None]
    attacks: Sequence[AttackPrediction | None]
    actions: Sequence[HealingAction | None]
    created_at: float = field(default_factory=time.time)
    batch_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __len__(self) -> int:
        return len(self.flows)

    @classmethod
    def of_threats(
        cls, models: ActiveModels, flows: Sequence[ThreatFlow], predictions: Sequence[ThreatPrediction], source: Source
    ) -> PredictionBatch:
        none = [None] * len(flows)
        return cls(source, models.threat.tag, models.attack.tag, flows, predictions, none, none)

    @classmethod
    def of_attacks(
        cls, models: ActiveModels, flows: Sequence[AttackFlow], predictions: Sequence[AttackPrediction], source: Source
    ) -> PredictionBatch:
        none = [None] * len(flows)
        return cls(source, models.threat.tag, models.attack.tag, flows, none, predictions, none)

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

    def rows(self) -> list[dict[str, Any]]:
        """One row (COLUMNS) per flow."""
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
                    "features": json.dumps({name: flow[name] for name in names}),
                }
            )
        return rows


def _is_attack(prediction: AttackPrediction) -> bool:
    return prediction.attack_type_name != BENIGN
