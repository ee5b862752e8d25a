"""Choosing a family without test data: grouped, stratified cross-validation on the training rows only.

`python -m training.selection threat|attack` runs one comparison on the training portion of the split that
`make train` uses (KDDTest+ and the held-out CIC rows are never read), and writes `reports/<model>/selection.md`:
one row per candidate with the cross-validated criterion, the rare classes' recall, the calibration error of
its out-of-fold probabilities before and after calibration, and the ONNX inference time per row.

Folds are grouped so that near-copies never straddle a fold boundary:
- threat detector: every attack type of KDDTrain+ is one group (leave-attack-types-out, the way KDDTest+ holds
  17 attack types that training never saw); normal rows are grouped by near-duplicate key.
- attack classifier: rows whose 42 features agree after rounding on a log scale (near-duplicate flows,
  whatever their label) are one group.
The kept family is the one with the best mean criterion; a candidate within one fold standard deviation of it
that is faster to serve wins the tie (recorded in the report).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from nids.models.artifacts import OnnxPredictor
from training import common
from training.evaluation import reliability, top_label_reliability
from training.families import WITHOUT_ONNX, Candidate, build

CALIBRATION_METHODS = ("sigmoid", "isotonic")
SPEED_ROWS = 1000
SPEED_SINGLE_CALLS = 200
SPEED_REPEATS = 5


def near_duplicate_groups(X: np.ndarray, decimals: int = 1) -> np.ndarray:
    """Group id per row: rows equal after log1p(|x|) rounded to `decimals` share a group (labels ignored)."""
    key = np.round(np.log1p(np.abs(X.astype(np.float64))) * np.sign(X), decimals)
    _, inverse = np.unique(key, axis=0, return_inverse=True)
    return inverse.ravel()


def aligned_proba(estimator: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba with one column per class code even if a fold's training rows lacked some classes."""
    proba = np.zeros((len(X), n_classes))
    proba[:, np.asarray(estimator.classes_, dtype=int)] = estimator.predict_proba(X)
    return proba


class _GivenProbabilities(ClassifierMixin, BaseEstimator):
    """A 'classifier' whose input already is its probabilities: calibrates out-of-fold scores with sklearn's own
    calibration code (one calibrator per class, normalised), without refitting anything."""

    def __init__(self, n_classes: int = 2) -> None:
        self.n_classes = n_classes
        self.classes_ = np.arange(n_classes)

    def fit(self, X: np.ndarray, y: np.ndarray) -> _GivenProbabilities:
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return X

    def predict(self, X: np.ndarray) -> np.ndarray:
        return X.argmax(axis=1)


def cross_fitted_calibration(proba: np.ndarray, y: np.ndarray, method: str, seed: int) -> np.ndarray:
    """Out-of-fold probabilities calibrated two-fold: each half by a calibrator fitted on the other half."""
    n_classes = proba.shape[1]
    out = np.zeros_like(proba)
    for fit_rows, apply_rows in StratifiedKFold(2, shuffle=True, random_state=seed).split(proba, y):
        calibrator = CalibratedClassifierCV(FrozenEstimator(_GivenProbabilities(n_classes)), method=method)
        calibrator.fit(proba[fit_rows], y[fit_rows])
        out[apply_rows] = calibrator.predict_proba(proba[apply_rows])
    return out


def onnx_speed(estimator: Any, X: np.ndarray) -> dict[str, float | None]:
    """ONNX Runtime time per row (one thread): single-row calls and a 1,000-row batch, in microseconds."""
    predictor = OnnxPredictor(common.to_onnx_bytes(estimator, X.shape[1]))
    return time_predictor(predictor, X)


