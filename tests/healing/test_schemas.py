from __future__ import annotations

import pytest
from pydantic import ValidationError

from nids.healing import AttackEvent


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (0, "BENIGN"),
        (3, "PortScan"),
        (13, "Infiltration"),
        ("Web Attack \x96 Sql Injection", "Web Attack – Sql Injection"),
    ],
)
def test_attack_type_by_code_or_any_dash_variant(given: str | int, expected: str):
    assert AttackEvent(attack_type=given).attack_type == expected


@pytest.mark.parametrize(
    ("payload", "field", "rule"),
    [
        ({"attack_type": 14}, "attack_type", "within [0, 13]"),
        ({"attack_type": -1}, "attack_type", "within [0, 13]"),
        ({"attack_type": "14"}, "attack_type", "within [0, 13]"),
        ({"attack_type": True}, "attack_type", "class name or an integer code"),
        ({"attack_type": 2.5}, "attack_type", "class name or an integer code"),
        ({"attack_type": "Heartbleed"}, "attack_type", "not one of the 14 classes"),
        ({"attack_type": "Teardrop"}, "attack_type", "unknown CIC-IDS2017 label"),
        ({"attack_type": "DDoS", "src_ip": "999.1.1.1"}, "src_ip", "not a valid IPv4 or IPv6 address"),
        ({"attack_type": "DDoS", "dst_ip": "host.example"}, "dst_ip", "not a valid IPv4 or IPv6 address"),
        ({"attack_type": "DDoS", "confidence": 1.2}, "confidence", "less than or equal to 1"),
        ({"attack_type": "DDoS", "src_port": 22}, "src_port", "Extra inputs are not permitted"),
    ],
)
def test_invalid_event_names_field_and_rule(payload: dict, field: str, rule: str):
    with pytest.raises(ValidationError) as raised:
        AttackEvent.model_validate(payload)
    errors = raised.value.errors()
    assert any(field in map(str, error["loc"]) and rule in error["msg"] for error in errors), errors


def test_addresses_are_canonicalised():
    event = AttackEvent(attack_type="SSH-Patator", src_ip=" 2001:DB8::0001 ", dst_ip="10.0.0.1")
    assert (event.src_ip, event.dst_ip) == ("2001:db8::1", "10.0.0.1")
