"""Attack classifier: CIC-IDS2017 (corrected + original release), 42 flow features, 14 classes.

Baseline: the seed system's DecisionTree. Candidate: a depth-limited RandomForest with balanced class weights.
Both are evaluated on the held-out rows of each release separately; the candidate is kept only if its mean
macro-F1 over the two releases is higher than the baseline's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier

from nids.core import drift
from nids.core.features import ATTACK_CLASSES, ATTACK_FEATURES, ATTACK_MODEL_NAME, EXCLUDED_LABELS
from nids.core.model import LoadedModel, ReferenceCase
from nids.models.artifacts import single_threaded
from training import common
from training.data import (
    CIC_IMPROVED,
    CIC_ORIGINAL,
    LABEL,
    SOURCE,
    SOURCE_IMPROVED,
    SOURCE_ORIGINAL,
    Dataset,
    Split,
    deduplicate_and_split,
    load_cic_improved,
    load_cic_original,
    rows_of,
)
from training.evaluation import multiclass_metrics, plot_confusion, plot_roc

BASELINE = "decision_tree"
CANDIDATE = "random_forest"
SOURCES = (SOURCE_IMPROVED, SOURCE_ORIGINAL)
# targets of the issue, shown next to the results
TARGET_MACRO_F1 = {SOURCE_IMPROVED: 0.95, SOURCE_ORIGINAL: 0.80}
TARGET_RECALL = 0.90
TARGET_RECALL_MIN_SUPPORT = 30


@dataclass(frozen=True)
class AttackConfig:
    improved_path: Path = CIC_IMPROVED
    original_path: Path = CIC_ORIGINAL
    max_rows_per_class: int | None = None  # first N rows of each (release, class) only (tests); None = all
    seed: int = 42
    validation_fraction: float = 0.2
    n_estimators: int = 100
    max_depth: int | None = 25
    n_jobs: int = -1  # training only; the stored estimator predicts with n_jobs=1
    model_name: str = ATTACK_MODEL_NAME
    reports_dir: Path | None = common.REPORTS_DIR / ATTACK_MODEL_NAME


@dataclass
class Evaluated:
    name: str
    estimator: ClassifierMixin
    per_source: dict[str, dict[str, Any]]
    predicted: np.ndarray = field(repr=False)
    proba: np.ndarray = field(repr=False)

    @property
    def mean_macro_f1(self) -> float:
        return float(np.mean([metrics["macro_f1"] for metrics in self.per_source.values()]))


@dataclass(frozen=True)
class AttackResult:
    model: LoadedModel
    kept: str
    evaluations: dict[str, Evaluated]
    validation: pd.DataFrame = field(repr=False)


def _estimators(config: AttackConfig) -> dict[str, ClassifierMixin]:
    return {
        BASELINE: DecisionTreeClassifier(random_state=config.seed),
        CANDIDATE: RandomForestClassifier(
            n_estimators=config.n_estimators,
            max_depth=config.max_depth,
            class_weight="balanced_subsample",
            random_state=config.seed,
            n_jobs=config.n_jobs,
        ),
    }


def _evaluate(name: str, estimator: ClassifierMixin, X: np.ndarray, validation: pd.DataFrame) -> Evaluated:
    proba = estimator.predict_proba(X)
    predicted = np.argmax(proba, axis=1)
    labels, sources = common.labels_of(validation), validation[SOURCE].to_numpy()
    per_source = {
        source: multiclass_metrics(labels[sources == source], predicted[sources == source], ATTACK_CLASSES)
        for source in SOURCES
        if (sources == source).any()
    }
    return Evaluated(name=name, estimator=estimator, per_source=per_source, predicted=predicted, proba=proba)


def reference_cases(validation: pd.DataFrame, proba: np.ndarray, seed: int) -> tuple[list[ReferenceCase], list[str]]:
    """One held-out row per class the model gets right with a margin; also the classes that have none."""
    labels, sources = common.labels_of(validation), validation[SOURCE].to_numpy()
    ordered = np.sort(proba, axis=1)
    margin = ordered[:, -1] - ordered[:, -2]
    predicted = np.argmax(proba, axis=1)
    rng = np.random.default_rng(seed)
    cases, without = [], []
    for code in np.unique(labels):
        eligible = np.flatnonzero((labels == code) & (predicted == code) & (margin >= common.CASE_MARGIN))
        if eligible.size == 0:
            without.append(ATTACK_CLASSES[code])
            continue
        index = int(rng.choice(eligible))
        cases.append(
            ReferenceCase(
                description=(
                    f"{sources[index]}-release held-out row {index}: {ATTACK_CLASSES[code]} "
                    f"(P {proba[index, code]:.3f})"
                ),
                features=rows_of(validation.iloc[[index]], ATTACK_FEATURES)[0],
                expected_class=int(code),
                expected_score=float(proba[index, code]),
                tolerance=common.CASE_TOLERANCE,
            )
        )
    return cases, without


def load_attack_frame(config: AttackConfig) -> tuple[pd.DataFrame, list[Dataset]]:
    files = [load_cic_improved(config.improved_path), load_cic_original(config.original_path)]
    frame = pd.concat([dataset.frame for dataset in files], ignore_index=True)
    if config.max_rows_per_class is not None:
        frame = frame.groupby([SOURCE, LABEL], sort=False).head(config.max_rows_per_class).reset_index(drop=True)
    return frame, files


def train_attack(config: AttackConfig = AttackConfig()) -> AttackResult:
    log = common.Progress(config.model_name)
    frame, files = load_attack_frame(config)
    log(f"loaded {sum(f.rows_read for f in files)} rows; kept {len(frame)} ({[f.dropped for f in files]} dropped)")
    split = deduplicate_and_split(
        frame,
        ATTACK_FEATURES,
        strata=[SOURCE, LABEL],
        validation_fraction=config.validation_fraction,
        seed=config.seed,
    )
    missing = sorted(set(range(len(ATTACK_CLASSES))) - set(common.labels_of(split.train).tolist()))
    if missing:
        raise ValueError(f"training rows lack classes {[ATTACK_CLASSES[code] for code in missing]}")
    log(f"split: {len(split.train)} train / {len(split.validation)} validation ({split.duplicates_removed} duplicates)")
    X_train, y_train = common.encode(split.train, ATTACK_FEATURES, {}), common.labels_of(split.train)
    X_val = common.encode(split.validation, ATTACK_FEATURES, {})

    evaluations = {}
    for name, estimator in _estimators(config).items():
        log(f"fitting {name}")
        estimator.fit(X_train, y_train)
        evaluations[name] = _evaluate(name, estimator, X_val, split.validation)
        scores = ", ".join(f"{s} macro-F1 {m['macro_f1']:.4f}" for s, m in evaluations[name].per_source.items())
        log(f"{name}: {scores}")
    kept = CANDIDATE if evaluations[CANDIDATE].mean_macro_f1 > evaluations[BASELINE].mean_macro_f1 else BASELINE
    chosen = evaluations[kept]
    single_threaded(chosen.estimator)
    log(f"keeping {kept}")

    cases, without = reference_cases(split.validation, chosen.proba, config.seed)
    loaded = common.package(
        config.model_name,
        estimator=chosen.estimator,
        metadata={
            **_metadata(config, files, split, evaluations, kept, without),
            drift.METADATA_KEY: drift.reference_distribution(X_train, ATTACK_FEATURES),  # drift monitoring
        },
        reference_cases=cases,
        X_holdout=X_val,
        seed=config.seed,
        log=log,
    )
    result = AttackResult(model=loaded, kept=kept, evaluations=evaluations, validation=split.validation)
    if config.reports_dir is not None:
        write_reports(result, config.reports_dir)
        log(f"reports written to {config.reports_dir}")
    return result


def _metadata(
    config: AttackConfig,
    files: list[Dataset],
    split: Split,
    evaluations: dict[str, Evaluated],
    kept: str,
    without_case: list[str],
) -> dict[str, Any]:
    chosen = evaluations[kept]
    return {
        "task": "multiclass",
        "feature_names": list(ATTACK_FEATURES),
        "class_names": list(ATTACK_CLASSES),
        "encoders": {},
        "excluded_labels": sorted(EXCLUDED_LABELS),
        "metrics": {
            "holdout": chosen.per_source,
            "candidates": {
                name: {
                    source: {"macro_f1": m["macro_f1"], "accuracy": m["accuracy"]} for source, m in e.per_source.items()
                }
                for name, e in evaluations.items()
            },
        },
        "input_files": {source: dataset.describe() for source, dataset in zip(SOURCES, files, strict=True)},
        "split": {
            **common.split_metadata(split),
            "max_rows_per_class": config.max_rows_per_class if config.max_rows_per_class is not None else "all",
        },
        "training_params": common.training_params(
            kept,
            BASELINE,
            f"{CANDIDATE} kept only if its mean held-out macro-F1 over both releases is higher",
            chosen.estimator,
            config,
        ),
        "classes_without_reference_case": without_case,
    }


def write_reports(result: AttackResult, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    chosen = result.evaluations[result.kept]
    labels, sources = common.labels_of(result.validation), result.validation[SOURCE].to_numpy()
    curves = {}
    for source in chosen.per_source:
        mask = sources == source
        plot_confusion(
            labels[mask],
            chosen.predicted[mask],
            ATTACK_CLASSES,
            f"{source} release, held-out: {result.kept}",
            directory / f"confusion_matrix_{source}.png",
        )
        if len(np.unique(labels[mask] != 0)) == 2:
            curves[f"{source} release"] = ((labels[mask] != 0).astype(int), 1.0 - chosen.proba[mask, 0])
    if curves:
        plot_roc(curves, "Attack vs BENIGN (score 1 - P(BENIGN))", directory / "roc_attack_vs_benign.png")
    metadata = result.model.metadata
    (directory / "evaluation.md").write_text(_evaluation_markdown(result, metadata, bool(curves)), encoding="utf-8")
    (directory / "MODEL_CARD.md").write_text(_model_card(result, metadata), encoding="utf-8")


def _source_section(result: AttackResult, source: str) -> str:
    baseline = result.evaluations[BASELINE].per_source[source]
    chosen = result.evaluations[result.kept].per_source[source]
    rows = []
    misses = []
    for name, m in chosen["per_class"].items():
        b = baseline["per_class"][name]
        rows.append(
            [
                name,
                common.fmt(m["precision"]),
                common.fmt(m["recall"]),
                common.fmt(m["f1"]),
                m["support"],
                common.fmt(b["f1"]),
            ]
        )
        if m["support"] >= TARGET_RECALL_MIN_SUPPORT and m["recall"] < TARGET_RECALL:
            misses.append(f"{name} (recall {m['recall']:.4f}, {m['support']} rows)")
    table = common.markdown_table(["class", "precision", "recall", "F1", "support", f"F1 {BASELINE}"], rows)
    macro_met = chosen["macro_f1"] >= TARGET_MACRO_F1[source]
    recall_text = "met" if not misses else "NOT met: " + "; ".join(misses)
    if any("Web Attack" in miss for miss in misses):
        recall_text += (
            ". In the original release, Brute Force and XSS flows come from the same scripted HTTP sessions "
            "against the same server and have near-identical flow statistics: the confusion matrix shows them "
            "swapping with each other, while almost none is mistaken for BENIGN. Neither deeper forests, "
            "ExtraTrees nor gradient boosting separated them (explored, not kept)"
        )
    return f"""## {source.capitalize()} release: {chosen["rows"]} held-out rows

