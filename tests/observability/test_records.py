"""A batch of per-flow objects (analyze, the stream) reaches the log's writer process as an EncodedBatch whose rows
are exactly the batch's own (the writer process decodes it; pickling the pydantic objects cost ~10x more)."""

from __future__ import annotations

import pickle
from pathlib import Path

from pydantic import TypeAdapter

from loadtest.payloads import load_pool
from nids.core import pipeline
from nids.core.columns import FlowBatch
from nids.core.model import ActiveModels
from nids.core.schemas import AnalyzeFlow
from nids.core.settings import get_settings
from nids.healing.engine import HealingEngine
from nids.observability.records import EncodedBatch, PredictionBatch


def test_an_analysis_batch_travels_encoded_with_the_same_rows(tmp_path: Path, models: ActiveModels) -> None:
    rows = load_pool("threat")[:60] + load_pool("attack")[:200:5]  # both kinds, both attack namings
    items = TypeAdapter(list[AnalyzeFlow]).validate_python(
        [
            {**row, "src_ip": f"198.51.100.{i % 7}", "flow_id": f"f{i}", "src_port": 1000 + i}
            for i, row in enumerate(rows)
        ]
    )
    engine = HealingEngine.from_settings(get_settings().model_copy(update={"data_dir": tmp_path}))
    try:
        response = pipeline.analyze(models, engine.handle, items)
    finally:
        engine.close()
    assert any(result.self_healing_action is not None for result in response.results)
    for warm_up in (False, True):
        logged = PredictionBatch.of_analysis(models, items, response, "stream")
        logged = PredictionBatch(**{**logged.__dict__, "warm_up": warm_up})
        travelled = pickle.loads(pickle.dumps(logged, protocol=pickle.HIGHEST_PROTOCOL))
        assert isinstance(travelled, EncodedBatch)
        assert len(travelled) == len(logged) and travelled.warm_up is warm_up
        assert travelled.rows() == logged.rows()


def test_a_batch_of_columns_travels_as_itself(models: ActiveModels, flows: list) -> None:
    columns = FlowBatch.of("threat", flows)
    logged = PredictionBatch.of_threats(models, columns, pipeline.detect_threats(models, columns), "api")
    travelled = pickle.loads(pickle.dumps(logged, protocol=pickle.HIGHEST_PROTOCOL))
    assert isinstance(travelled, PredictionBatch)
    assert travelled.rows() == logged.rows()