def time_predictor(predict: Callable[[np.ndarray], np.ndarray], X: np.ndarray) -> dict[str, float | None]:
    """Best of SPEED_REPEATS runs each (on a shared machine the minimum is the least disturbed figure)."""
    rows = X[:SPEED_ROWS].astype(np.float32)
    predict(rows[:1])
    single = bulk = float("inf")
    for _ in range(SPEED_REPEATS):
        start = time.perf_counter()
        for i in range(SPEED_SINGLE_CALLS):
            predict(rows[i % len(rows) : i % len(rows) + 1])
        single = min(single, (time.perf_counter() - start) / SPEED_SINGLE_CALLS)
        start = time.perf_counter()
        predict(rows)
        bulk = min(bulk, (time.perf_counter() - start) / len(rows))
    return {"single_us": single * 1e6, "bulk_us_per_row": bulk * 1e6}


@dataclass
class CVResult:
    candidate: Candidate
    fold_scores: list[float]
    oof_proba: np.ndarray = field(repr=False)
    fit_seconds: float
    speed: dict[str, float | None]

    @property
    def mean(self) -> float:
        return float(np.mean(self.fold_scores))

    @property
    def sd(self) -> float:
        return float(np.std(self.fold_scores))


def cross_validate(
    candidates: Sequence[Candidate],
    X: np.ndarray,
    y: np.ndarray,
    *,
    strata: np.ndarray,
    groups: np.ndarray,
    folds: int,
    seed: int,
    n_jobs: int,
    score: Callable[[np.ndarray, np.ndarray, np.ndarray], float],
    log: Callable[[str], None],
) -> list[CVResult]:
    """Every candidate on the same grouped, stratified folds; `score(y, proba, rows)` per validation fold."""
    n_classes = int(y.max()) + 1
    splits = list(StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(X, strata, groups))
    results = []
    for candidate in candidates:
        oof = np.zeros((len(X), n_classes))
        scores, seconds = [], 0.0
        estimator = None
        for train_rows, val_rows in splits:
            estimator = build(candidate, seed=seed, n_jobs=n_jobs)
            start = time.perf_counter()
            estimator.fit(X[train_rows], y[train_rows])
            seconds += time.perf_counter() - start
            oof[val_rows] = aligned_proba(estimator, X[val_rows], n_classes)
            scores.append(score(y[val_rows], oof[val_rows], val_rows))
        assert estimator is not None
        if hasattr(estimator, "n_jobs"):
            estimator.set_params(n_jobs=1)
        speed = (
            {"single_us": None, "bulk_us_per_row": None}
            if candidate.family in WITHOUT_ONNX
            else onnx_speed(estimator, X)
        )
        results.append(CVResult(candidate, scores, oof, seconds / folds, speed))
        log(
            f"{candidate.name}: {np.mean(scores):.4f} +- {np.std(scores):.4f} "
            f"(fit {seconds / folds:.1f}s a fold, ONNX {speed['bulk_us_per_row'] or float('nan'):.1f} us/row bulk)"
        )
    return results


def within_one_se(best: CVResult, other: CVResult) -> bool:
    """One-standard-error rule on the paired per-fold differences (the folds are shared, so pair them)."""
    diffs = np.asarray(best.fold_scores) - np.asarray(other.fold_scores)
    return float(diffs.mean()) <= float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else False


def compare(
    candidates: Sequence[Candidate],
    X: np.ndarray,
    y: np.ndarray,
    *,
    strata: np.ndarray,
    groups: np.ndarray,
    args: Any,
    seed: int,
    score: Callable[[np.ndarray, np.ndarray, np.ndarray], float],
    log: Callable[[str], None],
) -> tuple[list[CVResult], CVResult, str]:
    """cross_validate with the CLI's folds and n_jobs, then pick: (results, chosen, the rule as applied)."""
    results = cross_validate(
        candidates, X, y, strata=strata, groups=groups, folds=args.folds, seed=seed, n_jobs=args.n_jobs, score=score,
        log=log,
    )  # fmt: skip
    return (results, *pick(results))


