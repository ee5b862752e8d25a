"""Dataset loaders: validate the file, map it onto the model's feature contract, deduplicate and split.

Every loader checks the columns and types it needs and fails with a `DataValidationError` naming the file,
the column and the rule that was broken. Loaders return feature frames keyed by the canonical feature names
of `nids.core.features` (THREAT_FEATURES, ATTACK_FEATURES), so `nids.core.encoding.to_matrix` encodes them exactly as
the service encodes requests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from nids.core.features import (
    ATTACK_CLASSES,
    ATTACK_FEATURES,
    ATTACK_IMPROVED_COLUMNS,
    THREAT_CATEGORICAL,
    THREAT_FEATURES,
    normalise_attack_label,
)

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
NSL_KDD_TRAIN = DATA_DIR / "nsl-kdd" / "KDDTrain+.csv.gz"
NSL_KDD_TEST = DATA_DIR / "nsl-kdd" / "KDDTest+.csv.gz"
CIC_IMPROVED = DATA_DIR / "cic-ids2017-improved" / "cic-ids2017-improved-dev.csv.gz"
CIC_ORIGINAL = DATA_DIR / "cic-ids2017" / "cic-ids2017-dev-sample.csv.gz"

SOURCE_IMPROVED = "corrected"
SOURCE_ORIGINAL = "original"
LABEL = "label"
SOURCE = "source"
ATTACK_TYPE = "attack_type"  # NSL-KDD: the attack's name ("normal" for normal rows), for grouped selection
NSL_KDD_NORMAL = "normal"
_IMPROVED_LABEL = "Label"
_IMPROVED_ATTEMPTED = "Attempted Category"
_ORIGINAL_LABEL = " Label"


class DataValidationError(ValueError):
    """A dataset file does not have the columns, types or values training relies on."""

    def __init__(self, path: Path | str, column: str | None, rule: str) -> None:
        where = f"column {column!r}: " if column is not None else ""
        super().__init__(f"{path}: {where}{rule}")
        self.path = str(path)
        self.column = column
        self.rule = rule


@dataclass(frozen=True)
class Dataset:
    """Rows of one file mapped onto a model's features: `frame` holds the features plus LABEL (and SOURCE)."""

    path: str
    sha256: str
    frame: pd.DataFrame
    rows_read: int
    dropped: dict[str, int] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        return {
            "path": display_path(self.path),
            "sha256": self.sha256,
            "rows_read": self.rows_read,
            "dropped": dict(self.dropped),
        }


def display_path(path: Path | str) -> str:
    """Repository-relative for the committed copies (so reports do not leak a machine's layout), else as given."""
    resolved = Path(path).resolve()
    root = DATA_DIR.parent
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(path)


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_csv(path: Path | str, nrows: int | None, columns: Collection[str]) -> pd.DataFrame:
    """The wanted columns of a CSV file as text (others are never parsed: the full datasets are large).

    UTF-8 first; the original UNB CIC-IDS2017 files are cp1252 (a 0x96 dash in the web-attack labels), so a file
    that is not valid UTF-8 is read as latin-1, which maps every byte and keeps 0x96 for the label normaliser.
    """
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(path, None, "file does not exist")
    wanted = set(columns)
    for encoding in ("utf-8", "latin-1"):
        try:
            frame = pd.read_csv(
                path, dtype=str, keep_default_na=False, nrows=nrows, encoding=encoding, usecols=lambda c: c in wanted
            )
            break
        except UnicodeDecodeError:
            continue
        except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, EOFError) as exc:
            raise DataValidationError(path, None, f"not a readable CSV file ({exc.__class__.__name__}: {exc})") from exc
    if frame.empty:
        raise DataValidationError(path, None, "holds no data rows")
    return frame


def _require_columns(path: Path | str, frame: pd.DataFrame, columns: Sequence[str]) -> None:
    for column in columns:
        if column not in frame.columns:
            raise DataValidationError(path, column, "required column is missing")


