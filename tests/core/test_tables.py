"""Columnar bodies (nids.core.tables): the same batches as JSON on real held-out flows, and refusals as strict as
JSON's, naming the column and the rule."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loadtest.payloads import load_pool
from nids.core.columns import FlowBatch, validate_flows
from nids.core.errors import InvalidInput, RequestTooLarge
from nids.core.features import ATTACK_FEATURE_BY_SNAKE
from nids.core.schemas import ATTACK_ATTRIBUTE, FlowKind
from nids.core.settings import get_settings
from nids.core.tables import ARROW_FILE, ARROW_STREAM, PARQUET, ColumnarBody

Rows = list[dict[str, Any]]


def spaced(rows: Rows) -> Rows:
    """Attack rows all under the spaced names (the pool mixes both namings; a table has one)."""
    return [{ATTACK_FEATURE_BY_SNAKE.get(key, key): value for key, value in row.items()} for row in rows]


def snake(rows: Rows) -> Rows:
    return [{ATTACK_ATTRIBUTE.get(key, key): value for key, value in row.items()} for row in spaced(rows)]


def pool(kind: FlowKind) -> Rows:
    return spaced(load_pool(kind)) if kind == "attack" else load_pool(kind)


def encode(table: pa.Table, media_type: str = ARROW_STREAM) -> bytes:
    sink = pa.BufferOutputStream()
    if media_type == PARQUET:
        pq.write_table(table, sink)
    else:
        new = pa.ipc.new_file if media_type == ARROW_FILE else pa.ipc.new_stream
        with new(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=300)  # several record batches
    return sink.getvalue().to_pybytes()


def batch_of(kind: FlowKind, table: pa.Table, media_type: str = ARROW_STREAM) -> FlowBatch:
    return ColumnarBody(encode(table, media_type), media_type).batch(kind, "flows")


def refusal(call: Callable[[], Any]) -> list[dict[str, Any]]:
    with pytest.raises(InvalidInput) as caught:
        call()
    return [dict(item) for item in caught.value.detail]


def same(a: FlowBatch, b: FlowBatch) -> None:
    assert a.kind == b.kind
    np.testing.assert_array_equal(a.values, b.values)
    assert a.categories == b.categories
    assert a.context == b.context


@pytest.mark.parametrize("media_type", [ARROW_STREAM, ARROW_FILE, PARQUET])
@pytest.mark.parametrize("kind", ["threat", "attack"])
def test_the_pool_reads_as_its_json(kind: FlowKind, media_type: str) -> None:
    rows = pool(kind)[:1000]
    same(batch_of(kind, pa.Table.from_pylist(rows), media_type), validate_flows(kind, rows, "flows"))


def test_attack_columns_in_snake_case() -> None:
    rows = snake(load_pool("attack")[:200])
    same(batch_of("attack", pa.Table.from_pylist(rows)), validate_flows("attack", rows, "flows"))


def test_context_columns_are_canonical_as_in_json() -> None:
    rows = [
        {**row, "flow_id": f"f{i}", "src_ip": "::ffff:10.0.0.1" if i % 2 else "10.0.0.2", "src_port": 443,
         "timestamp": 1_700_000_000.5 + i}
        for i, row in enumerate(pool("threat")[:50])
    ]  # fmt: skip
    batch = batch_of("threat", pa.Table.from_pylist(rows))
    same(batch, validate_flows("threat", rows, "flows"))
    assert batch.context["timestamp"][0] == "1700000000.5"


def test_float32_and_dictionary_columns() -> None:
    rows = pool("threat")[:100]
    table = pa.Table.from_pylist(rows)
    table = table.set_column(table.schema.get_field_index("service"), "service", table["service"].dictionary_encode())
    index = table.schema.get_field_index("same_srv_rate")
    table = table.set_column(index, "same_srv_rate", table["same_srv_rate"].cast(pa.float32()))
    expected = [{**row, "same_srv_rate": float(np.float32(row["same_srv_rate"]))} for row in rows]
    same(batch_of("threat", table), validate_flows("threat", expected, "flows"))


def test_missing_extra_and_repeated_columns_are_named_once() -> None:
    table = pa.Table.from_pylist(pool("threat")[:500]).drop_columns(["count", "flag"])
    table = table.append_column("bogus", pa.array([1] * 500)).append_column("src_bytes", pa.array([1] * 500))
    detail = refusal(lambda: batch_of("threat", table))
    assert {(tuple(item["loc"]), item["type"]) for item in detail} == {
        (("flows", "count"), "missing"),
        (("flows", "flag"), "missing"),
        (("flows", "bogus"), "extra_forbidden"),
        (("flows", "src_bytes"), "duplicate_column"),
    }


@pytest.mark.parametrize(
    ("column", "array"),
    [
        ("src_bytes", pa.array(["1"] * 20)),  # text for a number
        ("src_bytes", pa.array([True] * 20)),  # booleans are refused in JSON too
        ("service", pa.array([1.5] * 20)),  # a category is a name or an integer code
        ("src_port", pa.array(["80"] * 20)),
        ("src_ip", pa.array([1] * 20)),
        ("timestamp", pa.array([True] * 20)),
    ],
)
def test_a_mistyped_column_is_named_with_its_rule(column: str, array: pa.Array) -> None:
    table = pa.Table.from_pylist(pool("threat")[:20])
    if column in table.column_names:
        table = table.drop_columns([column])
    detail = refusal(lambda: batch_of("threat", table.append_column(column, array)))
    assert [(item["loc"], item["type"]) for item in detail] == [(["flows", column], "column_type")]
    assert str(array.type) in detail[0]["msg"]


def test_null_feature_values_name_the_column_and_first_row() -> None:
    rows = pool("attack")[:30]
    rows[7] = {**rows[7], " Flow Duration": None}
    rows[9] = {**rows[9], " Flow Duration": None}
    detail = refusal(lambda: batch_of("attack", pa.Table.from_pylist(rows)))
    assert detail == [
        {"loc": ["flows", 7, " Flow Duration"], "type": "missing", "msg": "Field required: 2 row(s) have no value "
         "(the first: row 7)"}
    ]  # fmt: skip


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0, 2.0, 1e39, 1e-40])
def test_value_rules_refuse_as_json_does(value: float) -> None:
    """NaN, the inf policy, ranges and float32 magnitudes: JSON's reference decides, same locations and messages."""
    rows = pool("threat")[:40]
    rows[3] = {**rows[3], "same_srv_rate": value}  # a rate within [0, 1]; inf is an error there
    rows[5] = {**rows[5], "src_bytes": value}  # inf allowed (read as 0) on byte counts
    as_json(rows)


