"""Flows as columns: the bulk path of the batched APIs (issue 12), checked with numpy one feature at a time.

A request's flows arrive as decoded JSON (a list of objects). `validate_flows` reads each feature as a column,
checks the column's types in one pass and the rules of nids.core.validation over the whole float64 matrix at
once (NaN, the +/-inf policy, ranges, float32 magnitudes, -0), and keeps the context fields as lists. It never
decides a refusal by itself: whenever anything is not plainly valid (a missing or unknown key, a value of another
type, a value past a rule, a category code written as text, an unusual address), the same rows go through the
pydantic models of nids.core.schemas, which stay the reference. Every refusal is therefore theirs, with their
locations, rules and messages, and every accepted value is the one they would have produced
(tests/core/test_columns.py compares both on generated rows).

A `FlowBatch` is what the batched APIs and the pipeline work with: adaptive batching concatenates the batches
of several requests (nids.serving.compat.batching) and splits their `ThreatScores` / `AttackScores` back. Scores
build their JSON without a pydantic object per flow, and still behave as a sequence of the response models for
in-process callers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING, Annotated, Any, Self, TypeVar, overload

import numpy as np
import orjson
from pydantic import TypeAdapter, ValidationError, ValidationInfo
from pydantic_core import core_schema

from nids.core.encoding import UNKNOWN_CODE, code_table
from nids.core.features import ATTACK_FEATURES, THREAT_CATEGORICAL, THREAT_FEATURES
from nids.core.net import ip_text
from nids.core.schemas import (
    ATTACK_ATTRIBUTE,
    CONTEXT_FIELDS,
    AttackFlow,
    AttackPrediction,
    FlowKind,
    ThreatFlow,
    ThreatPrediction,
)
from nids.core.validation import (
    ATTACK_RULES,
    FLOAT32_MAX,
    FLOAT32_TINY,
    THREAT_RULES,
    FeatureRule,
    check_batched_row_count,
    invalid_fields,
)

if TYPE_CHECKING:
    from nids.core.model import LoadedModel

FEATURES: dict[FlowKind, tuple[str, ...]] = {"threat": THREAT_FEATURES, "attack": ATTACK_FEATURES}
_MODELS: dict[FlowKind, type[ThreatFlow]] = {"threat": ThreatFlow, "attack": AttackFlow}
_REFERENCE: dict[FlowKind, TypeAdapter[list[Any]]] = {
    kind: TypeAdapter(list[model])
    for kind, model in _MODELS.items()  # type: ignore[valid-type]
}
_CONTEXT = frozenset(CONTEXT_FIELDS)
_NUMBER_TYPES = frozenset({float, int})
_EXACT_INT = 2**53  # integers beyond this lose digits as float64: the reference compares them exactly
_TEXT_OR_NONE = frozenset({str, type(None)})
_INT64_MAX = int(np.iinfo(np.int64).max)  # a category code past it is past every model's categories as well


@dataclass(frozen=True)
class _Rules:
    """One kind's feature rules as vectors over the matrix columns (categorical columns: no rule here)."""

    numeric: np.ndarray  # column indices checked by a FeatureRule
    low: np.ndarray
    high: np.ndarray
    inf_is_error: np.ndarray

    @classmethod
    def of(cls, features: Sequence[str], rules: Mapping[str, FeatureRule]) -> _Rules:
        numeric = [j for j, name in enumerate(features) if name in rules]
        chosen = [rules[features[j]] for j in numeric]
        return cls(
            numeric=np.array(numeric),
            low=np.array([-np.inf if r.low is None else r.low for r in chosen]),
            high=np.array([np.inf if r.high is None else r.high for r in chosen]),
            inf_is_error=np.array([r.inf == "error" for r in chosen]),
        )

    def apply(self, values: np.ndarray) -> np.ndarray | None:
        """The values to use (inf -> 0 where allowed, -0 -> 0), or None when any value needs the reference."""
        x = values[:, self.numeric]
        infinite = np.isinf(x)
        if np.isnan(x).any() or (infinite & self.inf_is_error).any():
            return None
        x[infinite] = 0.0  # before the range: an allowed infinity is 0 whatever the range
        magnitude = np.abs(x)
        if (((x < self.low) | (x > self.high)) & ~infinite).any():
            return None
        if ((magnitude > FLOAT32_MAX) | ((magnitude < FLOAT32_TINY) & (x != 0))).any():
            return None
        values[:, self.numeric] = x + 0.0  # -0.0 + 0.0 == +0.0
        return values


