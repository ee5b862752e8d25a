"""Evaluation metrics of both models, the FPR threshold rule, and the plots of the evaluation reports."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)


def fpr_threshold(scores: np.ndarray, labels: np.ndarray, max_fpr: float) -> float:
    """Lowest threshold t with mean(normal score >= t) <= max_fpr, placed midway between the lowest qualifying
    normal score and the next lower one (the same rows are flagged, and no row sits on the threshold itself,
    where float32 inference could flip it).

    Rows scoring >= t are flagged as attacks. If no normal score qualifies, t sits midway between the highest
    normal score and 1 (or just above it).
    """
    normal = np.sort(scores[labels == 0])
    if normal.size == 0:
        raise ValueError("threshold rule needs normal rows in the validation split")
    unique = np.unique(normal)
    for i, candidate in enumerate(unique):
        if np.mean(normal >= candidate) <= max_fpr:
            return float(candidate if i == 0 else (unique[i - 1] + candidate) / 2)
    top = float(unique[-1])
    return (top + 1.0) / 2 if top < 1.0 else float(np.nextafter(top, np.inf))


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | int]:
    predicted = (scores >= threshold).astype(int)
    always_attack = np.ones_like(labels)
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    return {
        "rows": int(labels.size),
        "accuracy": float(accuracy_score(labels, predicted)),
        "precision": float(precision_score(labels, predicted, zero_division=0)),
        "recall": float(recall_score(labels, predicted, zero_division=0)),
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "roc_auc": float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else float("nan"),
        "false_positive_rate": float(fp / (fp + tn)) if fp + tn else 0.0,
        "true_negatives": int(tn),
        "false_positives": int(fp),
        "false_negatives": int(fn),
        "true_positives": int(tp),
        "always_attack_accuracy": float(accuracy_score(labels, always_attack)),
        "always_attack_precision": float(precision_score(labels, always_attack, zero_division=0)),
        "always_attack_f1": float(f1_score(labels, always_attack, zero_division=0)),
    }


def multiclass_metrics(labels: np.ndarray, predicted: np.ndarray, class_names: Sequence[str]) -> dict[str, object]:
    """Per-class precision/recall/F1/support over the classes present in `labels`, macro-F1 and accuracy."""
    present = np.unique(labels)
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=present, zero_division=0)
    per_class = {
        class_names[code]: {
            "precision": float(p),
            "recall": float(r),
            "f1": float(f),
            "support": int(s),
        }
        for code, p, r, f, s in zip(present, precision, recall, f1, support, strict=True)
    }
    return {
        "rows": int(labels.size),
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(np.mean(f1)),
        "per_class": per_class,
    }


def plot_confusion(
    labels: np.ndarray, predicted: np.ndarray, class_names: Sequence[str], title: str, path: Path
) -> None:
    codes = np.unique(np.concatenate([labels, predicted]))
    matrix = confusion_matrix(labels, predicted, labels=codes)
    size = max(5.0, 0.55 * len(codes) + 3)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(matrix, display_labels=[class_names[c] for c in codes]).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation=60, values_format="d"
    )
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path: Path) -> None:
    """ROC curves of several scorers on the same labels: {name: (labels, scores)}."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, (labels, scores) in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(labels, scores):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate (recall)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- calibration ---------------------------------------------------------------------------------------------

CALIBRATION_BINS = 15


def reliability(confidence: np.ndarray, outcome: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, object]:
    """Expected calibration error over equal-width bins of `confidence` in [0, 1], and the bins themselves.

    ECE = sum over bins of (rows in bin / rows) * |mean outcome - mean confidence|. `outcome` is 1/0: for a
    top-label check whether the predicted class was right, for a binary score whether the row is positive.
    """
    confidence = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    outcome = np.asarray(outcome, dtype=np.float64)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / np.maximum(counts, 1)
    mean_outcome = np.bincount(index, weights=outcome, minlength=bins) / np.maximum(counts, 1)
    ece = float(np.sum(counts / max(len(confidence), 1) * np.abs(mean_outcome - mean_confidence)))
    return {
        "ece": ece,
        "bins": bins,
        "rows": len(confidence),
        "count": counts.tolist(),
        "mean_confidence": mean_confidence.tolist(),
        "mean_outcome": mean_outcome.tolist(),
    }


def top_label_reliability(labels: np.ndarray, proba: np.ndarray) -> dict[str, object]:
    """Calibration of the served `confidence` (the largest class probability) against being right."""
    return reliability(proba.max(axis=1), (proba.argmax(axis=1) == labels).astype(int))


def plot_reliability(curves: dict[str, dict[str, object]], title: str, xlabel: str, path: Path) -> None:
    """Reliability diagram: observed frequency against mean predicted probability per bin, one line per curve."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="perfectly calibrated")
    for name, curve in curves.items():
        used = np.asarray(curve["count"]) > 0
        ax.plot(
            np.asarray(curve["mean_confidence"])[used],
            np.asarray(curve["mean_outcome"])[used],
            marker="o",
            markersize=3,
            label=f"{name} (ECE {curve['ece']:.4f})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("observed frequency")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