def _numeric(path: Path | str, frame: pd.DataFrame, column: str, *, allow_nan: bool, source_column: str) -> pd.Series:
    """Parse a text column as float64; 'Infinity'/'inf' are accepted, anything else non-numeric is rejected."""
    text = frame[column].str.strip()
    values = pd.to_numeric(text.replace({"Infinity": "inf", "-Infinity": "-inf"}), errors="coerce")
    bad = values.isna() & ~(text.str.lower().isin({"nan", ""}) & allow_nan)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataValidationError(
            path, source_column, f"must be numeric; data row {row + 1} holds {frame[column].iloc[row]!r}"
        )
    return values.astype(np.float64)


# --- NSL-KDD ---------------------------------------------------------------------------------------------


def load_nsl_kdd(path: Path | str = NSL_KDD_TRAIN, *, nrows: int | None = None) -> Dataset:
    """KDDTrain+/KDDTest+ with a header line: the 10 threat features, LABEL (0 normal, 1 attack), ATTACK_TYPE."""
    frame = _read_csv(path, nrows, [*THREAT_FEATURES, LABEL])
    _require_columns(path, frame, [*THREAT_FEATURES, LABEL])
    out = pd.DataFrame(index=frame.index)
    for column in THREAT_FEATURES:
        if column in THREAT_CATEGORICAL:
            values = frame[column].str.strip()
            if (values == "").any():
                row = int(np.flatnonzero((values == "").to_numpy())[0])
                raise DataValidationError(
                    path, column, f"must be a non-empty category name; data row {row + 1} is empty"
                )
            out[column] = values
        else:
            values = _numeric(path, frame, column, allow_nan=False, source_column=column)
            if (values < 0).any() or np.isinf(values).any():
                row = int(np.flatnonzero(((values < 0) | np.isinf(values)).to_numpy())[0])
                raise DataValidationError(path, column, f"must be finite and >= 0; data row {row + 1} is {values[row]}")
            out[column] = values
    labels = frame[LABEL].str.strip()
    if (labels == "").any():
        row = int(np.flatnonzero((labels == "").to_numpy())[0])
        raise DataValidationError(path, LABEL, f"must be 'normal' or an attack name; data row {row + 1} is empty")
    out[LABEL] = (labels != NSL_KDD_NORMAL).astype(np.int64)
    out[ATTACK_TYPE] = labels
    return Dataset(path=str(path), sha256=sha256_file(path), frame=out, rows_read=len(frame))


# --- CIC-IDS2017 -----------------------------------------------------------------------------------------


