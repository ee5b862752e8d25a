"""The service in-process: every API on the session's real models, the registry and the metrics."""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import bentoml
import pandas as pd
import prometheus_client
import pytest
from hypothesis import HealthCheck, given, settings
from pydantic import TypeAdapter

from nids.core.actions import AttackEvent
from nids.core.columns import validate_flows
from nids.core.errors import InvalidInput, NIDSError, RequestTooLarge
from nids.core.features import ATTACK_CLASSES, ATTACK_FEATURES, THREAT_FEATURES
from nids.core.schemas import AnalyzeFlow, AttackFlow, ThreatFlow
from nids.models.artifacts import load_reference_cases
from tests.core.test_columns import requests
from training.data import CIC_ORIGINAL, NSL_KDD_TEST

pytestmark = pytest.mark.filterwarnings("ignore:.*__get_pydantic_core_schema__:DeprecationWarning")  # BentoML's

FIXTURES = Path(__file__).parents[1] / "fixtures"
THREAT_MESSAGE: dict[str, Any] = json.loads((FIXTURES / "original_threat_message.json").read_text())
ATTACK_FLOW: dict[str, Any] = json.loads((FIXTURES / "original_attack_flow.json").read_text())
CONTEXT = {"flow_id": "f-42", "src_ip": "192.0.2.10", "dst_ip": "198.51.100.2", "src_port": 40022, "timestamp": "t0"}