Kept model ({result.kept}): macro-F1 **{chosen["macro_f1"]:.4f}**, accuracy {chosen["accuracy"]:.4f}.
Baseline ({BASELINE}): macro-F1 {baseline["macro_f1"]:.4f}, accuracy {baseline["accuracy"]:.4f}.
Target macro-F1 >= {TARGET_MACRO_F1[source]:.2f}: **{"met" if macro_met else "NOT met"}**.
Target recall >= {TARGET_RECALL:.2f} for every class with >= {TARGET_RECALL_MIN_SUPPORT} held-out rows:
**{recall_text}**.

{table}

![confusion matrix, {source} release](confusion_matrix_{source}.png)
"""


def _evaluation_markdown(result: AttackResult, metadata: dict[str, Any], has_curve: bool) -> str:
    split = metadata["split"]
    files = "\n".join(
        f"- {source} release: `{info['path']}` (sha256 `{info['sha256']}`; {info['rows_read']} rows read, "
        f"dropped {info['dropped']})"
        for source, info in metadata["input_files"].items()
    )
    sections = "\n".join(_source_section(result, source) for source in result.evaluations[result.kept].per_source)
    without = metadata["classes_without_reference_case"]
    curve = "\n![ROC attack vs benign](roc_attack_vs_benign.png)\n" if has_curve else ""
    header = common.report_header(
        "Attack classifier: evaluation on held-out rows", "training.train_attack", result.model
    )
    return f"""{header}
{files}
- Split: {split["rule"]}. {split["train_rows"]} training rows, {split["validation_rows"]} held-out rows,
  {split["duplicates_removed"]} duplicates removed. Held-out rows never enter training.
