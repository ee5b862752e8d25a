"""The stream worker on a real broker with real records: results, dead letters, metrics, clean shutdown."""

from __future__ import annotations

import base64
import json
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from nids.core import pipeline
from nids.core.features import THREAT_FEATURES
from nids.core.schemas import ThreatFlow
from nids.models.artifacts import load_model
from nids.models.lifecycle import Lifecycle
from nids.models.registry import ModelRegistry
from nids.models.state import open_lifecycle_store
from tests.stream.conftest import FIXTURES, ROOT, Stream, attack_records, threat_records

pytestmark = pytest.mark.spread  # a broker per test: none shared by the module

RULE_CASES: list[dict[str, Any]] = json.loads((FIXTURES / "validation_cases.json").read_text())
SNAKE_ATTACK_FLOWS: list[dict[str, Any]] = json.loads((ROOT / "loadtest/payloads/attack_flows.json").read_text())[
    "flows"
]


def invalid_records(threat: dict[str, Any], attack: dict[str, Any]) -> list[tuple[bytes, str, str | None]]:
    """(value, error type, field) of records that must be dead-lettered: real rows with one rule broken, and
    values that are no flow at all (explicit invalid-input fixtures)."""
    cases = []
    for case in RULE_CASES:
        base = threat if case["api"] == "detect_threat" else attack
        cases.append((json.dumps({**base, **case["change"]}).encode(), case["type"], case["field"]))
    cases.append((json.dumps({k: v for k, v in threat.items() if k != "count"}).encode(), "missing", "count"))
    cases.append((json.dumps({k: v for k, v in attack.items() if k != " Idle Std"}).encode(), "missing", " Idle Std"))
    cases.append((b'{"service": "http", "flag": "SF", "src_bytes": ', "json_invalid", None))
    cases.append((b"[1, 2, 3]", "dict_type", None))
    cases.append((b"\xff\xfe\x00garbage", "json_invalid", None))
    cases.append((b"{}", "unknown_flow", None))
    return cases


