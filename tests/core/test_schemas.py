"""Request models: names, aliases, context fields, and errors that name row, field and rule."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from nids.core.actions import AttackEvent
from nids.core.features import ATTACK_FEATURE_BY_SNAKE, ATTACK_FEATURES, THREAT_FEATURES
from nids.core.schemas import AnalyzeFlow, AttackFlow, ThreatFlow, flow_kind

FIXTURES = Path(__file__).parents[1] / "fixtures"
# the original system's threat message, unchanged
THREAT_MESSAGE: dict[str, Any] = json.loads((FIXTURES / "original_threat_message.json").read_text())
# a real SSH-Patator flow of the original CIC-IDS2017 release (data/cic-ids2017), under the spaced names
ATTACK_FLOW: dict[str, Any] = json.loads((FIXTURES / "original_attack_flow.json").read_text())
# every validation rule, as (api, change to a valid row, field, error type); also sent over HTTP
RULE_CASES: list[dict[str, Any]] = json.loads((FIXTURES / "validation_cases.json").read_text())


def case_id(case: dict[str, Any]) -> str:
    return f"{case['field'].strip()}-{case['type']}"


def errors(adapter_type: Any, body: Any) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as caught:
        TypeAdapter(adapter_type).validate_python(body)
    return caught.value.errors(include_url=False, include_input=False)


def locs(adapter_type: Any, body: Any) -> dict[tuple[Any, ...], str]:
    return {tuple(error["loc"]): error["type"] for error in errors(adapter_type, body)}


def test_original_threat_message_is_accepted_unchanged() -> None:
    flow = ThreatFlow.model_validate(THREAT_MESSAGE)
    assert [flow[name] for name in THREAT_FEATURES] == [THREAT_MESSAGE[name] for name in THREAT_FEATURES]


def test_original_attack_flow_under_spaced_names_is_accepted() -> None:
    flow = AttackFlow.model_validate(ATTACK_FLOW)
    assert [flow[name] for name in ATTACK_FEATURES] == [ATTACK_FLOW[name] for name in ATTACK_FEATURES]


def test_attack_flow_accepts_snake_case_names() -> None:
    snake = {alias: ATTACK_FLOW[name] for alias, name in ATTACK_FEATURE_BY_SNAKE.items()}
    assert AttackFlow.model_validate(snake) == AttackFlow.model_validate(ATTACK_FLOW)


def test_categories_accept_names_and_codes() -> None:
    named = ThreatFlow.model_validate({**THREAT_MESSAGE, "service": "http", "flag": "SF"})
    assert (named["service"], named["flag"]) == ("http", "SF")
    # codes sent as text (CSV uploads) are codes
    assert ThreatFlow.model_validate({**THREAT_MESSAGE, "service": "5"})["service"] == 5


def test_context_fields_are_accepted_and_normalised() -> None:
    context = {"flow_id": "f-1", "src_ip": "10.0.0.7", "dst_ip": "2001:db8::1", "src_port": 51000, "timestamp": 1.5}
    flow = ThreatFlow.model_validate({**THREAT_MESSAGE, **context})
    assert flow.context() == {**context, "timestamp": "1.5"}


def test_inf_in_flow_features_reads_as_zero() -> None:
    flow = AttackFlow.model_validate({**ATTACK_FLOW, "Flow Bytes/s": "Infinity", " Flow Packets/s": math.inf})
    assert flow["Flow Bytes/s"] == 0.0 and flow[" Flow Packets/s"] == 0.0


@pytest.mark.parametrize("case", [case for case in RULE_CASES if not case.get("needs_model")], ids=case_id)
def test_rule_errors_name_row_and_field(case: dict[str, Any]) -> None:
    """One invalid row among valid ones: exactly that row and field are reported, with the rule's type."""
    model, base = (ThreatFlow, THREAT_MESSAGE) if case["api"] == "detect_threat" else (AttackFlow, ATTACK_FLOW)
    body = [base, base, {**base, **case["change"]}]
    assert locs(list[model], body) == {(2, case["field"]): case["type"]}


def test_missing_threat_feature_is_an_error() -> None:
    body = [{name: value for name, value in THREAT_MESSAGE.items() if name != "count"}]
    assert locs(list[ThreatFlow], body) == {(0, "count"): "missing"}


def test_signed_features_accept_the_negatives_cicflowmeter_emits() -> None:
    flow = AttackFlow.model_validate(
        {**ATTACK_FLOW, " Flow IAT Min": -3, "Init_Win_bytes_forward": -1, " Fwd Header Length": -6442450000}
    )
    assert flow[" Flow IAT Min"] == -3


def test_missing_attack_feature_names_its_original_name() -> None:
    body = [{name: value for name, value in ATTACK_FLOW.items() if name != " Flow IAT Min"}]
    assert locs(list[AttackFlow], body) == {(0, " Flow IAT Min"): "missing"}


def test_every_invalid_row_is_listed() -> None:
    body = [THREAT_MESSAGE, {**THREAT_MESSAGE, "count": -1}, THREAT_MESSAGE, {**THREAT_MESSAGE, "diff_srv_rate": 7}]
    assert locs(list[ThreatFlow], body) == {(1, "count"): "out_of_range", (3, "diff_srv_rate"): "out_of_range"}


def test_flow_kind_is_recognised_by_fields() -> None:
    assert flow_kind(THREAT_MESSAGE) == "threat"
    assert flow_kind(ATTACK_FLOW) == "attack"
    assert flow_kind({"flow_duration": 1}) == "attack"
    assert flow_kind({"src_ip": "10.0.0.1"}) is None


def test_analyze_flows_dispatch_and_report_errors_per_kind() -> None:
    items = TypeAdapter(list[AnalyzeFlow]).validate_python([THREAT_MESSAGE, ATTACK_FLOW])
    assert [type(item.root) for item in items] == [ThreatFlow, AttackFlow]
    body = [{**THREAT_MESSAGE, "same_srv_rate": 2}, {"src_ip": "10.0.0.1"}, {**ATTACK_FLOW, " Destination Port": -1}]
    assert locs(list[AnalyzeFlow], body) == {
        (0, "threat", "same_srv_rate"): "out_of_range",
        (1,): "unknown_flow",
        (2, "attack", " Destination Port"): "out_of_range",
    }


@pytest.mark.parametrize("address", ["fe80::1%eth0", "fe80::1%x } ; flush ruleset", "10.0.0.1%1"])
def test_an_ipv6_zone_id_is_refused_naming_it(address: str) -> None:
    with pytest.raises(ValidationError, match="zone id"):
        AttackEvent(attack_type="SSH-Patator", src_ip=address)
