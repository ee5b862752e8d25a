"""Turning flow records (mappings keyed by feature name) into the float32 matrix both models take.

Training, reference-case checks and the service all go through `to_matrix`, so a row means the same
thing everywhere. Categorical threat features (`service`, `flag`) are stored in the model's metadata
as ordered category lists: the code of a name is its index; an unknown name gets UNKNOWN_CODE.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Integral

import numpy as np

UNKNOWN_CODE = -1


def category_code(value: str | int, categories: Sequence[str]) -> int:
    """Code of a categorical value given as its name or as its code.

    Unknown names map to UNKNOWN_CODE; a code outside [0, len(categories)) raises ValueError.
    """
    if isinstance(value, str):
        try:
            return list(categories).index(value)
        except ValueError:
            return UNKNOWN_CODE
    if isinstance(value, bool) or not isinstance(value, Integral) or not 0 <= value < len(categories):
        raise ValueError(f"code must be an integer within [0, {len(categories) - 1}] or a known name")
    return int(value)


def to_matrix(
    rows: Sequence[Mapping[str, object]],
    feature_names: Sequence[str],
    encoders: Mapping[str, Sequence[str]] | None = None,
) -> np.ndarray:
    """Rows -> float32 matrix in model feature order; categorical columns encoded, +/-inf becomes 0."""
    encoders = encoders or {}
    matrix = np.empty((len(rows), len(feature_names)), dtype=np.float32)
    for i, row in enumerate(rows):
        for j, name in enumerate(feature_names):
            value = row[name]
            if name in encoders:
                matrix[i, j] = category_code(value, encoders[name])  # type: ignore[arg-type]
            else:
                number = float(value)  # type: ignore[arg-type]
                matrix[i, j] = 0.0 if math.isinf(number) else number
    return matrix