- Kept: **{result.kept}** ({metadata["training_params"]["selection_rule"]}).
- Macro-F1 is averaged over the classes present in that release's held-out rows. The original-release sample
  has no DoS/DDoS/PortScan rows (see data/cic-ids2017/SOURCE.md). Classes with a handful of held-out rows
  (Sql Injection, Infiltration, XSS in the corrected release) make macro-F1 jumpy: one row moves it by ~0.05.
- Heartbleed is excluded by design (not one of the 14 classes).
- All held-out rows come from the committed development samples; the providers' own disjoint holdouts are not
  available here, so these figures are a held-out split of the same samples, not an independent test set.
- Reference cases: {metadata["reference_case_count"]}{f"; no eligible held-out row for {without}" if without else ""}.

{sections}
{curve}
## Inference form

ONNX parity (skl2onnx, onnxruntime): {common.parity_text(metadata["onnx_parity"])}.
"""


def _model_card(result: AttackResult, metadata: dict[str, Any]) -> str:
    holdout = metadata["metrics"]["holdout"]
    metrics = "\n".join(
        f"- {source} release held-out rows ({m['rows']}): macro-F1 {m['macro_f1']:.4f}, accuracy {m['accuracy']:.4f}"
        for source, m in holdout.items()
    )
    return f"""# Model card: attack_classifier

