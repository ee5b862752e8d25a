"""The original system's CSV API, mounted on the Bento at /api/v1/upload: POST /api/v1/upload/csv.

The same pipeline as `analyze_csv`, answered in the original response shape: `message`, `batch_id`, `total_rows`
and one prediction per row with `traffic_data` (`id`, `features`, `source`, `batch_id`, `created_at`),
`threat_prediction`, `attack_prediction` and `self_healing_action` (both null for 10-feature rows), each with
the `id` of the row's prediction in the log, which GET /api/v1/predictions/{id} answers (null when the prediction
log is off). The action's `status` is in the original's words (`logged`: recorded, nothing run), this project's
own status in `execution_status`. A caller without a sensor token is answered, but nothing it triggers is
enforced, and its events count against its own budget (nids.serving.auth, nids.healing.budget).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Request, UploadFile
from pydantic import BaseModel, Field

from nids.core import pipeline
from nids.core.actions import ActionStatus, HealingAction, original_status
from nids.core.features import ATTACK_FEATURES, THREAT_FEATURES
from nids.core.schemas import AttackPrediction, ThreatFlow, ThreatPrediction
from nids.core.settings import get_settings
from nids.observability.records import PredictionBatch
from nids.serving.auth import RequestCaller
from nids.serving.errors import install_fastapi
from nids.serving.routes.files import save_upload

app = FastAPI(title="nids-bento CSV upload", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
install_fastapi(app)
LOG_ID = "the prediction's id in the log (GET /api/v1/predictions/{id}); null when the prediction log is off"


class TrafficData(BaseModel):
    id: int | None = Field(description=LOG_ID)
    features: dict[str, Any] = Field(description="the row's features under their canonical names, as validated")
    source: str = Field(description="'upload', as the original says (the log's source of these rows is 'csv')")
    batch_id: str
    created_at: str = Field(description="when the upload was scored (UTC, ISO 8601)")
    kind: str = Field(description="threat: 10 NSL-KDD features; attack: 42 CICFlowMeter features")
    flow_id: str | None = None
    src_ip: str | None = None
    dst_ip: str | None = None
    src_port: int | None = None
    timestamp: str | None = None


class CsvThreatPrediction(ThreatPrediction):
    id: int | None = Field(description=LOG_ID)


class CsvAttackPrediction(AttackPrediction):
    id: int | None = Field(description=LOG_ID)


class CsvHealingAction(HealingAction):
    id: int | None = Field(description=LOG_ID)
    status: str = Field(description="the original's words: logged (recorded, nothing run), pending, executed, failed")
    execution_status: ActionStatus = Field(description="this project's status of the action (dry_run, executed, ...)")


class CsvPrediction(BaseModel):
    traffic_data: TrafficData
    threat_prediction: CsvThreatPrediction
    attack_prediction: CsvAttackPrediction | None
    self_healing_action: CsvHealingAction | None


class CsvUploadResponse(BaseModel):
    message: str
    batch_id: str
    total_rows: int
    predictions: list[CsvPrediction]
    ignored_columns: list[str] = Field(description="columns that are neither features nor context")


@app.post("/csv", response_model=CsvUploadResponse)
def upload_csv(
    request: Request,
    caller: RequestCaller,
    file: Annotated[UploadFile, File(description="CICFlowMeter or NSL-KDD CSV")],
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
    created = time.gmtime(batch.created_at)
    # the original's batch id: time of the upload and a random suffix (20241201_143022_abc123)
    batch = dataclasses.replace(batch, batch_id=f"{time.strftime('%Y%m%d_%H%M%S', created)}_{uuid.uuid4().hex[:6]}")
    # written at once, so the answer carries the ids (statistics, /ws/realtime and drift see the upload too)
    logged = state.observability.record_now(batch)
    ids = [entry.traffic_data_id for entry in logged] if logged is not None else [None] * len(flows)
    created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", created)
    predictions = []
    for item, result, i in zip(flows, response.results, ids, strict=True):
        flow = item.root
        names = THREAT_FEATURES if isinstance(flow, ThreatFlow) else ATTACK_FEATURES
        action = result.self_healing_action
        predictions.append(
            CsvPrediction(
                traffic_data=TrafficData(
                    id=i,
                    features={name: flow[name] for name in names},
                    source="upload",
                    batch_id=batch.batch_id,
                    created_at=created_at,
                    kind=result.kind,
                    **flow.context(),
                ),
                threat_prediction=CsvThreatPrediction(**result.threat_prediction.model_dump(), id=i),
                attack_prediction=None
                if result.attack_prediction is None
                else CsvAttackPrediction(**result.attack_prediction.model_dump(), id=i),
                self_healing_action=None
                if action is None
                else CsvHealingAction(
                    **action.model_dump(exclude={"status"}),
                    id=i,
                    status=original_status(action.status),
                    execution_status=action.status,
                ),
            )
        )
    return CsvUploadResponse(
        message=f"Successfully processed {len(predictions)} rows",
        batch_id=batch.batch_id,
        total_rows=len(predictions),
        predictions=predictions,
        ignored_columns=ignored,
    )