_RULES: dict[FlowKind, _Rules] = {
    "threat": _Rules.of(THREAT_FEATURES, THREAT_RULES),
    "attack": _Rules.of(ATTACK_FEATURES, ATTACK_RULES),
}
# the key sets a row may use: attack flows under the spaced names or all in snake_case
_NAMINGS: dict[FlowKind, tuple[tuple[str, ...], ...]] = {
    "threat": (THREAT_FEATURES,),
    "attack": (ATTACK_FEATURES, tuple(ATTACK_ATTRIBUTE[name] for name in ATTACK_FEATURES)),
}


def _concat_context(parts: Sequence[FlowBatch | _Scores[Any]]) -> dict[str, list[Any]]:
    return {name: [v for p in parts for v in p.context[name]] for name in parts[0].context}


@lru_cache(maxsize=65_536)
def _address(text: str) -> str | None:
    """The address field's own canonical text (nids.core.net.ip_text), None when the reference must refuse it."""
    try:
        return ip_text(text)
    except ValueError:
        return None


@dataclass(frozen=True, eq=False)
class FlowBatch:
    """Validated flows of one kind: feature values in the kind's canonical order, categories and context as lists."""

    kind: FlowKind
    values: np.ndarray  # (n, features) float64; categorical columns hold 0 (their values are in `categories`)
    categories: dict[str, list[str | int]] = field(default_factory=dict)  # threat: service / flag as sent
    context: dict[str, list[Any]] = field(default_factory=dict)  # every CONTEXT_FIELDS name -> n values
    _codes: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, repr=False)  # (model tag, feature)

    def __len__(self) -> int:
        return len(self.values)

    @classmethod
    def of(cls, kind: FlowKind, flows: FlowBatch | Sequence[ThreatFlow]) -> FlowBatch:
        """A batch of validated flow models (or the batch itself): how analyze and in-process callers enter."""
        if isinstance(flows, FlowBatch):
            return flows
        names = FEATURES[kind]
        n = len(flows)
        categorical = [name for name in names if name in THREAT_CATEGORICAL] if kind == "threat" else []
        rows = [[flow[name] for name in names] for flow in flows]
        categories = {name: [row[names.index(name)] for row in rows] for name in categorical}
        for name in categorical:
            j = names.index(name)
            for row in rows:
                row[j] = 0.0
        values = np.array(rows, dtype=np.float64).reshape(n, len(names))
        context = {name: [getattr(flow, name) for flow in flows] for name in CONTEXT_FIELDS}
        return cls(kind, values, categories, context)

    @classmethod
    def concat(cls, batches: Sequence[FlowBatch]) -> FlowBatch:
        first = batches[0]
        shared = set(first._codes).intersection(*(b._codes for b in batches[1:]))  # codes every part has already
        return cls(
            first.kind,
            np.concatenate([b.values for b in batches]),
            {name: [v for b in batches for v in b.categories[name]] for name in first.categories},
            _concat_context(batches),
            {key: np.concatenate([b._codes[key] for b in batches]) for key in shared},
        )

    def __getitem__(self, rows: slice) -> FlowBatch:
        return FlowBatch(
            self.kind,
            self.values[rows],
            {name: values[rows] for name, values in self.categories.items()},
            {name: values[rows] for name, values in self.context.items()},
        )

    def matrix(self, model: LoadedModel) -> np.ndarray:
        """The float32 matrix in the model's feature order, categories encoded with the model's codes."""
        names = FEATURES[self.kind]
        X = self.values[:, [names.index(name) for name in model.feature_names]]
        for j, name in enumerate(model.feature_names):
            if name in self.categories:
                X[:, j] = self.codes(model, name)
        return X.astype(np.float32)

    def codes(self, model: LoadedModel, feature: str) -> np.ndarray:
        """Codes of one categorical column: names through the model's categories (unknown: UNKNOWN_CODE), codes as
        sent (checked against the model by the pipeline). Computed once per model and feature."""
        key = (model.tag, feature)
        if key not in self._codes:
            table = code_table(tuple(model.encoders.get(feature, ())))
            values = self.categories[feature]
            self._codes[key] = np.array(
                [table.get(v, UNKNOWN_CODE) if type(v) is str else min(v, _INT64_MAX) for v in values], dtype=np.int64
            ).reshape(len(values))
        return self._codes[key]

    def feature_dicts(self) -> list[dict[str, Any]]:
        """Per flow, {feature: value} as the flow models read them (the prediction log keeps these)."""
        names = FEATURES[self.kind]
        rows = self.values.tolist()
        for name, values in self.categories.items():
            j = names.index(name)
            for row, value in zip(rows, values, strict=True):
                row[j] = value
        return [dict(zip(names, row, strict=True)) for row in rows]