def test_integers_past_float64_precision_follow_the_reference() -> None:
    rows = pool("threat")[:10]
    rows[2] = {**rows[2], "src_bytes": 2**53 + 1}
    as_json(rows)


def as_json(rows: Rows) -> None:
    """The table of `rows` is accepted as the same batch as their JSON, or refused with the same detail."""
    table = pa.Table.from_pylist(rows)
    try:
        expected = validate_flows("threat", rows, "flows")
    except InvalidInput as error:
        assert refusal(lambda: batch_of("threat", table)) == [dict(item) for item in error.detail]
    else:
        same(batch_of("threat", table), expected)


def test_category_codes_and_text_codes_as_in_json() -> None:
    rows = pool("threat")[:10]
    coded = [{**row, "service": i} for i, row in enumerate(rows)]
    same(batch_of("threat", pa.Table.from_pylist(coded)), validate_flows("threat", coded, "flows"))
    text = [{**row, "service": str(i)} for i, row in enumerate(rows)]  # "5" is the code 5
    same(batch_of("threat", pa.Table.from_pylist(text)), validate_flows("threat", text, "flows"))
    negative = [{**row, "flag": -1} for row in rows]
    detail = refusal(lambda: batch_of("threat", pa.Table.from_pylist(negative)))
    assert {item["type"] for item in detail} == {"category_code"}


def test_too_many_rows_or_bytes() -> None:
    limit = get_settings().max_rows_per_batched_request
    rows = pool("threat")
    table = pa.Table.from_pylist((rows * (limit // len(rows) + 1))[: limit + 1])
    for media_type in (ARROW_STREAM, PARQUET):
        with pytest.raises(RequestTooLarge, match="NIDS_MAX_ROWS_PER_BATCHED_REQUEST"):
            batch_of("threat", table, media_type)


@pytest.mark.parametrize("media_type", [ARROW_STREAM, ARROW_FILE, PARQUET])
def test_unreadable_bodies_are_400(media_type: str) -> None:
    good = encode(pa.Table.from_pylist(pool("threat")[:100]), media_type)
    for body in (b"", b"{}", good[: len(good) // 2], b"\xff" * 64):
        detail = refusal(lambda body=body: ColumnarBody(body, media_type).batch("threat", "flows"))
        assert detail[0]["type"] == "columnar_invalid"


def test_an_empty_table_is_an_empty_batch() -> None:
    table = pa.Table.from_pylist(pool("attack")[:1]).slice(0, 0)
    assert len(batch_of("attack", table)) == 0
