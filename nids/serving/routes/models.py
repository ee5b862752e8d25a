"""The original system's model lifecycle REST paths, mounted on the Bento at /api/v1/models.

A model id is the original system's integer id (`1`, a stable alias of the tag kept in the lifecycle state) or the
BentoML store tag `name:version` (e.g. `threat_detector:k3x2...`; the ':' may be sent raw, RFC 3986 allows it in
a path segment, or percent-encoded as %3A). Reads need no token; every write needs a token
of scope admin (nids.serving.auth) and is recorded in the lifecycle audit trail under the token's label. The
routes are sync functions: FastAPI runs them in its threadpool, so store reads and uploads never hold up inference.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from nids.core.settings import get_settings
from nids.models.lifecycle import Lifecycle, ModelEntry, ReplicaStatus, parse_model_type
from nids.models.packages import import_package, write_package
from nids.models.state import LifecycleEvent
from nids.serving.auth import AdminCaller
from nids.serving.errors import install_fastapi
from nids.serving.routes.files import save_upload

app = FastAPI(title="nids-bento model lifecycle", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
install_fastapi(app)


def lifecycle(request: Request) -> Lifecycle:
    """The worker's lifecycle service (the Bento sets it in app.state at startup)."""
    return request.app.state.lifecycle


Service = Annotated[Lifecycle, Depends(lifecycle)]
ModelType = Annotated[str | None, Query(description="threat_detector or attack_classifier")]


@app.get("/", response_model=list[ModelEntry])
def list_models(service: Service, model_type: ModelType = None) -> list[ModelEntry]:
    """Every version in the BentoML store (newest first), with whether it is active."""
    return service.list_versions(model_type)


@app.get("/stats/storage")
def storage_stats(service: Service) -> dict[str, Any]:
    """Versions and bytes per model type in the store, and the disk it is on."""
    return service.storage()


@app.get("/profile/{model_type}")
def profile(service: Service, model_type: str) -> dict[str, Any]:
    """The active version of a type, its rollback history, this replica's status and the recent lifecycle events."""
    return service.profile(model_type)


@app.get("/status/replica", response_model=list[ReplicaStatus])
def replica_status(service: Service) -> list[ReplicaStatus]:
    """Whether this process serves the versions recorded as active, and why not."""
    return service.replica_status()


@app.get("/events/audit", response_model=list[LifecycleEvent])
def events(
    service: Service, model_type: ModelType = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[LifecycleEvent]:
    """The lifecycle audit trail (every authorised write: who, when, from, to, why), newest first."""
    return service.events(model_type, limit)


@app.post("/upload", response_model=ModelEntry, status_code=201)
def upload(
    service: Service,
    caller: AdminCaller,
    file: Annotated[UploadFile, File(description="a signed package (python -m nids.models.cli export --sign)")],
    model_type: Annotated[str, Form()],
    description: Annotated[str, Form(max_length=2000)] = "",
) -> ModelEntry:
    """Verify a signed package and add it to the store, inactive."""
    parse_model_type(model_type, ("body", "model_type"))
    settings = get_settings()
    key = settings.model_signing_key.get_secret_value().encode() if settings.model_signing_key else None
    with tempfile.TemporaryDirectory(prefix="nids-upload-") as tmp:
        package = Path(tmp) / "package.bentomodel"
        save_upload(file, package, settings.model_max_package_bytes, "NIDS_MODEL_MAX_PACKAGE_BYTES")
        tag = import_package(package, key, settings.model_max_package_bytes, expected_name=model_type)
    return service.registered(tag, caller.label, description)


@app.get("/{model_id}", response_model=ModelEntry)
def get_model(service: Service, model_id: str) -> ModelEntry:
    return service.get_version(model_id)


@app.post("/{model_id}/activate", response_model=ModelEntry)
def activate(
    service: Service,
    caller: AdminCaller,
    model_id: str,
    force: Annotated[bool, Query(description="pass the champion/challenger gate (needs a reason)")] = False,
    reason: Annotated[str | None, Query(max_length=2000)] = None,
) -> ModelEntry:
    """Verify (hashes, reference cases, contract), pass the gate, make it active on every worker and replica."""
    return service.activate(model_id, caller.label, force=force, reason=reason)


@app.post("/{model_id}/deactivate", response_model=ModelEntry)
def deactivate(
    service: Service,
    caller: AdminCaller,
    model_id: str,
    reason: Annotated[str | None, Query(max_length=2000)] = None,
) -> ModelEntry:
    """Roll back to the previously active version of the type; returns the version now active."""
    return service.deactivate(model_id, caller.label, reason)


@app.delete("/{model_id}")
def delete(
    service: Service,
    caller: AdminCaller,
    model_id: str,
    delete_file: Annotated[bool, Query(description="remove it from the BentoML store (else: retire it)")] = False,
) -> dict[str, Any]:
    """Retire a version, or remove it from the store with delete_file=true; the active version: 409."""
    return service.delete(model_id, caller.label, delete_file=delete_file)


@app.get("/{model_id}/export")
def export(service: Service, model_id: str) -> FileResponse:
    """The package as `bentoml models export` writes it, signed when NIDS_MODEL_SIGNING_KEY is set."""
    model = service.model(model_id)
    key = get_settings().model_signing_key
    directory = tempfile.mkdtemp(prefix="nids-export-")
    path = Path(directory) / f"{model.tag.name}-{model.tag.version}.bentomodel"
    with path.open("wb") as out:
        write_package(model, out, key.get_secret_value().encode() if key else None)
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=path.name,
        background=BackgroundTask(shutil.rmtree, directory, ignore_errors=True),
    )
