"""Batch triage and the test producer's reading of files, in-process (the broker tests cover the rest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from nids.core.features import ATTACK_FEATURES, THREAT_FEATURES
from nids.stream.messages import triage
from nids.stream.produce import read_records
from tests.stream.conftest import FIXTURES, ROOT, attack_records
from training.data import CIC_IMPROVED


def records(*values: bytes) -> list[ConsumerRecord]:
    return [ConsumerRecord("network-traffic", 0, i, 0, 0, None, v, None, 0, len(v), []) for i, v in enumerate(values)]


def test_infinity_and_nan_tokens_are_read_as_the_rest_api_reads_them() -> None:
    flow = attack_records(1)[0]
    text = json.dumps(flow)  # the stdlib writes the non-strict tokens an exporter in Python sends
    inf = json.dumps({**flow, "Flow Bytes/s": float("inf")})
    nan = json.dumps({**flow, "Flow Bytes/s": float("nan")})
    assert "Infinity" in inf and "NaN" in nan
    batch = triage(records(text.encode(), inf.encode(), nan.encode()))
    assert [r.offset for r in batch.valid] == [0, 1]  # Infinity reads as 0, as in training
    assert batch.flows[1].root["Flow Bytes/s"] == 0.0
    [(record, letter)] = batch.dead
    assert record.offset == 2 and [(d.type, d.loc) for d in letter.detail] == [("nan", ["attack", "Flow Bytes/s"])]


def test_one_invalid_record_does_not_hold_back_the_valid_ones_around_it() -> None:
    flow: dict[str, Any] = json.loads((FIXTURES / "original_threat_message.json").read_text())
    values = [json.dumps({**flow, "count": -i}).encode() for i in range(4)]  # -0 is valid, the rest are not
    batch = triage(records(*values))
    assert [r.offset for r in batch.valid] == [0]
    assert sorted(record.offset for record, _ in batch.dead) == [1, 2, 3]
    assert all(letter.detail[0].type == "out_of_range" for _, letter in batch.dead)


def test_producer_reads_json_lists_request_bodies_and_single_flows(tmp_path: Path) -> None:
    body = json.loads((FIXTURES / "analyze.json").read_text())
    assert read_records(FIXTURES / "analyze.json") == body["flows"]
    assert len(read_records(ROOT / "loadtest/payloads/attack_flows.json", 10)) == 10
    single = tmp_path / "one.json"
    single.write_text(json.dumps(body["flows"][0]))
    assert read_records(single) == body["flows"][:1]
    with pytest.raises(ValueError, match=r"\.csv, \.csv\.gz or \.json"):
        read_records(tmp_path / "flows.parquet")


def test_producer_sends_corrected_release_rows_under_the_original_names_with_their_context() -> None:
    rows = read_records(CIC_IMPROVED, 5)
    assert len(rows) == 5
    for row in rows:
        assert set(ATTACK_FEATURES) <= set(row) and not set(THREAT_FEATURES) & set(row)
        assert {"flow_id", "src_ip", "dst_ip", "src_port", "timestamp"} <= set(row)
        assert "Label" not in row and isinstance(row["src_port"], int)
