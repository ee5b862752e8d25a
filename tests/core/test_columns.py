"""The column-wise path accepts exactly what the pydantic flow models accept, with their values and their refusals.

The reference is `list[ThreatFlow]` / `list[AttackFlow]` (nids.core.schemas). Rows are generated (hypothesis) from
real flows with fields broken, retyped, dropped, renamed or added, including every value class the rules single
out (NaN, +/-inf, -0, float32 overflow and subnormals, integers past float64, booleans, numbers as text).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from loadtest.payloads import load_pool
from nids.core.columns import (
    _REFERENCE,
    AttackScores,
    FlowBatch,
    ThreatScores,
    _columns,
    validate_flows,
)
from nids.core.errors import InvalidInput, RequestTooLarge
from nids.core.features import ATTACK_FEATURES, THREAT_FEATURES
from nids.core.schemas import ATTACK_ATTRIBUTE, CONTEXT_FIELDS, AttackPrediction, FlowKind, ThreatPrediction
from nids.core.validation import invalid_fields

FIXTURES = Path(__file__).parents[1] / "fixtures"
THREAT_MESSAGE: dict[str, Any] = json.loads((FIXTURES / "original_threat_message.json").read_text())
ATTACK_FLOW: dict[str, Any] = json.loads((FIXTURES / "original_attack_flow.json").read_text())
RULE_CASES: list[dict[str, Any]] = json.loads((FIXTURES / "validation_cases.json").read_text())
BASE: dict[FlowKind, dict[str, Any]] = {"threat": THREAT_MESSAGE, "attack": ATTACK_FLOW}

# every class of value the rules distinguish, and the types a JSON body can carry
ODD_VALUES = st.sampled_from(
    [0, -0.0, 1, 0.5, -1, -3.5, 1.0, 65535, 65536, 1e38, 3.5e38, 1e39, -1e39, 1e-39, -1e-40, 1e-45, 2**53,
     2**60, 10**400, math.inf, -math.inf, math.nan, True, False, None, "", "1.5", "inf", "Infinity", "nan",
     "1e400", "1_000", " 7 ", "ten", [], {}]
)  # fmt: skip
CATEGORY_VALUES = st.sampled_from(
    ["http", "SF", "gopher-over-quic", "", 0, 3, 10_000, 10**30, -1, "5", " 12 ", True, 1.0]
)
CONTEXT_VALUES = {
    "flow_id": st.sampled_from(["f-1", "", None, 7]),
    "src_ip": st.sampled_from(["192.0.2.10", "2001:DB8::1", " 10.0.0.1 ", "10.0.0.256", "host", None, 5]),
    "dst_ip": st.sampled_from(["198.51.100.2", "::ffff:1.2.3.4", None]),
    "src_port": st.sampled_from([0, 80, 65535, 65536, -1, 80.0, "80", True, None]),
    "timestamp": st.sampled_from(["2017-07-07 10:00:00", 1499421600, 1499421600.5, True, None, [1]]),
}


def reference(kind: FlowKind, rows: object) -> FlowBatch:
    return FlowBatch.of(kind, _REFERENCE[kind].validate_python(rows))


def assert_same_batch(got: FlowBatch, expected: FlowBatch) -> None:
    assert got.kind == expected.kind
    np.testing.assert_array_equal(got.values, expected.values)
    assert not np.signbit(got.values).any() or np.array_equal(np.signbit(got.values), np.signbit(expected.values))
    assert got.categories == expected.categories
    assert [type(v) for values in got.categories.values() for v in values] == [
        type(v) for values in expected.categories.values() for v in values
    ]
    assert got.context == expected.context


def assert_same_outcome(kind: FlowKind, rows: list[Any]) -> None:
    """validate_flows answers as the reference does: the same batch, or the same refusal."""
    try:
        expected = reference(kind, rows)
    except ValidationError as error:
        with pytest.raises(InvalidInput) as refused:
            validate_flows(kind, rows, "flows")
        assert list(refused.value.detail) == list(invalid_fields(error, "flows").detail)
        return
    assert_same_batch(validate_flows(kind, rows, "flows"), expected)


@st.composite
def requests(draw: st.DrawFn, kind: FlowKind) -> list[dict[str, Any]]:
    base = BASE[kind]
    snake = {ATTACK_ATTRIBUTE.get(name, name): value for name, value in base.items()}
    rows = []
    for _ in range(draw(st.integers(1, 5))):
        row = dict(draw(st.sampled_from([base, snake])) if kind == "attack" else base)
        for _ in range(draw(st.integers(0, 3))):
            name = draw(st.sampled_from(sorted(row)))
            change = draw(st.sampled_from(["odd", "drop", "category", "context", "extra", "rename"]))
            if change == "odd":
                row[name] = draw(ODD_VALUES)
            elif change == "drop":
                del row[name]
            elif change == "category" and kind == "threat":
                row[draw(st.sampled_from(["service", "flag"]))] = draw(CATEGORY_VALUES)
            elif change == "context":
                field = draw(st.sampled_from(CONTEXT_FIELDS))
                row[field] = draw(CONTEXT_VALUES[field])
            elif change == "extra":
                row["label"] = "BENIGN"
            elif change == "rename" and kind == "attack" and name in ATTACK_ATTRIBUTE:
                row[ATTACK_ATTRIBUTE[name]] = row.pop(name)  # one field in the other naming
        rows.append(row)
    return rows


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=requests("threat"))
def test_threat_rows_match_the_reference(rows: list[dict[str, Any]]) -> None:
    assert_same_outcome("threat", rows)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=requests("attack"))
def test_attack_rows_match_the_reference(rows: list[dict[str, Any]]) -> None:
    assert_same_outcome("attack", rows)


@pytest.mark.parametrize("case", RULE_CASES, ids=lambda case: f"{case['field'].strip()}-{case['type']}")
def test_every_validation_fixture_is_refused_as_before(case: dict[str, Any]) -> None:
    kind: FlowKind = "threat" if case["api"] == "detect_threat" else "attack"
    rows = [BASE[kind], {**BASE[kind], **case["change"]}]
    if case.get("needs_model"):  # category codes past the model: the pipeline refuses them, not validation
        assert_same_outcome(kind, rows)
        return
    with pytest.raises(InvalidInput) as refused:
        validate_flows(kind, rows, "flows")
    assert [(e["loc"], e["type"]) for e in refused.value.detail] == [(["flows", 1, case["field"]], case["type"])]


@pytest.mark.parametrize("kind", ["threat", "attack"])
def test_real_flows_take_the_column_path_with_the_reference_values(kind: FlowKind) -> None:
    """Every held-out flow of the load-test pools (both attack namings, mixed in one request)."""
    rows = orjson.loads(json.dumps(load_pool(kind)))
    batch = _columns(kind, rows)
    assert batch is not None, "plain real flows must not need the reference path"
    assert_same_batch(batch, reference(kind, rows))
    assert set(CONTEXT_FIELDS) == set(batch.context)


def test_context_is_checked_and_kept() -> None:
    context = {"flow_id": "f-9", "src_ip": "2001:DB8::1", "dst_ip": "10.0.0.2", "src_port": 443, "timestamp": 17.5}
    rows = [{**THREAT_MESSAGE, **context}, THREAT_MESSAGE]
    batch = _columns("threat", rows)
    assert batch is not None
    assert batch.context["src_ip"] == ["2001:db8::1", None]  # canonical text, as the reference stores it
    assert batch.context["timestamp"] == ["17.5", None]
    assert_same_batch(batch, reference("threat", rows))


def test_empty_request_and_row_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIDS_MAX_ROWS_PER_BATCHED_REQUEST", "2")
    assert len(validate_flows("threat", [])) == 0
    with pytest.raises(RequestTooLarge, match="NIDS_MAX_ROWS_PER_BATCHED_REQUEST"):
        validate_flows("threat", [THREAT_MESSAGE] * 3)


@pytest.mark.parametrize("value", [None, {}, "flows", [1], [[]]])
def test_a_body_that_is_not_a_list_of_objects_is_refused_as_before(value: object) -> None:
    assert_same_outcome("threat", value)  # type: ignore[arg-type]


def test_batches_concatenate_and_slice() -> None:
    a = validate_flows("threat", [THREAT_MESSAGE, {**THREAT_MESSAGE, "flow_id": "b"}])
    b = validate_flows("threat", [{**THREAT_MESSAGE, "service": 3}])
    merged = FlowBatch.concat([a, b])
    assert len(merged) == 3
    assert merged.context["flow_id"] == [None, "b", None]
    assert merged.categories["service"] == [THREAT_MESSAGE["service"], THREAT_MESSAGE["service"], 3]
    assert_same_batch(merged[1:3], FlowBatch.concat([a[1:2], b]))


def test_codes_computed_per_request_carry_over_to_the_merged_batch() -> None:
    model = SimpleNamespace(tag="t:1", encoders={"service": ["http", "ftp"], "flag": ["SF"]})
    a = validate_flows("threat", [{**THREAT_MESSAGE, "service": "ftp"}])
    b = validate_flows("threat", [{**THREAT_MESSAGE, "service": "gopher"}, {**THREAT_MESSAGE, "service": 1}])
    for part in (a, b):
        part.codes(model, "service")  # type: ignore[arg-type]
    merged = FlowBatch.concat([a, b])
    assert merged.codes(model, "service").tolist() == [1, -1, 1]  # type: ignore[arg-type]
    assert merged.codes(model, "flag").tolist() == [THREAT_MESSAGE["flag"]] * 3  # type: ignore[arg-type]


def test_feature_dicts_read_like_the_flow_models() -> None:
    rows = [THREAT_MESSAGE, {**ATTACK_FLOW}]
    threat = validate_flows("threat", rows[:1])
    assert threat.feature_dicts() == [{name: _model_value(THREAT_MESSAGE[name]) for name in THREAT_FEATURES}]
    attack = validate_flows("attack", rows[1:])
    assert list(attack.feature_dicts()[0]) == list(ATTACK_FEATURES)


def _model_value(value: Any) -> Any:
    return value if isinstance(value, str) else float(value)


def test_scores_answer_the_response_models_json() -> None:
    context = {name: [None, "x"] if name == "flow_id" else [None, None] for name in CONTEXT_FIELDS}
    threat = ThreatScores(
        context,
        np.array([0.25, 0.75]),
        np.array([False, True]),
        0.5,
        "t:1",
        [[], ["service"]],
        np.array([0.1, 0.9]),
        0.3,
    )
    listed = TypeAdapter(list[ThreatPrediction])
    assert orjson.loads(threat.json()) == listed.dump_python(list(threat), mode="json")
    assert [p.flow_id for p in threat] == [None, "x"] and threat[1].unknown_categories == ["service"]
    assert isinstance(threat[1:], ThreatScores) and len(threat[1:]) == 1
    rejoined = ThreatScores.concat([threat[:1], threat[1:]])
    assert rejoined.json() == threat.json()

    names = ("BENIGN", "DoS Hulk", "DDoS")
    attack = AttackScores(context, np.array([[1, 0, 2], [0, 2, 1]]), np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]]),
                          names, "a:1")  # fmt: skip
    assert orjson.loads(attack.json()) == TypeAdapter(list[AttackPrediction]).dump_python(list(attack), mode="json")
    assert attack[0].attack_type_name == "DoS Hulk" and attack[0].top_classes[2].attack_type_name == "DDoS"
    assert attack.codes.tolist() == [1, 0]
    assert AttackScores.concat([attack[:1], attack[1:]]).json() == attack.json()
