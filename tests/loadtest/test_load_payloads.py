"""The committed payload pools: real held-out flows the service's request schemas accept, small enough to commit."""

from __future__ import annotations

import json

import pytest
from pydantic import TypeAdapter

from loadtest.payloads import PAYLOAD_DIR, POOL_FILES, body_count, load_pool, request_bodies
from loadtest.scenarios import SCENARIOS
from nids.core.features import ATTACK_FEATURE_BY_SNAKE, ATTACK_FEATURES, THREAT_FEATURES
from nids.core.schemas import AnalyzeFlows, AttackFlow, ThreatFlow, flow_kind


def test_payloads_stay_small():
    assert sum(path.stat().st_size for path in PAYLOAD_DIR.glob("*.json")) < 2 * 1024 * 1024


@pytest.mark.parametrize(("kind", "schema"), [("threat", ThreatFlow), ("attack", AttackFlow)])
def test_every_pooled_flow_is_valid_against_the_feature_contract(kind, schema):
    flows = load_pool(kind)
    assert len(flows) >= 500
    for flow in flows:
        schema.model_validate(flow)
    assert len({json.dumps(flow, sort_keys=True) for flow in flows}) > 0.9 * len(flows)  # varied, not one body


def test_threat_pool_has_exactly_the_ten_features_and_both_verdicts():
    document = json.loads(POOL_FILES["threat"].read_text())
    assert all(tuple(flow) == THREAT_FEATURES for flow in document["flows"])
    assert set(document["label_counts"]) == {"normal", "attack"}
    assert "KDDTest+" in document["source"]


def test_attack_pool_uses_both_naming_conventions_and_covers_the_classes():
    document = json.loads(POOL_FILES["attack"].read_text())
    spaced = [flow for flow in document["flows"] if set(flow) == set(ATTACK_FEATURES)]
    snake = [flow for flow in document["flows"] if set(flow) == set(ATTACK_FEATURE_BY_SNAKE)]
    assert len(spaced) + len(snake) == len(document["flows"])
    assert spaced and snake
    classes = {label.rsplit(" (", 1)[0] for label in document["label_counts"]}
    assert len(classes) >= 12
    assert "validation split" in document["source"]


def test_single_flow_bodies_send_each_pooled_flow_once():
    bodies = request_bodies(SCENARIOS["detect_threat"])
    assert len(bodies) == len(load_pool("threat"))
    assert all(body.flows == 1 for body in bodies)
    sent = sorted(json.dumps(json.loads(body.data)["flows"][0], sort_keys=True) for body in bodies)
    assert sent == sorted(json.dumps(flow, sort_keys=True) for flow in load_pool("threat"))


def test_bodies_are_deterministic_for_a_seed():
    scenario = SCENARIOS["analyze"]
    assert request_bodies(scenario, seed=1) == request_bodies(scenario, seed=1)
    assert request_bodies(scenario, seed=1) != request_bodies(scenario, seed=2)


def test_analyze_bodies_mix_both_schemas_and_validate():
    scenario = SCENARIOS["analyze"]
    bodies = request_bodies(scenario)
    assert len(bodies) == body_count(scenario)
    kinds = set()
    adapter = TypeAdapter(AnalyzeFlows)
    for body in bodies[:50]:
        flows = json.loads(body.data)["flows"]
        assert 1 <= len(flows) == body.flows <= 4
        kinds.update(flow_kind(flow) for flow in flows)
        adapter.validate_python(flows)
    assert kinds == {"threat", "attack"}


@pytest.mark.parametrize("name", ["bulk_detect_threat_1000", "bulk_classify_attack_100", "bulk_analyze_1000"])
def test_bulk_bodies_carry_the_stated_number_of_flows(name):
    scenario = SCENARIOS[name]
    bodies = request_bodies(scenario)
    assert len(bodies) == body_count(scenario)
    assert all(body.flows == scenario.flows == len(json.loads(body.data)["flows"]) for body in bodies)


def test_mixed_apis_interleaves_its_parts_with_their_paths_and_markers() -> None:
    bodies = request_bodies(SCENARIOS["mixed_apis"])
    parts = [SCENARIOS[name] for name in SCENARIOS["mixed_apis"].parts]
    assert [body.path for body in bodies[:3]] == [part.path for part in parts]
    assert [body.marker for body in bodies[:3]] == [part.marker for part in parts]
    assert len(bodies) == 3 * min(len(request_bodies(part)) for part in parts)
