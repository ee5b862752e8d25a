"""Flows as an Arrow table: the columnar bulk body of the batched APIs (issue 23).

A body sent as an Arrow IPC stream (`application/vnd.apache.arrow.stream`), an Arrow IPC file
(`application/vnd.apache.arrow.file`) or Parquet (`application/vnd.apache.parquet`) is one table: one column per
feature, under the names a JSON row would use (attack flows: the spaced CICFlowMeter names, or all in snake_case),
plus any of the context columns. It is checked as strictly as JSON, in two steps:

- the table's shape, once per column: a missing feature, a column that is neither a feature nor context, a name
  twice, a column of the wrong type (text for a number, a boolean, a date...), a feature with null values: a 400
  naming each column and its rule, never one error per row;
- the values: read straight into the float64 matrix of nids.core.columns and checked by the same vectorised
  rules as a JSON body (NaN, the +/-inf policy, ranges, float32 magnitudes, -0, category codes, addresses, ports).
  Whenever anything there is not plainly valid, the rows go through the pydantic flow models exactly as a JSON
  body's would: the same locations (`[flows, row, feature]`), rules and messages, and the same accepted values.

Limits apply before the rows are decoded where the format allows it (the row count and decoded size of Parquet,
the column set of both), and to every IPC record batch as it is read: at most
NIDS_MAX_ROWS_PER_BATCHED_REQUEST rows, at most NIDS_MAX_REQUEST_BYTES of decoded columns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nids.core.columns import FEATURES, Columnar, FlowBatch, checked_batch, reference_batch
from nids.core.errors import InvalidInput, RequestTooLarge
from nids.core.features import ATTACK_FEATURES, THREAT_CATEGORICAL
from nids.core.schemas import ATTACK_ATTRIBUTE, CONTEXT_FIELDS, FlowKind
from nids.core.settings import get_settings
from nids.core.validation import check_batched_rows

ARROW_STREAM = "application/vnd.apache.arrow.stream"
ARROW_FILE = "application/vnd.apache.arrow.file"
PARQUET = "application/vnd.apache.parquet"
FORMATS = {ARROW_STREAM: "an Arrow IPC stream", ARROW_FILE: "an Arrow IPC file", PARQUET: "Parquet"}

_EXACT_INT = 2**53  # integers beyond this lose digits as float64: the reference compares them exactly
_SNAKE = tuple(ATTACK_ATTRIBUTE[name] for name in ATTACK_FEATURES)


def _text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _text(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _integer(t: pa.DataType) -> bool:
    return pa.types.is_integer(t)


def _number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


# per column: whether its Arrow type is accepted, and the rule's message naming what is
_NUMBER = (_number, "Input should be a number: send the feature as an integer or floating-point column")


def _category(t: pa.DataType) -> bool:
    return _text(t) or _integer(t)


def _timestamp(t: pa.DataType) -> bool:
    return _text(t) or _number(t)


_CATEGORY = (_category, "Input should be a category name or an integer code: send text or integers")
_ADDRESS = (_text, "Input should be an IPv4 or IPv6 address: send the addresses as text")
_CONTEXT_TYPES = {
    "flow_id": (_text, "Input should be a valid string: send the flow ids as text"),
    "src_ip": _ADDRESS,
    "dst_ip": _ADDRESS,
    "src_port": (_integer, "Input should be a valid integer: send the ports as integers"),
    "timestamp": (_timestamp, "Input should be a valid string: send timestamps as text or epoch numbers"),
}


def _error(loc: list[str | int], kind: str, message: str) -> dict[str, Any]:
    return {"loc": loc, "msg": message, "type": kind}


def _naming(kind: FlowKind, names: list[str]) -> tuple[str, ...]:
    """The feature names the table uses: attack flows under the spaced names, or all in snake_case."""
    if kind == "attack" and not set(ATTACK_FEATURES) & set(names) and set(_SNAKE) & set(names):
        return _SNAKE
    return FEATURES[kind]


def check_schema(kind: FlowKind, schema: pa.Schema, *prefix: str | int) -> tuple[str, ...]:
    """The table's feature names (canonical order); InvalidInput naming every missing, unknown, repeated or
    mistyped column."""
    names = schema.names
    naming = _naming(kind, names)
    allowed = {*naming, *CONTEXT_FIELDS}
    repeated = {name for name, count in Counter(names).items() if count > 1}
    errors = [
        _error([*prefix, name], "duplicate_column", "the column appears twice: each column may appear once")
        for name in sorted(repeated)
    ]
    errors += [
        _error([*prefix, name], "missing", "Field required: the table has no column for this feature")
        for name in naming
        if name not in names
    ]
    extra = f"Extra inputs are not permitted: not a feature of {kind} flows nor a context field"
    errors += [
        _error([*prefix, name], "extra_forbidden", extra) for name in dict.fromkeys(names) if name not in allowed
    ]
    categorical = THREAT_CATEGORICAL if kind == "threat" else ()
    for field in schema:
        if field.name not in allowed or field.name in repeated:
            continue
        if field.name in _CONTEXT_TYPES:
            accepts, message = _CONTEXT_TYPES[field.name]
            accepts_null = True
        else:
            accepts, message = _CATEGORY if field.name in categorical else _NUMBER
            accepts_null = False
        if not (accepts(field.type) or (accepts_null and pa.types.is_null(field.type))):
            errors.append(_error([*prefix, field.name], "column_type", f"{message} (the column is {field.type})"))
    if errors:
        raise InvalidInput.fields(errors)
    return naming


def _open(body: bytes, media_type: str) -> tuple[pa.Schema, Iterator[pa.RecordBatch], Callable[[], None]]:
    """The body's schema, its record batches (read as iterated), and the checks its metadata allows before."""
    source = pa.BufferReader(body)
    if media_type == PARQUET:
        parquet = pq.ParquetFile(source)
        metadata = parquet.metadata

        def check() -> None:
            check_batched_rows(metadata.num_rows)
            _check_decoded(sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)))

        return parquet.schema_arrow, parquet.iter_batches(), check
    if media_type == ARROW_FILE:
        file = pa.ipc.open_file(source)
        return file.schema, (file.get_batch(i) for i in range(file.num_record_batches)), _nothing
    stream = pa.ipc.open_stream(source)
    return stream.schema, iter(stream), _nothing