## Intended use
Classifying a finished network flow (CICFlowMeter features) into one of 14 classes (BENIGN or an attack type),
so that the nids-bento self-healing policy can map the attack type to an action. Meant for security/platform
engineers as a triage signal; actions default to dry-run.

## Model
{metadata["training_params"]["estimator"]} ({result.kept}), parameters
`{metadata["training_params"]["estimator_params"]}`. Output: one probability per class, in this order:
{", ".join(f"{code} {name}" for code, name in enumerate(metadata["class_names"]))}.
Served as ONNX when the parity check passes, else scikit-learn.

## Data
CIC-IDS2017 (Sharafaldin, Lashkari, Ghorbani, ICISSP 2018) in two forms, trained together:
the corrected release of Engelen et al. (WTMC 2021; Liu et al., CNS 2022) and original-release rows
(MachineLearningCVE layout). Corrected-release columns are renamed to the original names and labels mapped
onto the 14 classes (`Portscan` and `Infiltration - Portscan` -> PortScan, `Botnet` -> Bot, ...).
Inputs: exactly the 42 original CICFlowMeter feature names (leading spaces included), in model order.
`inf` becomes 0; rows with NaN are dropped; exact duplicates are removed before the split.

## Metrics
{metrics}

Per-class tables and confusion matrices: [evaluation.md](evaluation.md).

## Limitations
- Heartbleed is absent: it is not one of the 14 classes, and its rows are excluded from training; a
  Heartbleed flow will still be given one of the 14 classes, never "Heartbleed".
- Flow features exist only once a flow ends (or times out): this model cannot stop the flow it classifies.
- The original-release data here is a third-party preprocessed sample without the DoS/DDoS/PortScan days;
  those classes come from the corrected release only. Web Attack Brute Force and XSS have nearly identical
  flow features in the original release and are often confused.
- Class balance follows the samplers (about 5,000 rows a big class), not a real network where BENIGN
  dominates; precision on live traffic will be lower than here.
- Lab traffic from 2017: expect drift on other networks and newer tools.
"""
