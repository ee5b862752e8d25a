"""The original system's CSV API, mounted on the Bento at /api/v1/upload: POST /api/v1/upload/csv.

The same pipeline as `analyze_csv`, answered in the original response shape: `message`, `batch_id`, `total_rows`
and one prediction per row with `traffic_data` (the row's fields as validated), `threat_prediction`,
`attack_prediction` and `self_healing_action` (null for 10-feature rows). A caller without a sensor token is
answered, but nothing it triggers is enforced (nids.serving.auth).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Request, UploadFile
from pydantic import BaseModel, Field

from nids.core import pipeline
from nids.core.actions import HealingAction
from nids.core.schemas import AttackPrediction, ThreatPrediction
from nids.core.settings import get_settings
from nids.observability.records import PredictionBatch
from nids.serving.auth import SensorCaller
from nids.serving.errors import install_fastapi
from nids.serving.routes.files import save_upload

app = FastAPI(title="nids-bento CSV upload", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
install_fastapi(app)


class CsvPrediction(BaseModel):
    traffic_data: dict[str, Any] = Field(description="the row's features and context, as validated")
    threat_prediction: ThreatPrediction
    attack_prediction: AttackPrediction | None
    self_healing_action: HealingAction | None


class CsvUploadResponse(BaseModel):
    message: str
    batch_id: str
    total_rows: int
    predictions: list[CsvPrediction]
    ignored_columns: list[str] = Field(description="columns that are neither features nor context")


@app.post("/csv", response_model=CsvUploadResponse)
def upload_csv(
    request: Request, caller: SensorCaller, file: Annotated[UploadFile, File(description="CICFlowMeter or NSL-KDD CSV")]
) -> CsvUploadResponse:
    """Analyze every row of a CSV: threat verdict, attack type and self-healing action."""
    settings, state = get_settings(), request.app.state
    with tempfile.TemporaryDirectory(prefix="nids-csv-") as tmp:
        path = save_upload(file, Path(tmp) / "upload.csv", settings.max_csv_bytes, "NIDS_MAX_CSV_BYTES")
        flows, ignored = pipeline.read_csv(
            path, max_rows=settings.max_rows_per_request, max_bytes=settings.max_csv_bytes
        )
    models = state.registry.active()
    response = pipeline.analyze(models, state.healer(caller), flows, state.metrics)
    batch = PredictionBatch.of_analysis(models, flows, response, "csv")
    state.observability.record(batch)  # statistics, /ws/realtime and drift see the upload too
    predictions = [
        CsvPrediction(
            traffic_data=flow.root.model_dump(mode="json", exclude_none=True),
            threat_prediction=result.threat_prediction,
            attack_prediction=result.attack_prediction,
            self_healing_action=result.self_healing_action,
        )
        for flow, result in zip(flows, response.results, strict=True)
    ]
    return CsvUploadResponse(
        message=f"Processed {len(predictions)} rows from {file.filename or 'the upload'}",
        batch_id=batch.batch_id,
        total_rows=len(predictions),
        predictions=predictions,
        ignored_columns=ignored,
    )
