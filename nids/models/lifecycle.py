"""Model lifecycle without HTTP: versions in the BentoML store, activation behind checks and a gate, rollback.

The BentoML store is the single source of the models (what `bentoml models list` shows is what is listed here);
which version of each type is active, its history and the audit trail live in the `LifecycleStore`, shared by
every worker and replica, with the signed package of every version uploaded, imported or first recorded there:
a replica whose own store lacks a recorded version fetches that package, verifies its signature and manifest,
copies it into its store (never moving `:latest`) and then loads it like any other (hashes, reference cases).

`Lifecycle.sync()` (run every NIDS_MODEL_SYNC_SECONDS by a background thread in each worker) makes the process's
`ModelRegistry` serve the recorded versions: it loads and verifies a new version off the request path, then
swaps the pair atomically; requests in flight keep the snapshot they started with. A process that cannot load
the recorded version keeps serving its verified one, says why (`replica_status`) and is unready (/readyz 503)
so that a balancer drains it; so is one still catching up NIDS_MODEL_SYNC_DEADLINE_SECONDS after it saw the
switch. Each poll also writes the process's heartbeat (`fleet_status`). When the state cannot be read at
startup (unreachable, a corrupt row, a data directory it cannot write), the process serves nothing, is unready
naming the database and the error, and retries every poll until it can.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException
from pydantic import BaseModel, Field

from nids.core.database import Outage
from nids.core.errors import Conflict, InvalidInput, NIDSError, NotFound
from nids.core.features import ATTACK_MODEL_NAME, THREAT_MODEL_NAME
from nids.core.model import ActiveModels, LoadedModel
from nids.models.artifacts import ModelLoadError, point_latest
from nids.models.packages import import_package, package_bytes
from nids.models.registry import Loader, ModelRegistry, check_contract
from nids.models.state import ActiveState, Heartbeat, LifecycleEvent, LifecycleStore, StateUnavailable, VersionNote

logger = logging.getLogger("nids.lifecycle")
# model type (the store name) -> the registry role it serves
ROLES: dict[str, str] = {THREAT_MODEL_NAME: "threat", ATTACK_MODEL_NAME: "attack"}
RETRY_FAILED_SECONDS = 30.0
STALE_HEARTBEATS = 10  # a process silent for this many polls (at least 30 s) is listed as stale
FORGET_REPLICA_SECONDS = 86_400.0  # ... and forgotten after a day
SwitchObserver = Callable[[ActiveModels, ActiveModels | None], None]
StoreOpener = Callable[[], LifecycleStore]


class GateRefused(Conflict):
    """The candidate's evaluation metric is below the active version's by more than the margin."""


class FileEntry(BaseModel):
    name: str
    size: int | None = Field(description="bytes (null: missing)")
    sha256: str = Field(description="as recorded when the model was saved")


class ReferenceStatus(BaseModel):
    count: int = Field(description="reference cases stored with the model")
    status: str = Field(description="'passed', 'failed: <reason>' or 'not checked' (checked when activated)")
    checked_at: float | None = None


class GateMetric(BaseModel):
    name: str
    value: float | None


class ModelEntry(BaseModel):
    id: int = Field(
        description="the original system's integer model id: a stable alias of the tag (1, 2, ... in the order "
        "versions were first seen, never reused); every path takes it or the tag"
    )
    model_type: str
    version: str
    tag: str = Field(description="the BentoML store tag, name:version (':' may be sent raw or as %3A in paths)")
    is_active: bool
    served_here: bool = Field(description="this process serves this version right now")
    retired: bool = Field(description="deleted without delete_file: kept in the store, never activated")
    expected_features: list[str]
    class_labels: list[str]
    threshold: float | None
    metrics: dict[str, Any]
    gate_metric: GateMetric
    created_at: str
    description: str
    uploaded_by: str | None
    size_bytes: int
    files: list[FileEntry]
    reference_cases: ReferenceStatus
    activated_by: str | None = None
    activated_at: float | None = None
    activation_reason: str | None = None
    validation_results: dict[str, Any] = Field(
        default_factory=dict,
        description="the checks an imported bundle passed (structure, features, test prediction, held-out metrics); "
        "{} for a version trained here (its checks: reference_cases, metrics)",
    )


class ReplicaStatus(BaseModel):
    model_type: str
    active_tag: str | None = Field(description="the version recorded as active (shared state)")
    served_tag: str | None = Field(description="the version this process serves")
    in_sync: bool
    error: str | None = Field(None, description="why this process does not serve the active version")


class FleetMember(BaseModel):
    id: str = Field(description="replica id (NIDS_REPLICA_ID, default host:server pid) and worker, as id/worker")
    replica_id: str
    worker: int
    served: dict[str, str] = Field(description="model type -> the version this process serves")
    in_sync: bool = Field(description="it serves every version recorded as active")
    error: str | None = Field(None, description="why it does not")
    started_at: float
    last_heartbeat: float = Field(description="epoch seconds of its last poll")
    heartbeat_age_seconds: float
    lag_seconds: float = Field(description="how long a recorded activation has waited to be served here (0: in sync)")
    stale: bool = Field(description="silent for more than max(10 polls, 30 s): stopped, killed or cut off")


class FleetStatus(BaseModel):
    active: dict[str, str] = Field(description="model type -> the version recorded as active")
    members: list[FleetMember]
    in_sync: bool = Field(description="every process heard from recently serves the active versions")


def gate_metric(model_type: str, metadata: Mapping[str, Any]) -> GateMetric:
    """KDDTest+ F1 (threat detector) or mean held-out macro-F1 over both CIC-IDS2017 releases (attack classifier)."""
    metrics = metadata.get("metrics") or {}
    try:
        if model_type == THREAT_MODEL_NAME:
            return GateMetric(name="kddtest.f1", value=float(metrics["kddtest"]["f1"]))
        holdout = metrics["holdout"]
        values = [float(source["macro_f1"]) for source in holdout.values()]
        return GateMetric(name="holdout.macro_f1 (mean over sources)", value=sum(values) / len(values))
    except (KeyError, TypeError, ValueError, ZeroDivisionError, AttributeError):
        name = "kddtest.f1" if model_type == THREAT_MODEL_NAME else "holdout.macro_f1 (mean over sources)"
        return GateMetric(name=name, value=None)


def parse_model_type(model_type: str, loc: tuple[str, ...] = ("query", "model_type")) -> str:
    if model_type not in ROLES:
        raise InvalidInput(
            f"{loc[-1]} must be one of {sorted(ROLES)}",
            detail=[{"loc": list(loc), "msg": f"Input should be one of {sorted(ROLES)}", "type": "enum"}],
        )
    return model_type


def store_model(model_id: str) -> bentoml.Model:
    """The store's model of a tag `name:version`: 400 for a malformed id, 404 when absent, 400 for another type
    (`Lifecycle.model` resolves the integer ids first)."""
    name, sep, version = model_id.partition(":")
    if not sep or not name or not version or version == "latest":
        raise InvalidInput(
            f"model id {model_id!r} must be an integer id or a store tag name:version",
            detail=[{"loc": ["path", "model_id"], "msg": "Input should be an id or name:version", "type": "model_id"}],
        )
    parse_model_type(name, ("path", "model_id"))
    try:
        return bentoml.models.get(model_id)
    except bentoml.exceptions.NotFound:
        raise NotFound(f"no model {model_id!r} in the BentoML store") from None
    except (BentoMLException, ValueError) as exc:
        raise InvalidInput(f"model id {model_id!r} is not a valid tag: {exc}") from exc


def _store_versions(name: str) -> list[bentoml.Model]:
    """Every version of `name` in the store ([] when there is none)."""
    try:
        return bentoml.models.list(name)
    except bentoml.exceptions.NotFound:
        return []


def _size(path: Path) -> int | None:
    return path.stat().st_size if path.is_file() else None


class Lifecycle:
    """Versions, activation and rollback over one `LifecycleStore`, serving through one `ModelRegistry`."""

    def __init__(
        self,
        store: LifecycleStore | StoreOpener,
        registry: ModelRegistry,
        loader: Loader,
        *,
        gate_margin: float = 0.01,
        on_switch: SwitchObserver | None = None,
        signing_key: bytes | None = None,
        max_package_bytes: int = 256 * 1024 * 1024,
        member: tuple[str, int] = ("local", 0),
        sync_seconds: float = 1.0,
    ) -> None:
        """`store`: the state, or how to open it (retried every poll while it cannot be opened or read).
        `signing_key` signs the packages this process stores for the fleet and verifies those it fetches.
        `member`: (replica id, worker index) of this process in the heartbeats."""
        self._store, self._open = (store, None) if isinstance(store, LifecycleStore) else (None, store)
        self.registry = registry
        self.loader = loader
        self.gate_margin = gate_margin
        self.on_switch = on_switch
        self.signing_key = signing_key
        self.max_package_bytes = max_package_bytes
        self.member = member
        self.sync_seconds = sync_seconds
        self.started_at = time.time()
        self._configured: dict[str, str] = {}
        self._booted = False
        self._boot_failure = ""
        self._errors: dict[str, str] = {}  # model type -> why the recorded version is not served here
        self._failed: dict[str, tuple[str, float]] = {}  # model type -> (tag that failed to load, when)
        self._sync_lock = threading.Lock()
        self.outage = Outage()  # since when the polls, once serving, cannot read or write the state (/readyz)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def store(self) -> LifecycleStore:
        """The state store; StateUnavailable while it could not be opened yet."""
        if self._store is None:
            if self._open is None:
                raise StateUnavailable("model lifecycle state is closed")
            self._store = self._open()
        return self._store

    # --- startup and synchronisation --------------------------------------------------------------------
    def bootstrap(self, configured: Mapping[str, str]) -> None:
        """Record the configured tags (model type -> tag, `:latest` resolved) as active unless a version already is,
        then serve what is recorded; when that cannot load, serve the configured tags and report the mismatch.

        When the state cannot be opened or read, serve nothing and be unready with the reason; the poll thread
        retries until it can (`start`)."""
        self._configured = dict(configured)
        try:
            self._bootstrap()
        except StateUnavailable as exc:
            self.registry.unavailable(str(exc))
            if str(exc) != self._boot_failure:  # once per distinct reason, not once a poll
                cause = exc.__cause__
                logger.error(  # with the driver's own text, which the reason leaves out
                    "not serving until the model lifecycle state can be read (retrying): %s (%s: %s)",
                    exc,
                    type(cause).__name__,
                    cause,
                )
            self._boot_failure = str(exc)
            return
        self._booted = True
        self._beat()

    def _bootstrap(self) -> None:
        configured = self._configured
        active = self.store.active()
        for model_type, tag in configured.items():
            if model_type in active:
                continue
            try:
                resolved = str(bentoml.models.get(tag).tag)
            except (BentoMLException, ValueError) as exc:
                logger.error("cannot resolve the configured %s %s: %s", model_type, tag, exc)
                continue
            if self.store.initialise(model_type, resolved, f"initial version (configured {tag})"):
                self.store.record("startup", "initialise", model_type=model_type, to_tag=resolved)
        self._share_recorded()
        self.list_versions()  # integer ids for the versions already in the store, in the order they were made
        self.sync()
        if self.registry.ready:
            return
        # The recorded versions cannot be served here: a verified configured pair beats serving nothing (the next
        # polls swap in whichever recorded version does load, and keep reporting the others).
        try:
            models = self.registry.load(configured[THREAT_MODEL_NAME], configured[ATTACK_MODEL_NAME], self.loader)
            self._switched(models, None)
        except Exception:
            logger.exception("serving no models: %s", self.registry.reason)
        self._publish_mismatch()

    def start(self, interval: float) -> None:
        """Poll the shared state every `interval` seconds in a daemon thread (off the request path)."""
        self._thread = threading.Thread(target=self._loop, args=(interval,), name="model-sync", daemon=True)
        self._thread.start()

    def _loop(self, interval: float) -> None:
        failure = ""
        while not self._stop.wait(interval):
            try:
                if not self._booted:
                    self.bootstrap(self._configured)
                    continue
                self.sync()
                self._beat()
            except Exception as exc:  # the thread must outlive a database outage; the next poll retries
                if isinstance(exc, StateUnavailable):
                    self.outage.failed(exc)
                if str(exc) != failure:  # once per distinct failure, not once a second
                    logger.exception("model sync failed; serving the verified versions meanwhile")
                failure = str(exc)
            else:
                failure = ""
                if self.outage.recovered():
                    logger.info("the model lifecycle state answers again")

    def degradation(self) -> str:
        """'' while the polls read and write the state; else since when they cannot, and what answers 503 meanwhile
        (listed under `degraded` on /readyz: the verified versions are still served, switches are not followed)."""
        described = self.outage.describe("model lifecycle state")
        if not described:
            return ""
        return (
            f"{described}; serving the verified versions without following switches, and the model lifecycle API "
            "(listing, upload, activation, rollback, fleet status) answers 503 until it answers"
        )

    def stop(self) -> None:
        """Stop following switches and close the state store (a SQLite file is checkpointed and left whole)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._store is not None:
            self._store.close()

    def sync(self) -> None:
        """Serve the recorded active versions: load what changed, verify, swap the pair atomically."""
        with self._sync_lock:
            active = self.store.active()
            current = self.registry.current
            served = current.by_role() if current is not None else {}
            chosen: dict[str, LoadedModel] = {}
            behind = any(
                state.tag != getattr(served.get(ROLES[model_type]), "tag", None) for model_type, state in active.items()
            )
            if not behind:
                self.registry.behind_since = None
            elif self.registry.behind_since is None:
                self.registry.behind_since = time.monotonic()
            for model_type, role in ROLES.items():
                state = active.get(model_type)
                have = served.get(role)
                if state is None or (have is not None and have.tag == state.tag):
                    self._errors.pop(model_type, None)
                    if have is not None:
                        chosen[role] = have
                    continue
                loaded = self._load_recorded(model_type, role, state.tag)
                if loaded is not None:
                    chosen[role] = loaded
                elif have is not None:
                    chosen[role] = have
            if set(chosen) == {"threat", "attack"}:
                models = ActiveModels(threat=chosen["threat"], attack=chosen["attack"])
                if current is None or models.threat is not current.threat or models.attack is not current.attack:
                    self.registry.activate(models)
                    self._switched(models, current)
                if all(active.get(t) is None or active[t].tag == models.by_role()[r].tag for t, r in ROLES.items()):
                    self.registry.behind_since = None
            self._publish_mismatch()

    def _load_recorded(self, model_type: str, role: str, tag: str) -> LoadedModel | None:
        failed = self._failed.get(model_type)
        if failed is not None and failed[0] == tag and time.monotonic() - failed[1] < RETRY_FAILED_SECONDS:
            return None  # the same version failed moments ago: do not reload it every poll
        try:
            self._local(tag)  # fetched from the shared packages when this replica's store lacks it
            model = check_contract(role, self.loader(tag))
        except Exception as exc:  # any failure: keep the verified version, report why
            self._errors[model_type] = f"cannot serve the active {model_type} {tag}: {type(exc).__name__}: {exc}"
            self._failed[model_type] = (tag, time.monotonic())
            logger.error("%s", self._errors[model_type])
            return None
        self._errors.pop(model_type, None)
        self._failed.pop(model_type, None)
        _point_latest(tag)
        logger.info("now serving %s %s", model_type, tag)
        return model

    # --- the packages every replica can fetch -------------------------------------------------------------
    def _local(self, model_id: str) -> bentoml.Model:
        """The store's model of an id, fetched from the shared packages (and verified) when this store lacks it."""
        try:
            return store_model(model_id)
        except NotFound:
            package = self.store.package(model_id)
            if package is None:
                raise NotFound(
                    f"no model {model_id!r} in the BentoML store of this replica nor in the shared packages"
                ) from None
        self._import(model_id, package)
        return store_model(model_id)

    def _import(self, tag: str, package: bytes) -> None:
        if self.signing_key is None:
            raise ModelLoadError(
                f"model {tag} is in the shared packages but cannot be verified here: NIDS_MODEL_SIGNING_KEY is not set"
            )
        with tempfile.TemporaryDirectory(prefix="nids-fetch-") as tmp:
            path = Path(tmp) / "package.bentomodel"
            path.write_bytes(package)
            with contextlib.suppress(Conflict):  # another worker of this replica (same store) fetched it meanwhile
                import_package(path, self.signing_key, self.max_package_bytes, expected_name=tag.partition(":")[0])
        logger.info("fetched %s from the shared packages (signature and manifest verified)", tag)

    def share(self, tag: str, actor: str, package: bytes | None = None) -> bool:
        """Keep the signed package of a stored version where every replica can fetch it (True if stored now).

        `package`: the signed bytes as uploaded; else the version is packed and signed here."""
        if package is None:
            if self.signing_key is None:
                return False  # nothing another replica could verify
            package = package_bytes(store_model(tag), self.signing_key)
        return self.store.store_package(tag, package, f"{actor}@{self.member[0]}")

    def _share_recorded(self) -> None:
        """Share the recorded versions (active and history) this replica holds and no replica has shared yet."""
        if self.signing_key is None:
            return
        shared = self.store.packages()
        for state in self.store.active().values():
            for tag in {state.tag, *state.history} - set(shared):
                try:
                    stored = self.share(tag, "startup")
                except (NotFound, InvalidInput):
                    continue  # not in this replica's store: another replica may share it
                if stored:
                    logger.info("shared the package of %s with the fleet", tag)

    # --- heartbeats ----------------------------------------------------------------------------------------
    def _beat(self) -> None:
        current = self.registry.current
        served = {t: current.by_role()[r].tag for t, r in ROLES.items()} if current is not None else {}
        active = self.store.active()
        in_sync = bool(served) and all(state.tag == served.get(t) for t, state in active.items())
        errors = "; ".join(self._errors[t] for t in sorted(self._errors)) or None
        self.store.heartbeat(
            Heartbeat(self.member[0], self.member[1], served, in_sync, errors, self.started_at, time.time())
        )

    def fleet_status(self) -> FleetStatus:
        """Every serving process that reported: the versions it serves, its last heartbeat, how far behind it is."""
        now = time.time()
        self.store.forget_replicas(now - FORGET_REPLICA_SECONDS)
        active = self.store.active()
        stale_after = max(STALE_HEARTBEATS * self.sync_seconds, 30.0)
        members = []
        for beat in self.store.heartbeats():
            waiting = [state.activated_at for t, state in active.items() if beat.served.get(t) != state.tag]
            age = max(0.0, now - beat.heartbeat_at)
            members.append(
                FleetMember(
                    id=f"{beat.replica_id}/{beat.worker}",
                    replica_id=beat.replica_id,
                    worker=beat.worker,
                    served=beat.served,
                    in_sync=not waiting,
                    error=beat.error,
                    started_at=beat.started_at,
                    last_heartbeat=beat.heartbeat_at,
                    heartbeat_age_seconds=round(age, 3),
                    lag_seconds=round(max(0.0, now - min(waiting)), 3) if waiting else 0.0,
                    stale=age > stale_after,
                )
            )
        return FleetStatus(
            active={t: state.tag for t, state in active.items()},
            members=members,
            in_sync=all(member.in_sync for member in members if not member.stale),
        )

    def _switched(self, models: ActiveModels, previous: ActiveModels | None) -> None:
        if self.on_switch is not None:
            self.on_switch(models, previous)

    def _publish_mismatch(self) -> None:
        self.registry.mismatch = "; ".join(self._errors[t] for t in sorted(self._errors))

    def replica_status(self) -> list[ReplicaStatus]:
        active = self.store.active()
        current = self.registry.current
        served = current.by_role() if current is not None else {}
        statuses = []
        for model_type, role in ROLES.items():
            state, have = active.get(model_type), served.get(role)
            active_tag, served_tag = state.tag if state else None, have.tag if have else None
            statuses.append(
                ReplicaStatus(
                    model_type=model_type,
                    active_tag=active_tag,
                    served_tag=served_tag,
                    in_sync=active_tag is not None and active_tag == served_tag,
                    error=self._errors.get(model_type),
                )
            )
        return statuses

    # --- reading ----------------------------------------------------------------------------------------
    def model(self, model_id: str) -> bentoml.Model:
        """The store's model of an id: the integer alias (the original's `1`) or the tag `name:version`; fetched
        from the shared packages (and verified) when this replica's store lacks it."""
        if model_id.isascii() and model_id.isdigit():
            tag = self.store.tag_of(int(model_id))
            if tag is None:
                raise NotFound(f"no model with id {model_id}")
            return self._local(tag)
        return self._local(model_id)

    def load(self, tag: str) -> LoadedModel:
        """A version loaded (verified) for scoring, fetched from the shared packages first when this replica's store
        lacks it: the shadow runs' loader, so a challenger uploaded through one replica is scored by every one."""
        return self.loader(str(self._local(tag).tag))

    def list_versions(self, model_type: str | None = None) -> list[ModelEntry]:
        """Every version of the served model types in the store, newest first."""
        types = [parse_model_type(model_type)] if model_type is not None else list(ROLES)
        self._fetch_shared(types)
        active, notes = self.store.active(), self.store.notes()
        models = [model for name in types for model in _store_versions(name)]
        models.sort(key=lambda m: m.creation_time)
        aliases = self.store.aliases([str(model.tag) for model in models])  # ids follow creation order
        return [self._entry(model, active, notes, aliases) for model in reversed(models)]

    def _fetch_shared(self, types: list[str]) -> None:
        """Copy into this store the shared versions of `types` it lacks (listed then like its own)."""
        held = {str(model.tag) for name in types for model in _store_versions(name)}
        for tag in sorted(set(self.store.packages()) - held):
            if tag.partition(":")[0] in types:
                try:
                    self._local(tag)
                except NIDSError as exc:  # refused, too large, unverifiable: listed where it can be fetched
                    logger.error("cannot fetch the shared package of %s: %s", tag, exc)

    def get_version(self, model_id: str) -> ModelEntry:
        model = self.model(model_id)
        aliases = self.store.aliases([str(model.tag)])
        return self._entry(model, self.store.active(), self.store.notes(), aliases)

    def _entry(
        self,
        model: bentoml.Model,
        active: Mapping[str, ActiveState],
        notes: Mapping[str, VersionNote],
        aliases: Mapping[str, int],
    ) -> ModelEntry:
        tag, metadata = str(model.tag), model.info.metadata
        state, note = active.get(model.tag.name), notes.get(tag)
        is_active = state is not None and state.tag == tag
        current = self.registry.current
        served = current is not None and tag in (current.threat.tag, current.attack.tag)
        root = Path(model.path)
        recorded = metadata.get("files") if isinstance(metadata.get("files"), dict) else {}
        status, checked_at = "not checked", None
        if served and current is not None:
            loaded = current.threat if current.threat.tag == tag else current.attack
            passed = all(result.passed for result in loaded.reference_results)
            status = "passed" if passed else "failed"
        elif note is not None and note.check_status is not None:
            status, checked_at = note.check_status, note.checked_at
        threshold = metadata.get("threshold")
        return ModelEntry(
            id=aliases[tag],
            model_type=model.tag.name,
            version=str(model.tag.version),
            tag=tag,
            is_active=is_active,
            served_here=served,
            retired=bool(note and note.retired),
            expected_features=list(metadata.get("feature_names", [])),
            class_labels=list(metadata.get("class_names", [])),
            threshold=float(threshold) if threshold is not None else None,
            metrics=dict(metadata.get("metrics", {})),
            gate_metric=gate_metric(model.tag.name, metadata),
            created_at=str(metadata.get("created_at") or model.creation_time.isoformat()),
            description=note.description if note else "",
            uploaded_by=note.uploaded_by if note else None,
            size_bytes=sum(path.stat().st_size for path in root.rglob("*") if path.is_file()),
            files=[FileEntry(name=name, size=_size(root / name), sha256=str(sha)) for name, sha in recorded.items()],
            reference_cases=ReferenceStatus(
                count=int(metadata.get("reference_case_count", 0)), status=status, checked_at=checked_at
            ),
            activated_by=state.activated_by if is_active and state else None,
            activated_at=state.activated_at if is_active and state else None,
            activation_reason=state.reason if is_active and state else None,
            validation_results=dict(metadata.get("validation_results") or {}),
        )

    def profile(self, model_type: str) -> dict[str, Any]:
        """The active version of a type, its rollback history, this process's status and the recent events."""
        model_type = parse_model_type(model_type, ("path", "model_type"))
        versions = self.list_versions(model_type)
        state = self.store.active().get(model_type)
        history = state.history if state else ()
        aliases = self.store.aliases()
        return {
            "model_type": model_type,
            "active": next((entry for entry in versions if entry.is_active), None),
            "versions": len(versions),
            "history": list(history),
            "history_ids": [aliases.get(tag) for tag in history],
            "gate_margin": self.gate_margin,
            "replica": next(s for s in self.replica_status() if s.model_type == model_type),
            "events": self.events(model_type, limit=20),
        }

    def storage(self) -> dict[str, Any]:
        from bentoml._internal.configuration.containers import BentoMLContainer

        root = Path(BentoMLContainer.model_store_dir.get())
        by_type = {}
        for model_type in ROLES:
            entries = self.list_versions(model_type)
            by_type[model_type] = {"versions": len(entries), "bytes": sum(entry.size_bytes for entry in entries)}
        usage = shutil.disk_usage(root)
        return {
            "store_path": str(root),
            "total_versions": sum(item["versions"] for item in by_type.values()),
            "total_bytes": sum(item["bytes"] for item in by_type.values()),
            "by_model_type": by_type,
            "disk_free_bytes": usage.free,
            "disk_total_bytes": usage.total,
        }

    def events(self, model_type: str | None = None, limit: int = 100) -> list[LifecycleEvent]:
        """Newest first, each tag with its integer id (the original's model id) beside it."""
        events = self.store.events(parse_model_type(model_type) if model_type else None, limit)
        aliases = self.store.aliases()
        return [
            event.model_copy(
                update={"from_id": aliases.get(event.from_tag or ""), "to_id": aliases.get(event.to_tag or "")}
            )
            for event in events
        ]

    # --- writing ----------------------------------------------------------------------------------------
    def activate(self, model_id: str, actor: str, *, force: bool = False, reason: str | None = None) -> ModelEntry:
        """Verify (hashes, reference cases, contract), pass the gate (or `force` with a reason), switch, audit."""
        model = self.model(model_id)
        tag, model_type = str(model.tag), model.tag.name
        if force and not (reason and reason.strip()):
            raise InvalidInput(
                "force=true needs a reason",
                detail=[{"loc": ["query", "reason"], "msg": "a reason is required with force=true", "type": "missing"}],
            )
        state = self._state(model_type)
        if state.tag == tag:
            # the original's rollback is two steps (deactivate, then activate the previous version); deactivate
            # already rolled back here, so the second step finds its version active: no change, recorded, 200
            self.store.record(
                actor,
                "activate",
                model_type=model_type,
                from_tag=tag,
                to_tag=tag,
                reason=reason.strip() if reason else "already active: no change",
                detail={"no_change": True},
            )
            return self.get_version(tag)
        note = self.store.notes().get(tag)
        if note is not None and note.retired:
            raise Conflict(f"model {tag} was retired (deleted without delete_file); it cannot be activated")
        candidate = self._verified(model_type, tag)
        if tag not in self.store.packages():
            self.share(tag, actor)  # e.g. imported into this store by the CLI: every replica must reach it
        gate = self._gate(model_type, tag, state.tag)
        if gate["passed"] is False and not force:
            raise GateRefused(
                f"the gate refused {tag}: its {gate['metric']} {gate['candidate']} is below the active "
                f"{state.tag}'s {gate['active']} by more than the margin {self.gate_margin}; "
                "pass force=true with a reason to activate it anyway",
                detail=[gate],
            )
        why = reason.strip() if reason else "activated"
        if not self.store.switch(state, tag, [*state.history, state.tag], actor, why):
            raise Conflict(f"the active {model_type} changed meanwhile; reload and retry")
        self.store.record(
            actor,
            "activate",
            model_type=model_type,
            from_tag=state.tag,
            to_tag=tag,
            reason=why,
            detail={"forced": force and gate["passed"] is False, "gate": gate},
        )
        self._serve_now(ROLES[model_type], candidate)
        return self.get_version(tag)

    def deactivate(self, model_id: str, actor: str, reason: str | None = None) -> ModelEntry:
        """Roll the type of `model_id` (which must be active) back to the previously active version."""
        model = self.model(model_id)
        tag, model_type = str(model.tag), model.tag.name
        state = self._state(model_type)
        if state.tag != tag:
            raise Conflict(f"model {tag} is not the active {model_type} ({state.tag} is); only it can be deactivated")
        if not state.history:
            raise Conflict(f"{tag} has no previously active {model_type} to roll back to")
        previous = state.history[-1]
        self._local(previous)
        restored = self._verified(model_type, previous)
        why = reason.strip() if reason else f"rolled back from {tag}"
        if not self.store.switch(state, previous, state.history[:-1], actor, why):
            raise Conflict(f"the active {model_type} changed meanwhile; reload and retry")
        self.store.record(actor, "deactivate", model_type=model_type, from_tag=tag, to_tag=previous, reason=why)
        self._serve_now(ROLES[model_type], restored)
        return self.get_version(previous)

    def delete(self, model_id: str, actor: str, *, delete_file: bool = False) -> dict[str, Any]:
        """Retire a version (kept in the store, never activated) or, with delete_file, remove it from the store."""
        model = self.model(model_id)
        tag, model_type = str(model.tag), model.tag.name
        if self._state(model_type).tag == tag:
            raise Conflict(f"model {tag} is the active {model_type}; activate another version before deleting it")
        if delete_file:
            bentoml.models.delete(tag)
            self.store.drop_package(tag)  # no replica fetches it any more (those holding a copy keep it)
            self.store.forget(tag)
        else:
            self.store.note(tag, retired=True)
        self.store.record(actor, "delete" if delete_file else "retire", model_type=model_type, from_tag=tag)
        alias = self.store.aliases([tag])[tag]  # kept after the version is gone: never given to another
        return {"id": alias, "tag": tag, "deleted": True, "file_deleted": delete_file}

    def registered(self, tag: str, actor: str, description: str, package: bytes | None = None) -> ModelEntry:
        """Share and audit an upload (already verified and written to this store); it stays inactive.

        `package`: the signed bytes as received, kept once for the whole fleet."""
        self.share(tag, actor, package)
        self.store.note(tag, description=description, uploaded_by=actor)
        self.store.record(actor, "upload", model_type=tag.partition(":")[0], to_tag=tag, reason=description or None)
        return self.get_version(tag)

    def audit(self, actor: str, action: str, **fields: Any) -> LifecycleEvent:
        """Record any other authorised write (self-healing revert, enforcement switch)."""
        return self.store.record(actor, action, **fields)

    def _state(self, model_type: str) -> ActiveState:
        state = self.store.active().get(model_type)
        if state is None:
            raise Conflict(f"no {model_type} version is recorded as active yet (the service has not started once)")
        return state

    def _verified(self, model_type: str, tag: str) -> LoadedModel:
        """The loaded, checked model; ModelLoadError (422) naming the failed check, recorded on the version."""
        try:
            model = check_contract(ROLES[model_type], self.loader(tag))
        except ModelLoadError as exc:
            self.store.note(tag, check_status=f"failed: {exc}", checked_at=time.time())
            raise
        self.store.note(tag, check_status="passed", checked_at=time.time())
        return model

    def _gate(self, model_type: str, candidate_tag: str, active_tag: str) -> dict[str, Any]:
        candidate = gate_metric(model_type, store_model(candidate_tag).info.metadata)
        try:
            active = gate_metric(model_type, bentoml.models.get(active_tag).info.metadata)
        except (BentoMLException, ValueError):
            active = GateMetric(name=candidate.name, value=None)
        passed: bool | None
        if active.value is None:
            passed = None  # nothing to compare with: the gate does not apply
        elif candidate.value is None:
            passed = False
        else:
            passed = candidate.value >= active.value - self.gate_margin
        return {
            "metric": candidate.name,
            "candidate": candidate.value,
            "active": active.value,
            "margin": self.gate_margin,
            "passed": passed,
        }

    def _serve_now(self, role: str, model: LoadedModel) -> None:
        """Swap in a verified model right away in this process (the others follow within one poll)."""
        with self._sync_lock:
            current = self.registry.current
            if current is None:
                return
            pair = {**current.by_role(), role: model}
            models = ActiveModels(threat=pair["threat"], attack=pair["attack"])
            self.registry.activate(models)
            self._switched(models, current)
            self._errors.pop(next(t for t, r in ROLES.items() if r == role), None)
            self._publish_mismatch()
        _point_latest(model.tag)


def _point_latest(tag: str) -> None:
    """Activated versions become `:latest` in this replica's store (what a process with fresh state serves)."""
    try:
        point_latest(tag)
    except (BentoMLException, OSError, RuntimeError) as exc:
        logger.warning("%s is served, but :latest could not be pointed at it: %s", tag, exc)