def test_worker_scores_valid_records_and_dead_letters_invalid_ones(stream: Stream, model_store) -> None:
    worker = stream.worker()
    threat = threat_records(300)
    attack = attack_records(200)
    snake = SNAKE_ATTACK_FLOWS[:100]
    with_context = [{**row, "flow_id": f"kdd-{i}", "src_ip": "192.0.2.10"} for i, row in enumerate(threat[:20])]
    invalid = invalid_records(threat[0], attack[0])

    threat_sources = stream.produce_records(threat)
    attack_sources = stream.produce_records(attack + snake)
    context_sources = stream.produce_records(with_context)
    invalid_sources = stream.produce([value for value, _, _ in invalid])
    valid_sources = threat_sources + attack_sources + context_sources
    answers = stream.answers(set(valid_sources + invalid_sources))

    # one answer per record: an event for each valid one, a dead letter for each invalid one
    assert sorted(answers.result_sources()) == sorted(valid_sources)
    assert sorted((d["source"]["partition"], d["source"]["offset"]) for d in answers.dead) == sorted(invalid_sources)
    by_source = {(r["source"]["partition"], r["source"]["offset"]): r for r in answers.results}
    assert all(r["source"]["topic"] == "network-traffic" for r in answers.results)

    # threat records: the same scores as the pipeline in-process, no attack type, no action
    registry = ModelRegistry()
    models = registry.load(model_store.threat_tag, model_store.attack_tag, load_model)
    expected = pipeline.detect_threats(models, [ThreatFlow.model_validate(row) for row in threat])
    for source, prediction in zip(threat_sources, expected, strict=True):
        event = by_source[source]
        assert event["kind"] == "threat" and event["attack_prediction"] is None
        assert event["self_healing_action"] is None
        assert event["threat_prediction"]["prediction_score"] == pytest.approx(prediction.prediction_score)
        assert event["threat_prediction"]["model_version"] == model_store.threat_tag
        assert event["traffic_data_id"] == f"network-traffic:{source[0]}:{source[1]}"
    # attack records under spaced and snake_case names: attack type and a dry-run self-healing decision
    for source in attack_sources:
        event = by_source[source]
        assert event["kind"] == "attack"
        assert event["attack_prediction"]["model_version"] == model_store.attack_tag
        assert event["self_healing_action"]["mode"] == "dry_run"
    # context fields are echoed; the flow id is the event's traffic_data_id
    for i, source in enumerate(context_sources):
        event = by_source[source]
        assert event["traffic_data_id"] == f"kdd-{i}"
        assert event["threat_prediction"]["src_ip"] == "192.0.2.10"

    # dead letters: the record as received, and the error naming the field and the rule
    dead = {(d["source"]["partition"], d["source"]["offset"]): d for d in answers.dead}
    for source, (value, rule, field) in zip(invalid_sources, invalid, strict=True):
        letter = dead[source]
        try:
            assert letter["record"] == value.decode("utf-8") and letter["record_base64"] is None
        except UnicodeDecodeError:
            assert letter["record"] is None and base64.b64decode(letter["record_base64"]) == value
        assert rule in [d["type"] for d in letter["detail"]], letter
        if field is not None:
            assert any(field in d["loc"] for d in letter["detail"] if d["type"] == rule), letter
            assert field.strip() in letter["error"]

    total = len(valid_sources) + len(invalid_sources)
    partitions = {partition for partition, _ in valid_sources + invalid_sources}
    lags = [f'nids_stream_consumer_lag{{partition="{p}",topic="network-traffic"}}' for p in partitions]
    out = 'nids_stream_records_out_total{topic="network-predictions"}'
    samples = worker.wait_for(lambda m: m.get(out) == len(valid_sources) and all(m.get(lag) == 0 for lag in lags))
    assert samples['nids_stream_records_in_total{topic="network-traffic"}'] == total
    assert samples['nids_stream_records_dead_lettered_total{topic="network-traffic.dlq"}'] == len(invalid_sources)
    assert samples["nids_stream_batch_seconds_count"] >= 1
    assert samples["nids_stream_paused"] == 0

    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert stream.committed() == {p: offset + 1 for p, offset in _last_offsets(valid_sources + invalid_sources)}
    # every scored record is in the prediction log (issue 10), as coming from the stream; invalid ones are not
    with sqlite3.connect(Path(stream.env["NIDS_DATA_DIR"]) / "predictions.sqlite3") as log:
        logged = dict(log.execute("SELECT kind, count(*) FROM nids_predictions WHERE source = 'stream' GROUP BY kind"))
    assert logged == {"threat": len(threat_sources) + len(context_sources), "attack": len(attack_sources)}


def _last_offsets(sources: list[tuple[int, int]]) -> list[tuple[int, int]]:
    last: dict[int, int] = {}
    for partition, offset in sources:
        last[partition] = max(last.get(partition, -1), offset)
    return sorted(last.items())