def _nothing() -> None:
    return None


def _check_decoded(size: int) -> None:
    limit = get_settings().max_request_bytes
    if size > limit:
        message = f"{size} bytes of decoded columns in one request; the limit is {limit} (NIDS_MAX_REQUEST_BYTES)"
        raise RequestTooLarge(message)


def read_table(body: bytes, media_type: str, kind: FlowKind, *prefix: str | int) -> tuple[pa.Table, tuple[str, ...]]:
    """The body as one table of `kind`'s flows and its feature names (canonical order), its schema checked
    before any row is decoded; InvalidInput when it is not `media_type`."""
    rows = size = 0
    batches: list[pa.RecordBatch] = []
    try:
        schema, stream, check = _open(body, media_type)
        naming = check_schema(kind, schema, *prefix)
        check()
        for batch in stream:
            batch.validate(full=True)  # offsets and lengths of untrusted buffers, before any value is read
            rows, size = rows + batch.num_rows, size + batch.nbytes
            check_batched_rows(rows)
            _check_decoded(size)
            batches.append(batch)
        return pa.Table.from_batches(batches, schema), naming
    except (pa.ArrowException, ValueError, OSError) as error:  # ArrowInvalid, ArrowTypeError, truncated bodies
        message = f"the body cannot be read as {FORMATS[media_type]}: {error}"
        raise InvalidInput(message, detail=[_error([], "columnar_invalid", message)]) from None


def _check_nulls(table: pa.Table, features: tuple[str, ...], prefix: tuple[str | int, ...]) -> None:
    errors = []
    for name in features:
        column = table.column(name)
        if column.null_count:
            first = pc.index(pc.is_null(column), True).as_py()
            message = f"Field required: {column.null_count} row(s) have no value (the first: row {first})"
            errors.append(_error([*prefix, first, name], "missing", message))
    if errors:
        raise InvalidInput.fields(errors)


def table_batch(kind: FlowKind, table: pa.Table, naming: tuple[str, ...], *prefix: str | int) -> FlowBatch:
    """The table's flows as a batch (the schema already checked by check_schema)."""
    _check_nulls(table, naming, prefix)
    n = table.num_rows
    canonical = FEATURES[kind]
    categorical = THREAT_CATEGORICAL if kind == "threat" else ()
    values = np.zeros((n, len(canonical)))
    categories: dict[str, list[Any]] = {}
    exact = True
    for j, (feature, name) in enumerate(zip(canonical, naming, strict=True)):
        column = table.column(name)
        if feature in categorical:
            categories[feature] = column.to_pylist()
            continue
        read = column.to_numpy()
        if read.dtype.kind in "iu" and ((read >= _EXACT_INT) | (read <= -_EXACT_INT)).any():
            exact = False
        values[:, j] = read
    present = set(table.column_names)
    context = {name: table.column(name).to_pylist() if name in present else [None] * n for name in CONTEXT_FIELDS}
    batch = checked_batch(kind, values, categories, context) if exact else None
    return reference_batch(kind, table.to_pylist(), *prefix) if batch is None else batch


@dataclass(frozen=True)
class ColumnarBody(Columnar):
    """A request body in one of FORMATS, read and validated when the API's flow kind is known."""

    body: bytes
    media_type: str

    def batch(self, kind: FlowKind, *prefix: str | int) -> FlowBatch:
        table, naming = read_table(self.body, self.media_type, kind, *prefix)
        return table_batch(kind, table, naming, *prefix)