def validate_flows(kind: FlowKind, value: object, *prefix: str | int) -> FlowBatch:
    """A request's flows of `kind` as a batch; InvalidInput / RequestTooLarge exactly as the flow models refuse."""
    check_batched_row_count(value)
    batch = _columns(kind, value)
    return reference_batch(kind, value, *prefix) if batch is None else batch


def reference_batch(kind: FlowKind, rows: object, *prefix: str | int) -> FlowBatch:
    """The rows validated by the pydantic flow models (the reference): their refusal, or their values."""
    try:
        flows = _REFERENCE[kind].validate_python(rows)
    except ValidationError as error:
        raise invalid_fields(error, *prefix) from None
    return FlowBatch.of(kind, flows)


_DICT = frozenset({dict})


def _columns(kind: FlowKind, value: object) -> FlowBatch | None:
    """The column-wise check; None whenever the reference must look at the rows."""
    if type(value) is not list or not set(map(type, value)) <= _DICT:
        return None
    rows: list[dict[str, Any]] = value
    n = len(rows)
    namings = _namings(kind, rows)
    if namings is None:
        return None
    canonical = FEATURES[kind]
    numeric = [j for j, name in enumerate(canonical) if name not in THREAT_CATEGORICAL or kind != "threat"]
    values = np.zeros((n, len(canonical)))
    try:
        table, order = _table(rows, namings, numeric)
        categories = {canonical[j]: _table(rows, namings, [j])[0] for j in range(len(canonical)) if j not in numeric}
    except KeyError:  # a feature missing from a row
        return None
    if order is not None and categories:  # categorical features have one naming: never reached
        return None
    types = set(map(type, chain.from_iterable(table)))
    if not types <= _NUMBER_TYPES:
        return None
    try:
        read = np.fromiter(chain.from_iterable(table), np.float64, n * len(numeric)).reshape(n, len(numeric))
        if order is not None:  # rows listed by naming: back to row order
            read[order] = read.copy()
        values[:, numeric] = read
    except OverflowError:  # an integer past float64: the reference names its rule
        return None
    if int in types and (np.abs(values) >= _EXACT_INT).any():
        return None
    context = _context(rows, n, len(canonical))
    return None if context is None else checked_batch(kind, values, categories, context)


def checked_batch(
    kind: FlowKind, values: np.ndarray, categories: dict[str, list[Any]], context: dict[str, list[Any]]
) -> FlowBatch | None:
    """A batch of columns already read (feature values as float64 in canonical order, categorical columns 0;
    every context column, None where not sent), or None whenever the reference must look at the rows."""
    if not all(map(_plain_categories, categories.values())):
        return None
    checked = _RULES[kind].apply(values)
    if checked is None:
        return None
    canonical = checked_context(context)
    return None if canonical is None else FlowBatch(kind, checked, categories, canonical)


