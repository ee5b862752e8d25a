"""What analysts said about logged predictions (issue 21): one verdict per prediction, kept beside the log.

A verdict is about the prediction's threat verdict (attack or benign): true_positive and false_positive for a
prediction of attack, false_negative and true_negative for a prediction of benign; a 42-feature flow may also
name its right attack type. Posting again for the same prediction replaces the verdict (`revisions` counts how
often), never adds a second one. Each row copies what it needs from the prediction (kind, the model version that
made the verdict, the predicted class, the features), so statistics and retraining keep working after the
prediction log's retention deleted the prediction itself. The table lives in the prediction log's database:
every worker and replica sharing the log shares the verdicts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from nids.core.database import Database, check_prefix
from nids.core.errors import InvalidInput
from nids.core.features import ATTACK_CLASSES
from nids.observability.feedback_schemas import VERDICTS, Feedback, FeedbackCounts, FeedbackIn
from nids.observability.schemas import LoggedPrediction, TimeWindow
from nids.observability.store import window_condition

BENIGN = ATTACK_CLASSES[0]
# the verdicts that say the prediction was an attack (by the model) / the flow is an attack (truly)
PREDICTED_ATTACK = frozenset({"true_positive", "false_positive"})
TRULY_ATTACK = frozenset({"true_positive", "false_negative"})


def _ratio(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 6) if denominator else None


def counts(
    model_version: str, kind: Literal["threat", "attack"], tally: dict[str, int], corrected: int
) -> FeedbackCounts:
    tp, fp, fn, tn = (tally.get(verdict, 0) for verdict in VERDICTS)
    return FeedbackCounts(
        model_version=model_version,
        kind=kind,
        true_positive=tp,
        false_positive=fp,
        false_negative=fn,
        true_negative=tn,
        total=tp + fp + fn + tn,
        precision=_ratio(tp, tp + fp),
        false_positive_rate=_ratio(fp, fp + tn),
        false_negative_rate=_ratio(fn, fn + tp),
        attack_type_corrections=corrected,
    )


def label_of(kind: str, verdict: str, attack_type: str | None, predicted_type: str | None) -> str | None:
    """The training label a verdict gives: threat flows normal/attack; attack flows their class (None: unknown)."""
    attack = verdict in TRULY_ATTACK
    if kind == "threat":
        return "attack" if attack else "normal"
    if not attack:
        return BENIGN
    if attack_type is not None:
        return attack_type
    return predicted_type if verdict == "true_positive" else None


def check(prediction: LoggedPrediction, feedback: FeedbackIn) -> None:
    """A verdict must fit what was predicted; an attack type only for 42-feature flows, and only with a verdict of
    attack (BENIGN is what false_positive / true_negative already say). 400 naming the field otherwise."""
    predicted_attack = prediction.threat_prediction.is_attack
    problems = []
    if (feedback.verdict in PREDICTED_ATTACK) != predicted_attack:
        allowed = "true_positive or false_positive" if predicted_attack else "false_negative or true_negative"
        said = "attack" if predicted_attack else "benign"
        problems.append(("verdict", f"prediction {prediction.traffic_data_id} said {said}: the verdict is {allowed}"))
    if feedback.attack_type is not None:
        if prediction.kind == "threat":
            problems.append(("attack_type", "attack_type applies to 42-feature flows (the attack classifier's)"))
        elif (feedback.attack_type == BENIGN) == (feedback.verdict in TRULY_ATTACK):
            problems.append(("attack_type", f"attack_type {feedback.attack_type!r} contradicts {feedback.verdict}"))
    if problems:
        detail = [{"loc": ["body", field], "msg": message, "type": "feedback_mismatch"} for field, message in problems]
        raise InvalidInput(problems[0][1], detail=detail)


_COLUMNS = (
    "prediction_id",
    "kind",
    "model_version",
    "predicted_attack",
    "predicted_type",
    "predicted_at",
    "verdict",
    "attack_type",
    "note",
    "analyst",
    "created_at",
    "updated_at",
    "revisions",
    "features",
)


class FeedbackStore:
    """The verdicts table (`<prefix>feedback`) in the prediction log's database."""

    def __init__(self, db: Database, table_prefix: str = "nids_") -> None:
        check_prefix(table_prefix)
        self.db = db
        self.table = f"{table_prefix}feedback"
        real = "DOUBLE PRECISION"
        key = "BIGINT PRIMARY KEY" if db.dialect != "sqlite" else "INTEGER PRIMARY KEY"
        self.db.execute(
            [
                (
                    f"CREATE TABLE IF NOT EXISTS {self.table} (prediction_id {key}, kind TEXT NOT NULL, "
                    f"model_version TEXT, predicted_attack INTEGER NOT NULL, predicted_type TEXT, predicted_at {real} "
                    "NOT NULL, verdict TEXT NOT NULL, attack_type TEXT, note TEXT, analyst TEXT NOT NULL, "
                    f"created_at {real} NOT NULL, updated_at {real} NOT NULL, revisions INTEGER NOT NULL, "
                    "features TEXT NOT NULL)",
                    {},
                ),
                (f"CREATE INDEX IF NOT EXISTS {self.table}_predicted ON {self.table} (predicted_at)", {}),
            ]
        )

    def give(self, prediction: LoggedPrediction, feedback: FeedbackIn, analyst: str, now: float) -> Feedback:
        """Record (or replace) the verdict on a logged prediction (with its features); the stored row."""
        check(prediction, feedback)
        attack = prediction.attack_prediction
        version = attack.model_version if prediction.kind == "attack" and attack else None
        values = {
            "prediction_id": prediction.traffic_data_id,
            "kind": prediction.kind,
            "model_version": version or prediction.threat_prediction.model_version,
            "predicted_attack": int(prediction.threat_prediction.is_attack),
            "predicted_type": attack.attack_type_name if attack else None,
            "predicted_at": prediction.timestamp.timestamp(),
            "verdict": feedback.verdict,
            "attack_type": feedback.attack_type,
            "note": feedback.note,
            "analyst": analyst,
            "created_at": now,
            "updated_at": now,
            "revisions": 1,
            "features": json.dumps(prediction.features or {}),
        }
        replaced = ("verdict", "attack_type", "note", "analyst", "updated_at")
        sql = (
            f"INSERT INTO {self.table} ({', '.join(_COLUMNS)}) VALUES ({', '.join(':' + c for c in _COLUMNS)}) "
            f"ON CONFLICT (prediction_id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in replaced)}, "
            f"revisions = {self.table}.revisions + 1 RETURNING {', '.join(_COLUMNS)}"
        )
        return _feedback(self.db.execute([(sql, values)])[0])

    def get(self, prediction_id: int) -> Feedback | None:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM {self.table} WHERE prediction_id = :id"
        rows = self.db.execute([(sql, {"id": prediction_id})])
        return _feedback(rows[0]) if rows else None

    def labelled(self, kind: str) -> list[tuple[dict[str, Any], str, Feedback]]:
        """Every verdict on `kind` flows that gives a training label: (features, label, the verdict), oldest first."""
        sql = f"SELECT {', '.join(_COLUMNS)} FROM {self.table} WHERE kind = :kind ORDER BY prediction_id"
        labelled = []
        for row in self.db.execute([(sql, {"kind": kind})]):
            feedback = _feedback(row)
            if feedback.label is not None:
                labelled.append((json.loads(row[-1]), feedback.label, feedback))
        return labelled

    def stats(self, window: TimeWindow, now: float) -> list[FeedbackCounts]:
        """Verdicts per model version (predictions made in the window), most judged first."""
        where, params = window_condition(window, now, "predicted_at")
        condition = " AND ".join(where) or "1 = 1"
        corrected = "attack_type IS NOT NULL AND predicted_type IS NOT NULL AND attack_type <> predicted_type"
        sql = (
            f"SELECT model_version, kind, verdict, COUNT(*), SUM(CASE WHEN {corrected} AND verdict = 'true_positive' "
            f"THEN 1 ELSE 0 END) FROM {self.table} WHERE {condition} GROUP BY model_version, kind, verdict"
        )
        tallies: dict[tuple[str, str], tuple[dict[str, int], int]] = {}
        for version, kind, verdict, n, fixed in self.db.execute([(sql, params)]):
            tally, before = tallies.get((version or "", kind), ({}, 0))
            tally[verdict] = int(n)
            tallies[(version or "", kind)] = (tally, before + int(fixed or 0))
        result = [counts(version, kind, tally, fixed) for (version, kind), (tally, fixed) in tallies.items()]
        return sorted(result, key=lambda c: (-c.total, c.model_version))


def _feedback(row: Sequence[Any]) -> Feedback:
    v = dict(zip(_COLUMNS, row, strict=True))
    return Feedback(
        prediction_id=v["prediction_id"],
        verdict=v["verdict"],
        attack_type=v["attack_type"],
        note=v["note"],
        analyst=v["analyst"],
        created_at=datetime.fromtimestamp(v["created_at"], UTC),
        updated_at=datetime.fromtimestamp(v["updated_at"], UTC),
        revisions=v["revisions"],
        kind=v["kind"],
        model_version=v["model_version"],
        predicted_attack=bool(v["predicted_attack"]),
        predicted_type=v["predicted_type"],
        label=label_of(v["kind"], v["verdict"], v["attack_type"], v["predicted_type"]),
    )