@pytest.fixture(scope="module")
def service(model_store: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """NIDSService instantiated in-process on the session store (audit log in a temp dir)."""
    from nids.serving.service import NIDSService

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NIDS_DATA_DIR", str(tmp_path_factory.mktemp("service-data")))
        instance = NIDSService()
    yield instance
    instance.close()


def run(call: Coroutine[Any, Any, Any]) -> Any:
    """The async APIs (those that touch the audit store or parse uploads), awaited in-process."""
    return asyncio.run(call)


def threat_flows(*bodies: dict[str, Any]) -> list[ThreatFlow]:
    return [ThreatFlow.model_validate(body) for body in bodies]


def attack_flows(*bodies: dict[str, Any]) -> list[Any]:
    return [AttackFlow.model_validate(body) for body in bodies]


def metric(name: str, **labels: str) -> float:
    return prometheus_client.REGISTRY.get_sample_value(name, labels) or 0.0


def test_ready_with_the_latest_models(service: Any, model_store: Any) -> None:
    assert service.__is_ready__()
    assert service.models.active().threat.tag == model_store.threat_tag
    assert service.models.active().attack.tag == model_store.attack_tag
    assert metric("nids_models_ready") == 1.0
    assert metric("nids_reference_checks_passed", role="attack", tag=model_store.attack_tag) == 1.0


def test_detect_threat_original_message(service: Any, model_store: Any) -> None:
    (prediction,) = service.detect_threat(threat_flows({**THREAT_MESSAGE, **CONTEXT}))
    threshold = service.models.active().threat.threshold
    assert 0.0 <= prediction.prediction_score <= 1.0
    assert prediction.threshold == 0.5 and prediction.decision_threshold == threshold
    assert prediction.is_attack == (prediction.prediction_score >= 0.5) == (prediction.attack_probability >= threshold)
    assert prediction.model_version == model_store.threat_tag
    assert {name: getattr(prediction, name) for name in CONTEXT} == CONTEXT


def test_detect_threat_separates_real_rows(service: Any) -> None:
    frame = pd.read_csv(NSL_KDD_TEST, nrows=400)
    predictions = service.detect_threat(threat_flows(*frame[list(THREAT_FEATURES)].to_dict("records")))
    predicted = [p.is_attack for p in predictions]
    actual = (frame["label"] != "normal").tolist()
    accuracy = sum(p == a for p, a in zip(predicted, actual, strict=True)) / len(actual)
    assert accuracy > 0.7


def test_reference_cases_through_the_api(service: Any, model_store: Any) -> None:
    threat_cases = load_reference_cases(bentoml.models.get(model_store.threat_tag))
    predictions = service.detect_threat(threat_flows(*[case.features for case in threat_cases]))
    for case, prediction in zip(threat_cases, predictions, strict=True):
        assert prediction.attack_probability == pytest.approx(case.expected_score, abs=case.tolerance)
        assert int(prediction.is_attack) == case.expected_class
    attack_cases = load_reference_cases(bentoml.models.get(model_store.attack_tag))
    predictions = service.classify_attack(attack_flows(*[case.features for case in attack_cases]))
    for case, prediction in zip(attack_cases, predictions, strict=True):
        assert prediction.attack_type_encoded == case.expected_class
        assert prediction.confidence == pytest.approx(case.expected_score, abs=case.tolerance)


def test_classify_attack_original_flow(service: Any, model_store: Any) -> None:
    (prediction,) = service.classify_attack(attack_flows({**ATTACK_FLOW, **CONTEXT}))
    assert prediction.attack_type_name == ATTACK_CLASSES[prediction.attack_type_encoded]
    assert prediction.attack_type_name == "SSH-Patator"  # the fixture is a real SSH-Patator flow
    assert [c.probability for c in prediction.top_classes] == sorted(
        (c.probability for c in prediction.top_classes), reverse=True
    )
    assert len(prediction.top_classes) == 3
    assert prediction.top_classes[0].attack_type_name == prediction.attack_type_name
    assert prediction.confidence == prediction.top_classes[0].probability
    assert prediction.model_version == model_store.attack_tag
    assert prediction.src_ip == CONTEXT["src_ip"]


@pytest.mark.parametrize(
    ("attack_type", "action_type"),
    [("SSH-Patator", "block_ip"), (2, "restart_service"), ("PortScan", "alert_admin"), ("BENIGN", "log_only")],
)
def test_self_heal_maps_attack_types_to_actions(service: Any, attack_type: Any, action_type: str) -> None:
    event = AttackEvent(attack_type=attack_type, confidence=0.99, src_ip="203.0.113.9", target_service="nginx")
    (action,) = run(service.self_heal([event]))
    assert action.action_type == action_type
    assert action.status == "dry_run"
    assert action.action_id


def test_analyze_mixed_flows(service: Any) -> None:
    before = metric("nids_healing_actions_total", action_type="block_ip", status="dry_run")
    items = TypeAdapter(list[AnalyzeFlow]).validate_python([THREAT_MESSAGE, {**ATTACK_FLOW, **CONTEXT}])
    response = run(service.analyze(items))
    threat, attack = response.results
    assert (threat.index, threat.kind, attack.index, attack.kind) == (0, "threat", 1, "attack")
    assert threat.attack_prediction is None and threat.self_healing_action is None
    assert attack.attack_prediction.attack_type_name == "SSH-Patator"
    assert attack.self_healing_action.action_type == "block_ip"
    assert attack.self_healing_action.action_params["address"] == CONTEXT["src_ip"]
    # the verdict of a 42-feature flow is the classifier's: attack unless BENIGN is predicted, on the 0.5 scale
    assert attack.threat_prediction.threshold == 0.5 and attack.threat_prediction.decision_threshold is None
    assert attack.threat_prediction.is_attack and attack.threat_prediction.prediction_score >= 0.5
    assert attack.threat_prediction.attack_probability >= attack.attack_prediction.confidence
    assert attack.flow_id == CONTEXT["flow_id"]
    summary = response.summary
    assert summary.total == 2
    assert sum(summary.by_verdict.values()) == 2
    assert summary.by_attack_type == {"SSH-Patator": 1}
    assert summary.by_action == {"block_ip": 1}
    assert metric("nids_healing_actions_total", action_type="block_ip", status="dry_run") == before + 1


def write_cic_csv(path: Path, rows: int, *, blank: tuple[int, str] | None = None) -> Path:
    """Real original-release rows with all their columns (label included), as users' CSV exports have them."""
    frame = pd.read_csv(CIC_ORIGINAL, nrows=rows, dtype=str, keep_default_na=False)
    if blank is not None:
        frame.loc[blank[0], blank[1]] = ""
    frame.to_csv(path, index=False, quoting=csv.QUOTE_MINIMAL)
    return path


def test_analyze_csv_upload(service: Any, tmp_path: Path) -> None:
    response = run(service.analyze_csv(write_cic_csv(tmp_path / "flows.csv", 25)))
    assert response.summary.total == 25
    assert all(result.kind == "attack" for result in response.results)
    assert " Label" in response.ignored_columns
    assert not set(ATTACK_FEATURES) & set(response.ignored_columns)


def test_analyze_csv_names_row_and_column_of_a_bad_cell(service: Any, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        run(service.analyze_csv(write_cic_csv(tmp_path / "flows.csv", 10, blank=(7, " Flow IAT Min"))))
    assert [tuple(e["loc"]) for e in caught.value.detail] == [("file", 7, "attack", " Flow IAT Min")]


def test_analyze_csv_refuses_a_file_that_is_not_utf8_text(service: Any, tmp_path: Path) -> None:
    path = tmp_path / "flows.csv"
    path.write_bytes(b"\xff\xfe\x00 not a csv")
    with pytest.raises(InvalidInput, match="not a UTF-8 CSV") as caught:
        run(service.analyze_csv(path))
    assert caught.value.status_code == 400


def test_analyze_csv_row_limit(service: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIDS_MAX_ROWS_PER_REQUEST", "5")
    with pytest.raises(RequestTooLarge, match="more than 5 rows"):
        run(service.analyze_csv(write_cic_csv(tmp_path / "flows.csv", 6)))


def test_model_info(service: Any, model_store: Any) -> None:
    info = service.model_info()
    assert (info.threat.tag, info.attack.tag) == (model_store.threat_tag, model_store.attack_tag)
    assert info.threat.feature_names == list(THREAT_FEATURES)
    assert info.attack.feature_names == list(ATTACK_FEATURES)
    assert info.attack.class_names == list(ATTACK_CLASSES)
    assert info.threat.threshold is not None and info.attack.threshold is None
    assert info.threat.inference_form == "onnx"
    assert set(info.threat.categories) == {"service", "flag"} and info.attack.categories == {}
    assert "http" in info.threat.categories["service"] and "SF" in info.threat.categories["flag"]
    assert info.attack.reference_cases and all(case.passed for case in info.attack.reference_cases)
    assert info.threat.metrics


def test_predictions_are_counted(service: Any) -> None:
    labels = {"model": "attack_classifier", "verdict": "attack", "attack_type": "SSH-Patator"}
    before = metric("nids_predictions_total", **labels)
    service.classify_attack(attack_flows(ATTACK_FLOW, ATTACK_FLOW))
    assert metric("nids_predictions_total", **labels) == before + 2


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(threat=requests("threat"), attack=requests("attack"))
def test_any_request_is_answered_or_refused_with_a_4xx(service: Any, threat: Any, attack: Any) -> None:
    """Generated bodies (broken, retyped, renamed fields) through validation and the batched APIs: predictions, or
    an NIDSError with a 4xx; never another exception."""
    for kind, rows, api in (("threat", threat, service.detect_threat), ("attack", attack, service.classify_attack)):
        try:
            predictions = api(validate_flows(kind, rows, "flows"))
        except NIDSError as error:
            assert 400 <= error.status_code < 500
            continue
        assert len(predictions) == len(rows)
        assert len(json.loads(predictions.json())) == len(rows)