Namings = list[tuple[tuple[str, ...], list[int]]]


def _namings(kind: FlowKind, rows: list[dict[str, Any]]) -> Namings | None:
    """The feature keys of each row, grouped: (keys, row positions) per naming; None if a row carries a key that
    is neither a feature of its naming nor context. A missing feature shows as KeyError when the rows are read.
    A row is read in the first naming when it has that naming's first key, otherwise in the second."""
    options = _NAMINGS[kind]
    first = options[0][0]
    has_first = [first in row for row in rows]
    if len(options) == 1 or all(has_first):  # the usual case: one naming
        groups = [(options[0], list(range(len(rows))))]
    else:
        groups = [
            (options[0], [p for p, flag in enumerate(has_first) if flag]),
            (options[1], [p for p, flag in enumerate(has_first) if not flag]),
        ]
    for keys, positions in groups:
        size, allowed = len(keys), _allowed(keys)
        # a row with exactly its features' count of keys, all of them present, has no other key
        if len(groups) == 1 and set(map(len, rows)) == {size}:
            continue
        if any(len(rows[p]) != size and not rows[p].keys() <= allowed for p in positions):
            return None
    return [(keys, positions) for keys, positions in groups if positions]


def _table(rows: list[dict[str, Any]], namings: Namings, columns: list[int]) -> tuple[list[Any], list[int] | None]:
    """Per row, the values of the canonical `columns` (a tuple; the value itself for one column), and the row
    positions they are listed in (None: in row order)."""
    if len(namings) == 1:
        keys = namings[0][0]
        return list(map(itemgetter(*(keys[j] for j in columns)), rows)), None
    table: list[Any] = []
    for keys, positions in namings:
        table.extend(map(itemgetter(*(keys[j] for j in columns)), [rows[p] for p in positions]))
    return table, [p for _, positions in namings for p in positions]


@lru_cache(maxsize=4)
def _allowed(keys: tuple[str, ...]) -> frozenset[str]:
    return frozenset(keys) | _CONTEXT


def _plain_categories(column: list[Any]) -> bool:
    """Names that are not digits, or non-negative integer codes (the bound is checked against the serving model).
    Each distinct value is looked at once: a column holds a few dozen names (services, flags)."""
    if not set(map(type, column)) <= _CATEGORY_TYPES:  # exactly str and int: no bool, whose True would equal 1
        return False
    # a code written as text ("5") is converted by the reference
    return not any(v.strip().isdigit() if type(v) is str else v < 0 for v in set(column))


_CATEGORY_TYPES = frozenset({str, int})


def _context(rows: list[dict[str, Any]], n: int, features: int) -> dict[str, list[Any]]:
    """The context columns of the rows, None where not sent."""
    if sum(map(len, rows)) == n * features:  # no row carries context
        return {name: [None] * n for name in CONTEXT_FIELDS}
    return {name: [row.get(name) for row in rows] for name in CONTEXT_FIELDS}


def checked_context(context: dict[str, list[Any]]) -> dict[str, list[Any]] | None:
    """The context columns as the flow models keep them (addresses canonical, timestamps as text), None when one
    of them needs the reference."""
    if all(column.count(None) == len(column) for column in context.values()):  # none sent
        return context
    if not set(map(type, context["flow_id"])) <= _TEXT_OR_NONE:
        return None
    timestamps = context["timestamp"]
    if not set(map(type, timestamps)) <= _TEXT_OR_NONE:
        if not set(map(type, timestamps)) <= {str, int, float, type(None)}:
            return None
        context["timestamp"] = [str(v) if type(v) in (int, float) else v for v in timestamps]
    ports = context["src_port"]
    if not set(map(type, ports)) <= {int, type(None)} or any(p is not None and not 0 <= p <= 65535 for p in ports):
        return None
    for name in ("src_ip", "dst_ip"):
        column = context[name]
        if not set(map(type, column)) <= _TEXT_OR_NONE:
            return None
        canonical = [None if v is None else _address(v) for v in column]
        if any(c is None and v is not None for c, v in zip(canonical, column, strict=True)):
            return None
        context[name] = canonical
    return context