def table_row(result: CVResult, chosen: CVResult, cells: Sequence[str]) -> list[str]:
    """One comparison-table row: name, criterion, the model's own cells, fit time and ONNX speeds."""
    single, bulk = speed_text(result.speed)
    name = f"{result.candidate.name}{' (kept)' if result is chosen else ''}"
    return [name, f"{result.mean:.4f} +- {result.sd:.4f}", *cells, f"{result.fit_seconds:.1f}", single, bulk]


SPEED_HEADER = ("fit s / fold", "ONNX single row (us)", "ONNX bulk (us / row)")


def pick(results: Sequence[CVResult]) -> tuple[CVResult, str]:
    """Among the candidates with an ONNX form (the served hot path): the best mean criterion, then the fastest
    ONNX bulk time per row among those within one paired standard error of it."""
    overall = max(results, key=lambda r: r.mean)
    servable = [r for r in results if r.speed["bulk_us_per_row"] is not None]
    best = max(servable, key=lambda r: r.mean)
    close = [r for r in servable if r is best or within_one_se(best, r)]
    chosen = min(close, key=lambda r: r.speed["bulk_us_per_row"] or float("inf"))
    unservable = (
        f"{overall.candidate.name} ({overall.mean:.4f}) scores higher but has no ONNX form; "
        if overall is not best
        else ""
    )
    rule = (
        f"{unservable}highest mean cross-validated criterion with an ONNX form: {best.candidate.name} "
        f"({best.mean:.4f} +- {best.sd:.4f}); among the candidates whose per-fold difference to it is within one "
        f"standard error ({', '.join(r.candidate.name for r in close)}), the fastest ONNX bulk time per row: "
        f"**{chosen.candidate.name}**"
    )
    return chosen, rule


def calibration_rows(result: CVResult, y: np.ndarray, seed: int, binary: bool) -> dict[str, dict[str, Any]]:
    """ECE of the out-of-fold probabilities before and after each calibration method (cross-fitted)."""

    def check(proba: np.ndarray) -> dict[str, Any]:
        return reliability(proba[:, 1], y) if binary else top_label_reliability(y, proba)

    rows = {"uncalibrated": check(result.oof_proba)}
    for method in CALIBRATION_METHODS:
        rows[method] = check(cross_fitted_calibration(result.oof_proba, y, method, seed))
    return rows


def speed_text(speed: dict[str, float | None]) -> tuple[str, str]:
    single, bulk = speed["single_us"], speed["bulk_us_per_row"]
    return (f"{single:.0f}" if single is not None else "no ONNX", f"{bulk:.2f}" if bulk is not None else "no ONNX")


def calibration_table(rows: dict[str, dict[str, Any]]) -> str:
    return common.markdown_table(
        ["out-of-fold probabilities", "ECE", "rows"],
        [[name, f"{row['ece']:.4f}", row["rows"]] for name, row in rows.items()],
    )


SPEED_NOTE = (
    f"Speeds: one ONNX Runtime thread, the last fold's model, best of {SPEED_REPEATS} runs on this shared 2-core "
    f"machine (noisy: a tie-break, not a benchmark; BENCHMARKS.md has the served figures)."
)


def write_report(
    directory: Path, *, title: str, intro: str, table: str, rule: str, extra: str, chosen: CVResult, log: Any
) -> None:
    """reports/<model>/selection.md: how the rows were folded, the comparison table, the rule as applied."""
    path = directory / "selection.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# {title}\n\nGenerated by `python -m training.selection` (training rows only; no test row was read).\n\n"
        f"{intro} {SPEED_NOTE}\n\n{table}\n\nKept by the rule: {rule}.\n\n{extra}\n",
        encoding="utf-8",
    )
    log(f"kept {chosen.candidate.name}; report {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=["threat", "attack"])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--max-rows", type=int, default=12000, help="threat: training rows sampled")
    parser.add_argument("--max-rows-per-class", type=int, default=400, help="attack: per (release, class)")
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--reports-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.model == "threat":
        from training.threat import run_selection

        run_selection(args)
    else:
        from training.attack import run_selection

        run_selection(args)


if __name__ == "__main__":
    main()
