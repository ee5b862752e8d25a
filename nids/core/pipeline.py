"""What the APIs do, independent of any server: validated flows in, predictions and actions out.

Every function takes the models snapshot it works with (`ModelRegistry.active()`), so a version switch
never mixes two versions inside one request. Flows are scored as columns (nids.core.columns.FlowBatch: the
batched APIs validate straight into one, analyze converts its flow models); the rest is vectorised over the
batch. Self-healing is a `Healer` (the engine's `handle`), and what was predicted is reported to an
`Observer` (the service's Prometheus metrics): the core knows neither.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from pydantic import TypeAdapter, ValidationError

from nids.core.actions import AttackEvent, HealingAction
from nids.core.columns import AttackScores, FlowBatch, ThreatScores
from nids.core.encoding import UNKNOWN_CODE
from nids.core.errors import InvalidInput, RequestTooLarge
from nids.core.features import THREAT_FEATURES
from nids.core.schemas import (
    ATTACK_ATTRIBUTE,
    CONTEXT_FIELDS,
    AnalyzeFlow,
    AnalyzeResponse,
    AnalyzeResult,
    AnalyzeSummary,
    AttackPrediction,
    ExplainedAttackPrediction,
    ExplainedThreatPrediction,
    Explanation,
    FeatureContribution,
    ModelDescription,
    ModelInfo,
    ThreatFlow,
    ThreatPrediction,
    flow_kind,
)
from nids.core.validation import invalid_fields

if TYPE_CHECKING:
    from nids.core.model import ActiveModels, LoadedModel
    from nids.core.schemas import AttackFlow

Healer = Callable[[Sequence[AttackEvent]], list[HealingAction]]


class Observer(Protocol):
    """Told what was predicted and decided (e.g. to count it); every method is called once per batch."""

    def count_threats(self, is_attack: np.ndarray) -> None: ...

    def count_unknown_categories(self, feature: str, flows: int) -> None: ...

    def count_attacks(self, codes: np.ndarray, class_names: Sequence[str]) -> None: ...

    def count_actions(self, actions: Iterable[HealingAction]) -> None: ...


TOP_CLASSES = 3
BENIGN_CODE = 0  # ATTACK_CLASSES[0] == "BENIGN"
# the original system's threat scale: 0.0-0.5 normal, 0.5-1.0 attack (verdict_scores)
SCORE_THRESHOLD = 0.5
_JUST_BELOW = float(np.nextafter(SCORE_THRESHOLD, 0.0))

# CICFlowMeter's own names of the context columns (both releases) -> context field
CSV_CONTEXT_COLUMNS: dict[str, str] = {
    "flow id": "flow_id",
    "source ip": "src_ip",
    "src ip": "src_ip",
    "destination ip": "dst_ip",
    "dst ip": "dst_ip",
    "source port": "src_port",
    "src port": "src_port",
    "timestamp": "timestamp",
}
_CSV_ROWS = TypeAdapter(list[AnalyzeFlow])
# the feature columns a CSV may carry, by flow kind (attack: spaced original names and snake_case)
_CSV_FEATURES: dict[str, frozenset[str]] = {
    "threat": frozenset(THREAT_FEATURES),
    "attack": frozenset(ATTACK_ATTRIBUTE) | frozenset(ATTACK_ATTRIBUTE.values()),
}


def probabilities(model: LoadedModel, flows: FlowBatch) -> np.ndarray:
    """(n, n_classes) class probabilities, clipped to [0, 1] (float32 sums can exceed 1 by an ulp)."""
    if not len(flows):
        return np.empty((0, len(model.class_names)))
    return np.clip(model.predict_proba(flows.matrix(model)), 0.0, 1.0)


def check_codes(model: LoadedModel, flows: FlowBatch, rows: Sequence[int] | None = None) -> None:
    """Refuse category codes past the serving model's categories (400 naming row and field).

    `rows` are the flows' positions in the request (default: 0..n-1), so the error names the row the caller sent.
    """
    detail = []
    for feature in flows.categories:
        high = len(model.encoders.get(feature, ())) - 1
        for position in np.flatnonzero(flows.codes(model, feature) > high).tolist():  # names encode within bounds
            row = position if rows is None else rows[position]
            message = f"Input should be a known name or a code within [0, {high}]"
            detail.append({"loc": ["flows", row, feature], "msg": message, "type": "category_code"})
    if detail:
        raise InvalidInput.fields(sorted(detail, key=lambda item: item["loc"][1]))


def detect_threats(
    models: ActiveModels,
    flows: FlowBatch | Sequence[ThreatFlow],
    observer: Observer | None = None,
    rows: Sequence[int] | None = None,
) -> ThreatScores:
    model = models.threat
    batch = FlowBatch.of("threat", flows)
    check_codes(model, batch, rows)
    probability = probabilities(model, batch)[:, 1]
    threshold = float(model.threshold if model.threshold is not None else SCORE_THRESHOLD)  # none recorded: argmax
    scores, is_attack = verdict_scores(probability, threshold)
    unknown = unknown_categories(model, batch)
    if observer is not None and len(batch):
        observer.count_threats(is_attack)
        for feature, n in Counter(name for names in unknown for name in names).items():
            observer.count_unknown_categories(feature, n)
    return ThreatScores(batch.context, scores, is_attack, SCORE_THRESHOLD, model.tag, unknown, probability, threshold)


def verdict_scores(probability: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The original system's threat score of P(attack) and the verdict: `score >= 0.5` exactly when
    `probability >= threshold`.

    A monotone piecewise-linear map: [0, threshold) onto [0, 0.5), [threshold, 1] onto [0.5, 1]. Rounding cannot
    cross 0.5: a normal verdict's score is held just below it, an attack's at 0.5 or above.
    """
    p = np.asarray(probability, dtype=np.float64)
    is_attack = p >= threshold
    with np.errstate(divide="ignore", invalid="ignore"):
        below = p * (SCORE_THRESHOLD / threshold) if threshold > 0 else np.zeros_like(p)
        above = SCORE_THRESHOLD + (p - threshold) * (SCORE_THRESHOLD / (1 - threshold)) if threshold < 1 else p
    scores = np.where(is_attack, np.clip(above, SCORE_THRESHOLD, 1.0), np.clip(below, 0.0, _JUST_BELOW))
    return scores, is_attack