def test_producer_cli_publishes_rows_of_the_committed_datasets(stream: Stream) -> None:
    produced = subprocess.run(
        [sys.executable, "-m", "nids.stream", "produce", "data/nsl-kdd/KDDTest+.csv.gz", "--limit", "250"],
        cwd=ROOT,
        env=stream.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "published 250 records to network-traffic" in produced.stdout
    published = [json.loads(value) for value in stream.read_topic("network-traffic", 250)]
    assert sorted(map(_canonical, published)) == sorted(map(_canonical, threat_records(250)))
    assert all(set(record) == set(THREAT_FEATURES) for record in published)  # no label, no other column


def _canonical(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True)


def test_worker_follows_a_model_activation_between_batches(stream: Stream, model_store, clone_model, tmp_path) -> None:
    """An activation recorded in the shared lifecycle state (as the model API does it) reaches the running worker:
    records scored after it carry the new version."""
    state = f"sqlite:///{tmp_path / 'lifecycle.sqlite3'}"
    stream.worker(NIDS_MODEL_STATE_URL=state, NIDS_MODEL_SYNC_SECONDS="0.2")
    before = stream.answers(set(stream.produce_records(threat_records(100))))
    assert {e["threat_prediction"]["model_version"] for e in before.results} == {model_store.threat_tag}

    new_tag = clone_model(model_store.threat_tag, "threat_detector")  # a new version of the same model
    lifecycle = Lifecycle(open_lifecycle_store(state), ModelRegistry(), load_model)
    lifecycle.activate(new_tag, "test", force=True, reason="stream test")
    sent = []
    for _ in range(100):  # bounded: the worker polls the state every 0.2 s
        sent += stream.produce_records(threat_records(20))
        answers = stream.answers(set(sent))
        if any(e["threat_prediction"]["model_version"] == new_tag for e in answers.results):
            break
    versions = {e["threat_prediction"]["model_version"] for e in answers.results}
    assert new_tag in versions and versions <= {model_store.threat_tag, new_tag}
    # once switched, it stays switched: a new record is scored by the new version
    [source] = stream.produce_records(threat_records(1))
    [event] = [
        e for e in stream.answers({source}).results if (e["source"]["partition"], e["source"]["offset"]) == source
    ]
    assert event["threat_prediction"]["model_version"] == new_tag


def test_worker_waits_unready_while_the_lifecycle_state_is_unreachable_then_scores(stream: Stream) -> None:
    """A lifecycle database that does not exist yet: the worker stays up, consumes nothing, answers /readyz 503
    naming the database and the setting (and logs it once), and scores once the database is created."""
    from tests.healing.conftest import PG_URL, postgres_reachable

    if reason := postgres_reachable():
        pytest.skip(reason)
    import psycopg

    name = f"nids_stream_{uuid.uuid4().hex[:10]}"
    url = PG_URL.rsplit("/", 1)[0] + f"/{name}"
    worker = stream.worker(NIDS_MODEL_STATE_URL=url)
    try:
        body = wait_for_readiness(worker, 503, f"model lifecycle state cannot be opened at {url}")
        assert f"{url} (set by NIDS_MODEL_STATE_URL)" in body["error"]
        assert "the database does not exist on the server" in body["error"]
        sources = stream.produce_records(threat_records(20))
        assert worker.process.poll() is None and stream.committed() == {}  # nothing consumed without models
        assert worker.tail().count("not scoring until this is fixed") == 1  # said once, not once a retry
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        assert wait_for_readiness(worker, 200) == {"status": "ready"}
        answers = stream.answers(set(sources))
        assert set(answers.result_sources()) == set(sources)
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0
    finally:
        worker.close()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_worker_stopped_while_waiting_for_its_models_exits_cleanly(stream: Stream, tmp_path: Path) -> None:
    data = tmp_path / "var"
    data.mkdir()
    (data / "model-lifecycle.sqlite3").mkdir()  # a directory where the state's file should be: it cannot open
    worker = stream.worker(NIDS_DATA_DIR=str(data))
    wait_for_readiness(
        worker, 503, f"model lifecycle state cannot be opened at sqlite:///{data}/model-lifecycle.sqlite3"
    )
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0


def wait_for_readiness(worker: Any, status: int, text: str = "", seconds: float = 60) -> dict[str, Any]:
    """Poll the worker's /readyz until it answers `status` with `text` in its body (the worker must stay up)."""
    deadline = time.monotonic() + seconds
    answer: tuple[int, dict[str, Any]] | None = None
    while answer is None or answer[0] != status or text not in json.dumps(answer[1]):
        assert worker.process.poll() is None, f"worker exited with {worker.process.returncode}: {worker.tail()}"
        assert time.monotonic() < deadline, f"/readyz not {status} {text!r} within {seconds} s: {answer}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/readyz", timeout=5) as response:
                answer = (response.status, json.loads(response.read()))
        except urllib.error.HTTPError as error:
            answer = (error.code, json.loads(error.read()))
        except OSError:
            answer = None  # the port is not up yet
        time.sleep(0.2)
    return answer[1]
