"""The original system's model lifecycle REST paths, mounted on the Bento at /api/v1/models.

A model id is the original system's integer id (`1`, a stable alias of the tag kept in the lifecycle state) or the
BentoML store tag `name:version` (e.g. `threat_detector:k3x2...`; the ':' may be sent raw, RFC 3986 allows it in
a path segment, or percent-encoded as %3A). Reads need a viewer token (in the `required` auth mode); every write,
and export (a package signed with the deployment's key), needs a token of scope admin (nids.serving.auth, which
refuses before the body is read) and is recorded in the lifecycle audit trail under the token's label. Exports
are bounded: models larger than NIDS_MODEL_MAX_PACKAGE_BYTES are refused (413), and each worker packs one at a
time, at most NIDS_MODEL_MAX_EXPORTS_PER_MINUTE a minute (429 past either). The
routes are sync functions: FastAPI runs them in its threadpool, so store reads and uploads never hold up inference.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from nids.core.budget import SlidingWindow
from nids.core.errors import RequestTooLarge, TooManyRequests
from nids.core.settings import get_settings
from nids.models.bundles import import_file, parse_profile, upload_kind
from nids.models.lifecycle import FleetStatus, Lifecycle, ModelEntry, ReplicaStatus, parse_model_type
from nids.models.packages import SigningNotConfigured, import_package, write_package
from nids.models.state import LifecycleEvent
from nids.serving.auth import AdminCaller
from nids.serving.errors import install_fastapi
from nids.serving.routes.files import save_upload

MAX_PROFILE_BYTES = 1024 * 1024
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


@app.get("/status/fleet", response_model=FleetStatus)
def fleet_status(service: Service) -> FleetStatus:
    """Every serving process of every replica sharing the state: versions served, last heartbeat, lag."""
    return service.fleet_status()


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
    file: Annotated[
        UploadFile,
        File(description="a signed .joblib/.pkl bundle or ZIP deployment package, or a signed package"),
    ],
    model_type: Annotated[str, Form()],
    description: Annotated[str, Form(max_length=2000)] = "",
    profile_config: Annotated[UploadFile | None, File(description="the original's profile JSON")] = None,
    signature: Annotated[
        str | None, Form(max_length=512, description="HMAC-SHA256 (hex) of the file's bytes: bundles and ZIPs")
    ] = None,
) -> ModelEntry:
    """Verify a signed model file and add it to the store, inactive: a bundle or ZIP package of the original system
    (signature over its bytes checked before anything is unpickled, then validated and converted), or a package."""
    parse_model_type(model_type, ("body", "model_type"))
    settings = get_settings()
    if settings.model_signing_key is None:  # nothing is accepted unsigned: say so before reading the file
        raise SigningNotConfigured("a model upload or import")
    key = settings.model_signing_key.get_secret_value().encode()
    limit = settings.model_max_package_bytes
    with tempfile.TemporaryDirectory(prefix="nids-upload-") as tmp:
        path = Path(tmp) / "upload"
        save_upload(file, path, limit, "NIDS_MODEL_MAX_PACKAGE_BYTES")
        with path.open("rb") as handle:
            kind = upload_kind(file.filename, handle.read(512))
        if kind == "package":
            tag = import_package(path, key, limit, expected_name=model_type)
            # the signed bytes as received are what every other replica fetches
            return service.registered(tag, caller.label, description, path.read_bytes())
        profile = parse_profile(profile_config.file.read(MAX_PROFILE_BYTES) if profile_config is not None else None)
        imported = import_file(path, file.filename, model_type, signature, key, limit, profile)
    return service.registered(imported.tag, caller.label, description)  # packed and signed here for the fleet


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


_exporting = threading.Lock()  # one export at a time per worker
_exports: list[SlidingWindow] = []  # the worker's exports per minute (made on first use, from the settings)


def _export_budget(per_minute: int) -> SlidingWindow:
    if not _exports or _exports[0].limit != per_minute:
        _exports[:] = [SlidingWindow(per_minute, 60.0)]
    return _exports[0]


def _model_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file() and not path.is_symlink())


@app.get("/{model_id}/export")
def export(service: Service, caller: AdminCaller, model_id: str) -> FileResponse:
    """The package as `bentoml models export` writes it, signed when NIDS_MODEL_SIGNING_KEY is set. Admin token."""
    model = service.model(model_id)
    settings = get_settings()
    size = _model_bytes(Path(model.path))
    if size > settings.model_max_package_bytes:
        raise RequestTooLarge(
            f"model {model.tag} holds {size} bytes; exports are limited to {settings.model_max_package_bytes} "
            "(NIDS_MODEL_MAX_PACKAGE_BYTES)"
        )
    if not _exporting.acquire(blocking=False):
        raise TooManyRequests("another export is being packed by this worker; try again when it is done")
    try:
        if not _export_budget(settings.model_max_exports_per_minute).take():
            raise TooManyRequests(
                f"at most {settings.model_max_exports_per_minute} exports a minute "
                "(NIDS_MODEL_MAX_EXPORTS_PER_MINUTE); try again later"
            )
        directory = tempfile.mkdtemp(prefix="nids-export-")
        path = Path(directory) / f"{model.tag.name}-{model.tag.version}.bentomodel"
        with path.open("wb") as out:
            write_package(model, out, settings.signing_key)
    finally:
        _exporting.release()
    service.audit(caller.label, "export", model_type=model.tag.name, from_tag=str(model.tag))
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=path.name,
        background=BackgroundTask(shutil.rmtree, directory, ignore_errors=True),
    )