def _attack_frame(
    path: Path | str, frame: pd.DataFrame, columns: dict[str, str], label_column: str, source: str
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Shared part of both CIC releases: features under ATTACK_FEATURES names, labels as class codes."""
    _require_columns(path, frame, [*columns.values(), label_column])
    out = pd.DataFrame(index=frame.index)
    for feature, column in columns.items():
        out[feature] = _numeric(path, frame, column, allow_nan=True, source_column=column)
    classes = {name: code for code, name in enumerate(ATTACK_CLASSES)}
    codes = np.empty(len(frame), dtype=np.int64)
    excluded = np.zeros(len(frame), dtype=bool)
    for raw in frame[label_column].unique():
        try:
            name = normalise_attack_label(raw)
        except ValueError as exc:
            raise DataValidationError(path, label_column, str(exc)) from exc
        mask = (frame[label_column] == raw).to_numpy()
        if name is None:
            excluded |= mask
        else:
            codes[mask] = classes[name]
    out[LABEL] = codes
    out[SOURCE] = source
    dropped = {"excluded_label": int(excluded.sum())}
    out = out[~excluded]
    features = out[list(columns)]
    nan_rows = features.isna().any(axis=1).to_numpy()
    dropped["nan"] = int(nan_rows.sum())
    out = out[~nan_rows].copy()
    numeric = out[list(columns)].to_numpy(dtype=np.float64, copy=True)
    numeric[np.isinf(numeric)] = 0.0
    out[list(columns)] = numeric
    return out.reset_index(drop=True), dropped


def load_cic_improved(path: Path | str = CIC_IMPROVED, *, nrows: int | None = None) -> Dataset:
    """Corrected CIC-IDS2017 release: columns renamed to the original spaced names, labels mapped to classes.

    Heartbleed rows and flows marked as attempted attacks (Attempted Category != -1, full release only)
    are dropped and counted; so are rows with NaN features. Infinity becomes 0.
    """
    frame = _read_csv(path, nrows, [*ATTACK_IMPROVED_COLUMNS.values(), _IMPROVED_LABEL, _IMPROVED_ATTEMPTED])
    attempted = np.zeros(len(frame), dtype=bool)
    if _IMPROVED_ATTEMPTED in frame.columns:
        attempted = (
            _numeric(path, frame, _IMPROVED_ATTEMPTED, allow_nan=False, source_column=_IMPROVED_ATTEMPTED) != -1
        ).to_numpy()
    out, dropped = _attack_frame(path, frame[~attempted], ATTACK_IMPROVED_COLUMNS, _IMPROVED_LABEL, SOURCE_IMPROVED)
    return Dataset(
        path=str(path),
        sha256=sha256_file(path),
        frame=out,
        rows_read=len(frame),
        dropped={"attempted": int(attempted.sum()), **dropped},
    )


def load_cic_original(path: Path | str = CIC_ORIGINAL, *, nrows: int | None = None) -> Dataset:
    """Original-release (MachineLearningCVE layout) CIC-IDS2017 rows: spaced column names as users send them."""
    frame = _read_csv(path, nrows, [*ATTACK_FEATURES, _ORIGINAL_LABEL])
    out, dropped = _attack_frame(
        path, frame, {name: name for name in ATTACK_FEATURES}, _ORIGINAL_LABEL, SOURCE_ORIGINAL
    )
    return Dataset(path=str(path), sha256=sha256_file(path), frame=out, rows_read=len(frame), dropped=dropped)


# --- deduplication and splits ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    validation: pd.DataFrame
    rule: str
    seed: int
    duplicates_removed: int


def deduplicate_and_split(
    frame: pd.DataFrame, features: Sequence[str], *, strata: Sequence[str], validation_fraction: float, seed: int
) -> Split:
    """Drop exact duplicates (features + LABEL, across sources), then a stratified train/validation split.

    Strata with a single row go to training (they cannot be split); validation rows never enter training.
    """
    key = [*features, LABEL]
    unique = frame.drop_duplicates(subset=key).reset_index(drop=True)
    stratum = unique[list(strata)].astype(str).agg("|".join, axis=1)
    counts = stratum.map(stratum.value_counts())
    splittable = unique[counts >= 2]
    singles = unique[counts < 2]
    train, validation = train_test_split(
        splittable,
        test_size=validation_fraction,
        random_state=seed,
        stratify=stratum[counts >= 2],
    )
    rule = (
        f"exact duplicates (all features + label, first occurrence kept) removed first; then a stratified "
        f"split by ({', '.join(strata)}): {validation_fraction:.0%} of each stratum held out for validation "
        f"(sklearn train_test_split, random_state={seed}); strata with a single row stay in training"
    )
    return Split(
        train=pd.concat([train, singles]).reset_index(drop=True),
        validation=validation.reset_index(drop=True),
        rule=rule,
        seed=seed,
        duplicates_removed=len(frame) - len(unique),
    )


def rows_of(frame: pd.DataFrame, features: Sequence[str]) -> list[dict[str, float | int | str]]:
    """Frame rows as mappings keyed by feature name (what `to_matrix` and reference cases take)."""
    return [
        {name: (value if isinstance(value, str) else float(value)) for name, value in zip(features, row, strict=True)}
        for row in frame[list(features)].itertuples(index=False, name=None)
    ]
