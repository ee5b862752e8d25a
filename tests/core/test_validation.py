"""The feature rules: what real data contains is accepted, what no real flow can have is refused."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from nids.core.errors import RequestTooLarge
from nids.core.features import ATTACK_FEATURES, ATTACK_IMPROVED_COLUMNS, THREAT_FEATURES
from nids.core.schemas import AttackFlow, ThreatFlow
from nids.core.validation import (
    ATTACK_RULES,
    THREAT_RULES,
    FeatureRule,
    check_batched_row_count,
    check_row_count,
)
from training.data import CIC_IMPROVED, CIC_ORIGINAL, NSL_KDD_TEST, NSL_KDD_TRAIN


def _error_type(rule: FeatureRule, value: float) -> str:
    with pytest.raises(PydanticCustomError) as caught:
        rule.check(value)
    return caught.value.type


def test_rule_checks_range_nan_and_inf() -> None:
    port = ATTACK_RULES[" Destination Port"]
    assert port.check(0) == 0 and port.check(65535) == 65535
    assert _error_type(port, -1) == "out_of_range"
    assert _error_type(port, 65536) == "out_of_range"
    assert _error_type(port, math.nan) == "nan"
    # flow features: CICFlowMeter writes Infinity for zero-duration rates; the model saw 0
    assert ATTACK_RULES["Flow Bytes/s"].check(math.inf) == 0.0
    assert ATTACK_RULES["Flow Bytes/s"].check(-math.inf) == 0.0
    # NSL-KDD features have no infinity
    assert _error_type(THREAT_RULES["src_bytes"], math.inf) == "finite_number"


def test_rule_message_names_the_range_and_reason() -> None:
    with pytest.raises(PydanticCustomError) as caught:
        THREAT_RULES["same_srv_rate"].check(1.5)
    assert "[0, 1]" in str(caught.value)
    assert "fraction" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("same_srv_rate", 0, 1),
        ("diff_srv_rate", 0, 1),
        ("dst_host_same_srv_rate", 0, 1),
        ("dst_host_same_src_port_rate", 0, 1),
        ("src_bytes", 0, None),
        ("dst_bytes", 0, None),
        ("count", 0, None),
        ("dst_host_srv_count", 0, None),
    ],
)
def test_threat_ranges(name: str, low: float, high: float | None) -> None:
    rule = THREAT_RULES[name]
    assert (rule.low, rule.high) == (low, high)


def test_attack_ranges_signed_only_where_cicflowmeter_emits_negatives_and_for_the_ratio() -> None:
    signed = {name for name, rule in ATTACK_RULES.items() if rule.low is None}
    assert signed == {
        " Down/Up Ratio",  # the original system's rule: ratios may be negative
        " Flow Duration",
        "Flow Bytes/s",
        " Flow Packets/s",
        " Flow IAT Mean",
        " Flow IAT Min",
        " Fwd Header Length",
        " Bwd Header Length",
        " min_seg_size_forward",
    }
    assert (ATTACK_RULES["Init_Win_bytes_forward"].low, ATTACK_RULES["Init_Win_bytes_forward"].high) == (-1, 65535)
    # packet, byte, count, flag, time and bulk features are never negative
    assert ATTACK_RULES[" Total Fwd Packets"].low == 0
    assert ATTACK_RULES[" Active Std"].low == 0
    assert set(ATTACK_RULES) == set(ATTACK_FEATURES)


def test_every_real_original_release_flow_is_accepted() -> None:
    frame = pd.read_csv(CIC_ORIGINAL, usecols=list(ATTACK_FEATURES))
    negative = int((frame < 0).to_numpy().sum())
    assert negative > 0, "the sample should exercise the negative values real CICFlowMeter output contains"
    flows = TypeAdapter(list[AttackFlow]).validate_python(frame.to_dict("records"))
    assert len(flows) == len(frame)


def test_every_real_corrected_release_flow_is_accepted() -> None:
    columns = {ATTACK_IMPROVED_COLUMNS[name]: name for name in ATTACK_FEATURES}
    frame = pd.read_csv(CIC_IMPROVED, usecols=list(columns)).rename(columns=columns)
    flows = TypeAdapter(list[AttackFlow]).validate_python(frame.to_dict("records"))
    assert len(flows) == len(frame)


@pytest.mark.parametrize("path", [NSL_KDD_TRAIN, NSL_KDD_TEST])
def test_every_real_nsl_kdd_row_is_accepted(path: object) -> None:
    frame = pd.read_csv(path, usecols=list(THREAT_FEATURES))
    flows = TypeAdapter(list[ThreatFlow]).validate_python(frame.to_dict("records"))
    assert len(flows) == len(frame)


def test_row_limits_refuse_with_413(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIDS_MAX_ROWS_PER_REQUEST", "3")
    monkeypatch.setenv("NIDS_MAX_ROWS_PER_BATCHED_REQUEST", "2")
    assert check_row_count([{}] * 3) == [{}] * 3
    with pytest.raises(RequestTooLarge, match=r"4 rows.*limit is 3.*NIDS_MAX_ROWS_PER_REQUEST") as caught:
        check_row_count([{}] * 4)
    assert caught.value.status_code == 413
    with pytest.raises(RequestTooLarge, match=r"3 rows.*limit is 2.*/analyze"):
        check_batched_row_count([{}] * 3)


def test_float32_range_and_negative_zero() -> None:
    """The models read float32: what would overflow to inf or vanish below the smallest normal is refused."""
    rule = ATTACK_RULES[" Flow Duration"]
    assert math.copysign(1.0, rule.check(-0.0)) == 1.0  # -0 is read as 0
    assert rule.check(3.0e38) == 3.0e38
    assert _error_type(rule, 1e39) == "float32_range"
    assert _error_type(rule, -1e39) == "float32_range"
    assert _error_type(rule, 1e-40) == "float32_range"
    with pytest.raises(ValidationError) as caught:
        TypeAdapter(ThreatFlow).validate_json(
            '{"service": "http", "flag": "SF", "src_bytes": 1e39, "dst_bytes": 0, "count": 1, "same_srv_rate": 1,'
            ' "diff_srv_rate": 0, "dst_host_srv_count": 1, "dst_host_same_srv_rate": 1,'
            ' "dst_host_same_src_port_rate": 0}'
        )
    (error,) = caught.value.errors()
    assert error["type"] == "float32_range" and "32-bit floats" in error["msg"]