# --- predictions as columns ------------------------------------------------------------------------------
P = TypeVar("P", ThreatPrediction, AttackPrediction)


class _Scores(Sequence[P]):
    """Predictions of one batch; JSON built from the columns, pydantic objects only when indexed."""

    context: dict[str, list[Any]]

    def __len__(self) -> int:
        return len(next(iter(self.context.values()), ()))

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per flow, fields in the response model's order."""
        raise NotImplementedError

    def model(self) -> type[P]:
        raise NotImplementedError

    @cached_property
    def _objects(self) -> list[P]:
        model = self.model()
        return [model.model_validate(record) for record in self.records()]  # type: ignore[attr-defined]

    @overload
    def __getitem__(self, index: int) -> P: ...
    @overload
    def __getitem__(self, index: slice) -> Self: ...
    def __getitem__(self, index: int | slice) -> P | Self:
        if isinstance(index, slice):
            return self._slice(index)
        return self._objects[index]

    def __iter__(self) -> Iterator[P]:
        return iter(self._objects)

    def _slice(self, rows: slice) -> Self:
        raise NotImplementedError

    def _context_columns(self) -> tuple[list[Any], ...]:
        """The context columns in CONTEXT_FIELDS order, for records() to zip with the score columns."""
        c = self.context
        return c["flow_id"], c["src_ip"], c["dst_ip"], c["src_port"], c["timestamp"]

    def json(self) -> bytes:
        return orjson.dumps(self.records())


@dataclass(frozen=True, eq=False)
class ThreatScores(_Scores[ThreatPrediction]):
    context: dict[str, list[Any]]
    scores: np.ndarray  # the original's scale: >= 0.5 exactly when is_attack (nids.core.pipeline.verdict_scores)
    is_attack: np.ndarray
    threshold: float  # 0.5, the threshold on `scores`
    model_version: str
    unknown: list[Sequence[str]]  # per flow, the categorical features it named unknown (mostly ())
    probability: np.ndarray  # the model's P(attack)
    decision_threshold: float  # the model's operating point on `probability`

    def model(self) -> type[ThreatPrediction]:
        return ThreatPrediction

    def records(self) -> list[dict[str, Any]]:
        t, v, d = self.threshold, self.model_version, self.decision_threshold
        columns = zip(
            *self._context_columns(),
            self.scores.tolist(),
            self.is_attack.tolist(),
            self.unknown,
            self.probability.tolist(),
            strict=True,
        )
        return [
            {"flow_id": f, "src_ip": s, "dst_ip": dst, "src_port": p, "timestamp": ts, "prediction_score": score,
             "is_attack": attack, "threshold": t, "model_version": v, "unknown_categories": unknown,
             "attack_probability": probability, "decision_threshold": d}
            for f, s, dst, p, ts, score, attack, unknown, probability in columns
        ]  # fmt: skip

    @classmethod
    def concat(cls, parts: Sequence[ThreatScores]) -> ThreatScores:
        first = parts[0]
        return ThreatScores(
            _concat_context(parts),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.is_attack for p in parts]),
            first.threshold,
            first.model_version,
            [names for p in parts for names in p.unknown],
            np.concatenate([p.probability for p in parts]),
            first.decision_threshold,
        )

    def _slice(self, rows: slice) -> ThreatScores:
        context = {name: values[rows] for name, values in self.context.items()}
        return ThreatScores(
            context,
            self.scores[rows],
            self.is_attack[rows],
            self.threshold,
            self.model_version,
            self.unknown[rows],
            self.probability[rows],
            self.decision_threshold,
        )