def classifier_verdict_scores(proba: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The threat score of a verdict made by the attack classifier (attack when the predicted class is not BENIGN):
    0.5 + (P(most probable attack class) - P(BENIGN)) / 2, held on the side of 0.5 its verdict is on."""
    if not len(proba):
        return np.empty(0)
    margin = proba[:, BENIGN_CODE + 1 :].max(axis=1) - proba[:, BENIGN_CODE]
    scores = SCORE_THRESHOLD + margin * SCORE_THRESHOLD
    attack = codes != BENIGN_CODE
    return np.where(attack, np.clip(scores, SCORE_THRESHOLD, 1.0), np.clip(scores, 0.0, _JUST_BELOW))


def unknown_categories(model: LoadedModel, flows: FlowBatch) -> list[Sequence[str]]:
    """Per flow, the categorical features whose name the model does not know (scored as the unknown code); the
    flows that named none share one empty tuple."""
    unknown: list[Sequence[str]] = [()] * len(flows)
    for feature in flows.categories:  # codes are never negative: UNKNOWN_CODE marks an unknown name
        for position in np.flatnonzero(flows.codes(model, feature) == UNKNOWN_CODE).tolist():
            unknown[position] = (*unknown[position], feature)
    return unknown


def classify_attacks(
    models: ActiveModels, flows: FlowBatch | Sequence[AttackFlow], observer: Observer | None = None
) -> AttackScores:
    batch = FlowBatch.of("attack", flows)
    return attack_scores(models.attack, batch, probabilities(models.attack, batch), observer)


def attack_scores(model: LoadedModel, flows: FlowBatch, proba: np.ndarray, observer: Observer | None) -> AttackScores:
    """The predictions of a batch from its probability matrix: the TOP_CLASSES most probable classes of each."""
    top = np.argsort(-proba, axis=1, kind="stable")[:, :TOP_CLASSES]
    if observer is not None and len(flows):
        observer.count_attacks(top[:, 0], model.class_names)
    return AttackScores(flows.context, top, np.take_along_axis(proba, top, axis=1), model.class_names, model.tag)


def explain(model: LoadedModel, flows: FlowBatch, classes: np.ndarray, top: int) -> list[Explanation]:
    """Per flow, why `model` gave it P(classes[i]): the `top` largest contributions by magnitude and the rest's sum.

    score == base_value + sum of every contribution (nids.models.explain: exact path contributions)."""
    if not len(flows):
        return []
    contributions = model.explain(flows.matrix(model), classes)
    values = contributions.values
    order = np.argsort(-np.abs(values), axis=1, kind="stable")
    listed_values = values.tolist()
    rest = values.copy()
    np.put_along_axis(rest, order[:, :top], 0.0, axis=1)
    totals, others = values.sum(axis=1).tolist(), rest.sum(axis=1).tolist()
    names, version = model.feature_names, model.tag
    explanations = []
    for row, (features, base, chosen, code) in enumerate(
        zip(flows.feature_dicts(), contributions.base.tolist(), order[:, :top].tolist(), classes.tolist(), strict=True)
    ):
        listed = [  # built from the model's own numbers: constructed, not validated (~2 us instead of ~60 a flow)
            FeatureContribution.model_construct(
                feature=names[j], value=features[names[j]], contribution=listed_values[row][j]
            )
            for j in chosen
        ]
        explanations.append(
            Explanation.model_construct(
                method="path_contributions",
                explained_class=model.class_names[code],
                score=base + totals[row],
                base_value=base,
                top_features=listed,
                other_features=others[row],
                model_version=version,
            )
        )
    return explanations


def explain_predicted(model: LoadedModel, flows: FlowBatch, top: int) -> list[Explanation]:
    """Explanations of the class `model` predicts for each flow (the threshold's for the detector, else argmax):
    how a logged prediction is explained again by the version that made it."""
    proba = probabilities(model, flows)
    if model.threshold is not None:
        classes = (proba[:, 1] >= model.threshold).astype(np.int64)
    else:
        classes = np.argmax(proba, axis=1)
    return explain(model, flows, classes, top)


def explain_threats(
    models: ActiveModels, flows: FlowBatch, top: int, observer: Observer | None = None
) -> tuple[ThreatScores, list[ExplainedThreatPrediction]]:
    """detect_threats with an explanation of each flow's verdict (the predicted class: attack or normal)."""
    scores = detect_threats(models, flows, observer)
    explanations = explain(models.threat, flows, scores.is_attack.astype(np.int64), top)
    return scores, [
        ExplainedThreatPrediction(**record, explanation=explanation)
        for record, explanation in zip(scores.records(), explanations, strict=True)
    ]


def explain_attacks(
    models: ActiveModels, flows: FlowBatch, top: int, observer: Observer | None = None
) -> tuple[AttackScores, list[ExplainedAttackPrediction]]:
    """classify_attacks with an explanation of each flow's predicted class."""
    scores = classify_attacks(models, flows, observer)
    explanations = explain(models.attack, flows, scores.codes, top)
    return scores, [
        ExplainedAttackPrediction(**record, explanation=explanation)
        for record, explanation in zip(scores.records(), explanations, strict=True)
    ]


def self_heal(heal: Healer, events: Sequence[AttackEvent], observer: Observer | None = None) -> list[HealingAction]:
    actions = heal(events)
    if observer is not None:
        observer.count_actions(actions)
    return actions


def analyze(
    models: ActiveModels,
    heal: Healer,
    items: Sequence[AnalyzeFlow],
    observer: Observer | None = None,
    explain_top: int = 0,
) -> AnalyzeResponse:
    """The whole pipeline per flow: threat verdict, attack type and self-healing action (42-feature flows).

    A 42-feature flow's threat verdict comes from the classifier: attack when the predicted class is not BENIGN,
    attack_probability = 1 - P(BENIGN) (summed over the attack classes: never below the most probable attack
    class's probability, which 1 - P(BENIGN) of a normalised calibrated row can be by a rounding), prediction_score
    on the 0.5 scale (classifier_verdict_scores). A
    10-feature flow has no attack type, hence no action. With `explain_top` > 0 each result explains its
    verdict: the detector's class for a 10-feature flow, the classifier's for a 42-feature flow, with that many
    features.
    """
    flows = [item.root for item in items]
    threat_index = [i for i, flow in enumerate(flows) if isinstance(flow, ThreatFlow)]
    attack_index = [i for i, flow in enumerate(flows) if not isinstance(flow, ThreatFlow)]
    threat_flows = FlowBatch.of("threat", [flows[i] for i in threat_index])
    attack_flows = FlowBatch.of("attack", [flows[i] for i in attack_index])

    results: dict[int, AnalyzeResult] = {}
    threat_scores = detect_threats(models, threat_flows, observer, threat_index)
    for i, prediction in zip(threat_index, threat_scores, strict=True):
        results[i] = AnalyzeResult(**_echo(prediction), index=i, kind="threat", threat_prediction=prediction)

    proba = probabilities(models.attack, attack_flows)
    attack_predictions = attack_scores(models.attack, attack_flows, proba, observer)
    codes = attack_predictions.codes
    events = [
        AttackEvent(
            attack_type=p.attack_type_name,
            confidence=p.confidence,
            src_ip=p.src_ip,
            dst_ip=p.dst_ip,
            flow_id=p.flow_id,
            timestamp=p.timestamp,
            model_version=p.model_version,
        )
        for p in attack_predictions
    ]
    actions = self_heal(heal, events, observer) if events else []
    attack_proba = np.minimum(proba[:, BENIGN_CODE + 1 :].sum(axis=1), 1.0)
    verdict_score = classifier_verdict_scores(proba, codes)
    for i, prediction, p_attack, score, code, action in zip(
        attack_index, attack_predictions, attack_proba, verdict_score, codes, actions, strict=True
    ):
        verdict = ThreatPrediction(
            **_echo(prediction),
            prediction_score=float(score),
            is_attack=bool(code != BENIGN_CODE),
            threshold=SCORE_THRESHOLD,
            model_version=prediction.model_version,
            attack_probability=float(p_attack),
            decision_threshold=None,
        )
        results[i] = AnalyzeResult(
            **_echo(prediction),
            index=i,
            kind="attack",
            threat_prediction=verdict,
            attack_prediction=prediction,
            self_healing_action=action,
        )
    if explain_top > 0:
        threat_classes = threat_scores.is_attack.astype(np.int64)
        for i, explanation in zip(
            threat_index, explain(models.threat, threat_flows, threat_classes, explain_top), strict=True
        ):
            results[i].explanation = explanation
        for i, explanation in zip(attack_index, explain(models.attack, attack_flows, codes, explain_top), strict=True):
            results[i].explanation = explanation
    ordered = [results[i] for i in range(len(flows))]
    return AnalyzeResponse(results=ordered, summary=summarise(ordered))


def _echo(prediction: ThreatPrediction | AttackPrediction) -> dict[str, Any]:
    return {name: getattr(prediction, name) for name in CONTEXT_FIELDS}


def summarise(results: Sequence[AnalyzeResult]) -> AnalyzeSummary:
    return AnalyzeSummary(
        total=len(results),
        by_verdict=dict(Counter("attack" if r.threat_prediction.is_attack else "benign" for r in results)),
        by_attack_type=dict(Counter(r.attack_prediction.attack_type_name for r in results if r.attack_prediction)),
        by_action=dict(Counter(r.self_healing_action.action_type for r in results if r.self_healing_action)),
    )


def read_csv(
    path: Path, *, max_rows: int, max_bytes: int, parameter: str = "file"
) -> tuple[list[AnalyzeFlow], list[str]]:
    """Validated flows of an uploaded CSV (CICFlowMeter or NSL-KDD columns) and the columns ignored.

    Columns that are neither features nor context (labels, the other CICFlowMeter features) are ignored and
    reported; a feature no column holds rejects the upload once, naming the missing columns; an invalid value
    rejects it naming `parameter`, row and column. A
    byte-order mark and CRLF line ends are read as usual; an empty file, a file without data rows, duplicate
    column names and rows with more or fewer cells than the header are refused (400).
    """
    size = path.stat().st_size
    if size > max_bytes:
        raise RequestTooLarge(f"the CSV file has {size} bytes; the limit is {max_bytes} (NIDS_MAX_CSV_BYTES)")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            duplicates = sorted(name for name, n in Counter(header).items() if n > 1)
            if duplicates:
                message = f"duplicate CSV column(s) {duplicates}: each column may appear once"
                raise _csv_error(parameter, message, "csv_header")
            keep = _csv_columns(header)
            if missing := _missing_features(header):
                message = f"the CSV file has no column {missing}: every row needs these features"
                raise _csv_error(parameter, message, "csv_missing_columns")
            rows = []
            for line in reader:
                if len(rows) == max_rows:
                    raise RequestTooLarge(f"the CSV file has more than {max_rows} rows (NIDS_MAX_ROWS_PER_REQUEST)")
                if len(line) != len(header):
                    raise _csv_error(
                        parameter,
                        f"row {len(rows)} (line {reader.line_num}) has {len(line)} cells; the header has {len(header)}",
                        "csv_row_length",
                    )
                rows.append({keep[j]: value for j, value in enumerate(line) if j in keep and value != ""})
    except (UnicodeDecodeError, csv.Error) as exc:
        raise _csv_error(parameter, f"the file is not a UTF-8 CSV file: {exc}", "csv_format") from exc
    if not rows:
        raise _csv_error(parameter, "the CSV file has no data rows (a header, then a flow per line)", "csv_empty")
    ignored = [name for j, name in enumerate(header) if j not in keep]
    try:
        return _CSV_ROWS.validate_python(rows), ignored
    except ValidationError as error:
        raise invalid_fields(error, parameter) from None


def _csv_error(parameter: str, message: str, rule: str) -> InvalidInput:
    return InvalidInput(message, detail=[{"loc": [parameter], "msg": message, "type": rule}])


def _missing_features(header: Sequence[str]) -> list[str]:
    """The features of the header's kind of flow that no column holds (once, rather than an error per row)."""
    present = set(header)
    kind = flow_kind(dict.fromkeys(header))
    if kind == "threat":
        return [name for name in THREAT_FEATURES if name not in present]
    if kind == "attack":
        return [name for name, attribute in ATTACK_ATTRIBUTE.items() if not {name, attribute} & present]
    return []


def _csv_columns(header: Sequence[str]) -> dict[int, str]:
    """Column index -> field name for the columns the flows use."""
    kind = flow_kind(dict.fromkeys(header))
    features = _CSV_FEATURES[kind] if kind else frozenset()
    keep = {}
    for j, name in enumerate(header):
        if name in features:
            keep[j] = name
        elif name.strip().lower() in CSV_CONTEXT_COLUMNS:
            keep[j] = CSV_CONTEXT_COLUMNS[name.strip().lower()]
    return keep


def describe(model: LoadedModel) -> ModelDescription:
    return ModelDescription(
        tag=model.tag,
        name=model.name,
        inference_form=model.inference_form,
        feature_names=list(model.feature_names),
        class_names=list(model.class_names),
        categories={name: list(names) for name, names in model.encoders.items()},
        threshold=model.threshold,
        metrics=model.metadata.get("metrics", {}),
        reference_cases=list(model.reference_results),
    )


def model_info(models: ActiveModels) -> ModelInfo:
    return ModelInfo(threat=describe(models.threat), attack=describe(models.attack))