@dataclass(frozen=True, eq=False)
class AttackScores(_Scores[AttackPrediction]):
    context: dict[str, list[Any]]
    top: np.ndarray  # (n, k) class codes, most probable first
    top_proba: np.ndarray  # (n, k) their probabilities
    class_names: tuple[str, ...]
    model_version: str

    @property
    def codes(self) -> np.ndarray:
        return self.top[:, 0]

    def model(self) -> type[AttackPrediction]:
        return AttackPrediction

    def records(self) -> list[dict[str, Any]]:
        names, v = self.class_names, self.model_version
        columns = zip(*self._context_columns(), self.top.tolist(), self.top_proba.tolist(), strict=True)
        return [
            {"flow_id": f, "src_ip": s, "dst_ip": d, "src_port": p, "timestamp": ts, "attack_type_encoded": codes[0],
             "attack_type_name": names[codes[0]], "confidence": probabilities[0],
             "top_classes": [{"attack_type_name": names[code], "attack_type_encoded": code, "probability": q}
                             for code, q in zip(codes, probabilities, strict=True)],
             "model_version": v}
            for f, s, d, p, ts, codes, probabilities in columns
        ]  # fmt: skip

    @classmethod
    def concat(cls, parts: Sequence[AttackScores]) -> AttackScores:
        first = parts[0]
        top, proba = np.concatenate([p.top for p in parts]), np.concatenate([p.top_proba for p in parts])
        return AttackScores(_concat_context(parts), top, proba, first.class_names, first.model_version)

    def _slice(self, rows: slice) -> AttackScores:
        context = {name: values[rows] for name, values in self.context.items()}
        return AttackScores(context, self.top[rows], self.top_proba[rows], self.class_names, self.model_version)


# --- the request and response types of the batched APIs ---------------------------------------------------
class Columnar(ABC):
    """A request body that arrived as columns (an Arrow or Parquet table, nids.core.tables), not as JSON rows."""

    @abstractmethod
    def batch(self, kind: FlowKind, *prefix: str | int) -> FlowBatch:
        """The flows of `kind` validated as a batch; InvalidInput / RequestTooLarge naming column and rule."""


class Columns:
    """Pydantic metadata: a value of `kind`'s flows validated as a FlowBatch, documented as the flow list.

    A `Columnar` body (Arrow, Parquet) is validated by its own column checks into the same FlowBatch.
    `check`, when given, runs on each request's batch after validation (the service checks category codes against
    the serving model there, before adaptive batching merges requests)."""

    def __init__(self, kind: FlowKind, check: Callable[[FlowBatch], None] | None = None) -> None:
        self.kind = kind
        self.check = check

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        def validate(value: object, info: ValidationInfo) -> FlowBatch:
            if isinstance(value, FlowBatch):
                return value
            prefix = (info.field_name,) if info.field_name else ()
            if isinstance(value, Columnar):
                batch = value.batch(self.kind, *prefix)
            else:
                batch = validate_flows(self.kind, value, *prefix)
            if self.check is not None:
                self.check(batch)
            return batch

        return core_schema.with_info_plain_validator_function(validate)

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: Any) -> Any:
        return handler(_REFERENCE[self.kind].core_schema)


class _Predictions:
    """Pydantic metadata: scores answered as JSON bytes built from their columns, documented as the model list."""

    def __init__(self, prediction: type[ThreatPrediction] | type[AttackPrediction]) -> None:
        self.listed = TypeAdapter(list[prediction])  # type: ignore[valid-type]

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _scores, serialization=core_schema.plain_serializer_function_ser_schema(_json)
        )

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: Any) -> Any:
        return handler(self.listed.core_schema)


def _scores(value: object) -> _Scores[Any]:
    if not isinstance(value, _Scores):
        raise TypeError(f"expected ThreatScores or AttackScores, got {type(value).__name__}")
    return value


def _json(scores: _Scores[Any]) -> bytes:
    return scores.json()


ThreatPredictions = Annotated[ThreatScores, _Predictions(ThreatPrediction)]
AttackPredictions = Annotated[AttackScores, _Predictions(AttackPrediction)]
