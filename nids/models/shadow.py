"""A challenger scoring live traffic in the shadow of the active version, never acting on it (issue 21).

`POST /api/v1/models/{id}/shadow?share=0.2` records a *shadow run* (model type, version, share of flows) in the
lifecycle database; every worker of every replica sharing it follows the runs (`ShadowRunner.sync`, polled) and,
after answering a request, hands the flows and what the active version predicted to its runner: a bounded queue
(`offer` never blocks; a full queue sheds the batch, counted). One low-priority thread per worker draws the
share of flows, scores them with the shadow version and writes one comparison row per flow into the same
database, so `report` covers every replica's traffic. Nothing the shadow predicts is answered, logged as a
prediction or acted on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from nids.core.columns import FlowBatch, validate_flows
from nids.core.database import Database, check_prefix
from nids.core.errors import Conflict, NotFound
from nids.models.lifecycle import ROLES
from nids.models.registry import check_contract

if TYPE_CHECKING:
    from nids.core.model import LoadedModel
    from nids.models.lifecycle import Lifecycle

logger = logging.getLogger("nids.shadow")
BINS = 10  # score histogram: [0, 0.1), ..., [0.9, 1]
SAMPLE = 20  # disagreements listed in a report
Loader = Callable[[str], "LoadedModel"]


@dataclass(frozen=True)
class ShadowRun:
    run_id: str
    model_type: str
    tag: str
    share: float
    started_by: str
    started_at: float
    stopped_at: float | None
    stopped_by: str | None
    outcome: str | None  # stopped / promoted / replaced


@dataclass(frozen=True)
class Offered:
    """A batch the active version answered: its flows, classes and scores (threat: P(attack); attack: confidence)."""

    kind: Literal["threat", "attack"]
    active_tag: str
    flows: FlowBatch
    classes: np.ndarray
    scores: np.ndarray


class ScoreHistogram(BaseModel):
    edges: list[float] = Field(description="bin edges; the last bin includes 1")
    active: list[int]
    shadow: list[int]


class ClassPair(BaseModel):
    active_class: str
    shadow_class: str
    flows: int


class Disagreement(BaseModel):
    at: float
    active_tag: str
    active_class: str
    shadow_class: str
    active_score: float
    shadow_score: float
    flow_id: str | None
    src_ip: str | None
    features: dict[str, Any]


class FeedbackAccuracy(BaseModel):
    flows: int = Field(description="flows with an analyst's verdict that gives a label (any time, any version)")
    active_accuracy: float | None
    shadow_accuracy: float | None


class ShadowReport(BaseModel):
    run_id: str
    model_type: str
    shadow_tag: str
    active_tags: list[str] = Field(description="the active versions the shadow was compared with")
    share: float
    running: bool
    outcome: str | None
    started_by: str
    started_at: float
    stopped_at: float | None
    flows_compared: int
    agreement_rate: float | None = Field(description="share of compared flows where both predicted the same class")
    confusion: list[ClassPair] = Field(description="flows per (active class, shadow class), most first")
    score_distribution: ScoreHistogram = Field(
        description="threat: P(attack) of each; attack classifier: each one's confidence in its own class"
    )
    disagreements: list[Disagreement] = Field(description=f"the latest {SAMPLE}, newest first")
    feedback: FeedbackAccuracy | None = Field(None, description="both versions on the flows analysts labelled")


_RUN_COLUMNS = (
    "run_id",
    "model_type",
    "tag",
    "share",
    "started_by",
    "started_at",
    "stopped_at",
    "stopped_by",
    "outcome",
)
_RESULT_COLUMNS = (
    "run_id",
    "at",
    "active_tag",
    "active_class",
    "shadow_class",
    "active_score",
    "shadow_score",
    "active_bin",
    "shadow_bin",
    "flow_id",
    "src_ip",
    "features",
)


def _bin(scores: np.ndarray) -> np.ndarray:
    return np.minimum((np.clip(scores, 0.0, 1.0) * BINS).astype(np.int64), BINS - 1)


class ShadowStore:
    """Shadow runs and their comparison rows (`<prefix>shadow_runs`, `<prefix>shadow_results`)."""

    def __init__(self, db: Database, table_prefix: str = "lifecycle_") -> None:
        check_prefix(table_prefix)
        self.db = db
        self.runs, self.results = f"{table_prefix}shadow_runs", f"{table_prefix}shadow_results"
        real = "DOUBLE PRECISION"
        identity = "INTEGER PRIMARY KEY AUTOINCREMENT" if db.dialect == "sqlite" else "BIGSERIAL PRIMARY KEY"
        self.db.execute(
            [
                (
                    f"CREATE TABLE IF NOT EXISTS {self.runs} (run_id TEXT PRIMARY KEY, model_type TEXT NOT NULL, "
                    f"tag TEXT NOT NULL, share {real} NOT NULL, started_by TEXT NOT NULL, started_at {real} NOT NULL, "
                    f"stopped_at {real}, stopped_by TEXT, outcome TEXT)",
                    {},
                ),
                (
                    f"CREATE TABLE IF NOT EXISTS {self.results} (id {identity}, run_id TEXT NOT NULL, at {real} "
                    "NOT NULL, active_tag TEXT NOT NULL, active_class INTEGER NOT NULL, shadow_class INTEGER NOT NULL, "
                    f"active_score {real} NOT NULL, shadow_score {real} NOT NULL, active_bin INTEGER NOT NULL, "
                    "shadow_bin INTEGER NOT NULL, flow_id TEXT, src_ip TEXT, features TEXT)",
                    {},
                ),
                (f"CREATE INDEX IF NOT EXISTS {self.results}_run ON {self.results} (run_id, id)", {}),
            ]
        )

    def start(self, model_type: str, tag: str, share: float, actor: str) -> ShadowRun:
        """A new run for the type; a run already going for it ends as `replaced`."""
        now = time.time()
        run = ShadowRun(uuid.uuid4().hex, model_type, tag, share, actor, now, None, None, None)
        values = {column: getattr(run, column) for column in _RUN_COLUMNS}
        self.db.execute(
            [
                (
                    f"UPDATE {self.runs} SET stopped_at = :now, stopped_by = :actor, outcome = 'replaced' "
                    "WHERE model_type = :model_type AND stopped_at IS NULL",
                    {"now": now, "actor": actor, "model_type": model_type},
                ),
                (
                    f"INSERT INTO {self.runs} ({', '.join(_RUN_COLUMNS)}) "
                    f"VALUES ({', '.join(':' + c for c in _RUN_COLUMNS)})",
                    values,
                ),
            ]
        )
        return run

    def stop(self, model_type: str, actor: str, outcome: str = "stopped") -> ShadowRun:
        """End the type's running run (404 when none runs)."""
        rows = self.db.execute(
            [
                (
                    f"UPDATE {self.runs} SET stopped_at = :now, stopped_by = :actor, outcome = :outcome "
                    f"WHERE model_type = :model_type AND stopped_at IS NULL RETURNING {', '.join(_RUN_COLUMNS)}",
                    {"now": time.time(), "actor": actor, "outcome": outcome, "model_type": model_type},
                )
            ]
        )
        if not rows:
            raise NotFound(f"no shadow run is going for {model_type}")
        return ShadowRun(*rows[0])

    def running(self) -> dict[str, ShadowRun]:
        sql = f"SELECT {', '.join(_RUN_COLUMNS)} FROM {self.runs} WHERE stopped_at IS NULL"
        return {run.model_type: run for run in (ShadowRun(*row) for row in self.db.execute([(sql, {})]))}

    def latest(self, model_type: str) -> ShadowRun:
        sql = (
            f"SELECT {', '.join(_RUN_COLUMNS)} FROM {self.runs} WHERE model_type = :model_type "
            "ORDER BY started_at DESC LIMIT 1"
        )
        rows = self.db.execute([(sql, {"model_type": model_type})])
        if not rows:
            raise NotFound(f"no shadow run of {model_type} was ever started")
        return ShadowRun(*rows[0])

    def insert(self, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            values = ", ".join(":" + column for column in _RESULT_COLUMNS)
            sql = f"INSERT INTO {self.results} ({', '.join(_RESULT_COLUMNS)}) VALUES ({values})"
            self.db.execute_many([], sql, rows)

    def compared(self, run_id: str) -> int:
        sql = f"SELECT COUNT(*) FROM {self.results} WHERE run_id = :run"
        return int(self.db.execute([(sql, {"run": run_id})])[0][0])

    def report(self, run: ShadowRun, class_names: Sequence[str]) -> ShadowReport:
        """Agreement, confusion, score histograms and the latest disagreements of one run."""
        r, params = self.results, {"run": run.run_id}
        pairs = self.db.execute(
            [
                (
                    f"SELECT active_class, shadow_class, COUNT(*) FROM {r} WHERE run_id = :run "
                    "GROUP BY active_class, shadow_class",
                    params,
                )
            ]
        )
        histograms = {
            side: dict(
                self.db.execute([(f"SELECT {side}_bin, COUNT(*) FROM {r} WHERE run_id = :run GROUP BY 1", params)])
            )
            for side in ("active", "shadow")
        }
        tags = [
            row[0] for row in self.db.execute([(f"SELECT DISTINCT active_tag FROM {r} WHERE run_id = :run", params)])
        ]
        disagreeing = self.db.execute(
            [
                (
                    f"SELECT at, active_tag, active_class, shadow_class, active_score, shadow_score, flow_id, src_ip, "
                    f"features FROM {r} WHERE run_id = :run AND active_class <> shadow_class ORDER BY id DESC "
                    "LIMIT :n",
                    {**params, "n": SAMPLE},
                )
            ]
        )
        total = sum(int(n) for _, _, n in pairs)
        agreed = sum(int(n) for a, s, n in pairs if a == s)
        confusion = sorted(
            (ClassPair(active_class=class_names[a], shadow_class=class_names[s], flows=int(n)) for a, s, n in pairs),
            key=lambda pair: (-pair.flows, pair.active_class, pair.shadow_class),
        )
        return ShadowReport(
            run_id=run.run_id,
            model_type=run.model_type,
            shadow_tag=run.tag,
            active_tags=sorted(tags),
            share=run.share,
            running=run.stopped_at is None,
            outcome=run.outcome,
            started_by=run.started_by,
            started_at=run.started_at,
            stopped_at=run.stopped_at,
            flows_compared=total,
            agreement_rate=round(agreed / total, 6) if total else None,
            confusion=confusion,
            score_distribution=ScoreHistogram(
                edges=[round(i / BINS, 2) for i in range(BINS + 1)],
                active=[int(histograms["active"].get(i, 0)) for i in range(BINS)],
                shadow=[int(histograms["shadow"].get(i, 0)) for i in range(BINS)],
            ),
            disagreements=[
                Disagreement(
                    at=at,
                    active_tag=tag,
                    active_class=class_names[a],
                    shadow_class=class_names[s],
                    active_score=sa,
                    shadow_score=ss,
                    flow_id=flow_id,
                    src_ip=src_ip,
                    features=json.loads(features or "{}"),
                )
                for at, tag, a, s, sa, ss, flow_id, src_ip, features in disagreeing
            ],
        )


def predicted(model: LoadedModel, flows: FlowBatch) -> tuple[np.ndarray, np.ndarray]:
    """(classes, scores) as the served APIs decide them: the detector by its threshold with P(attack) as score,
    the classifier by argmax with its confidence."""
    proba = np.clip(model.predict_proba(flows.matrix(model)), 0.0, 1.0)
    if model.threshold is not None:
        return (proba[:, 1] >= model.threshold).astype(np.int64), proba[:, 1]
    classes = np.argmax(proba, axis=1)
    return classes, proba[np.arange(len(classes)), classes]


def take(flows: FlowBatch, rows: np.ndarray) -> FlowBatch:
    """The flows at `rows` (positions) as a batch of their own."""
    picked = rows.tolist()
    return FlowBatch(
        flows.kind,
        flows.values[rows],
        {name: [values[i] for i in picked] for name, values in flows.categories.items()},
        {name: [values[i] for i in picked] for name, values in flows.context.items()},
    )


class ShadowRunner:
    """One worker's part of the shadow runs: follow them, take offered batches, score a share, write the rows."""

    def __init__(
        self,
        store: ShadowStore | None,
        loader: Loader,
        *,
        queue_batches: int,
        on_shed: Callable[[str, int], None] = lambda kind, n: None,
        on_compared: Callable[[str, int, int], None] = lambda kind, agreed, disagreed: None,
        seed: int | None = None,
    ) -> None:
        self.store = store
        self.loader = loader
        self.on_shed, self.on_compared = on_shed, on_compared
        self._queue: queue.Queue[Offered] = queue.Queue(maxsize=queue_batches)
        self._runs: dict[str, tuple[ShadowRun, LoadedModel]] = {}  # kind -> the run and its loaded version
        self._failed: dict[str, str] = {}  # tag -> why it cannot be loaded here
        self._report_model: LoadedModel | None = None  # the version of the latest stopped run a report read
        self._rng = np.random.default_rng(seed)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # --- the request path: one dict lookup when no shadow runs, a put_nowait when one does --------------------
    def wants(self, kind: str) -> bool:
        return kind in self._runs

    def offer(self, batch: Offered) -> None:
        if batch.kind not in self._runs or not len(batch.flows):
            return
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            self.on_shed(batch.kind, len(batch.flows))

    def model_of(self, tag: str) -> LoadedModel:
        """The loaded version of a run: the one this worker scores with, else loaded (verified) and kept."""
        for run, model in self._runs.values():
            if run.tag == tag:
                return model
        with self._lock:
            if self._report_model is None or self._report_model.tag != tag:
                self._report_model = self.loader(tag)
            return self._report_model

    # --- following the shared runs ------------------------------------------------------------------------
    def sync(self) -> None:
        """Serve the runs recorded as going: load (verified) what is new, drop what stopped."""
        if self.store is None:  # no lifecycle database: no shadow runs
            return
        with self._lock:
            running = self.store.running()
            runs: dict[str, tuple[ShadowRun, LoadedModel]] = {}
            for model_type, run in running.items():
                kind = ROLES.get(model_type)
                if kind is None:
                    continue
                have = self._runs.get(kind)
                if have is not None and have[0].run_id == run.run_id:
                    runs[kind] = have
                    continue
                try:
                    runs[kind] = (run, self.loader(run.tag))
                except Exception as exc:  # a shadow that cannot load here is reported, never served
                    if self._failed.get(run.tag) != str(exc):
                        logger.error("shadow %s cannot be loaded: %s: %s", run.tag, type(exc).__name__, exc)
                    self._failed[run.tag] = str(exc)
            self._runs = runs

    def start(self, sync_seconds: float) -> None:
        for target, name in ((self._follow, "shadow-sync"), (self._work, "shadow-scoring")):
            thread = threading.Thread(target=target, args=(sync_seconds,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _follow(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                self.sync()
            except Exception as exc:  # the next poll retries
                logger.warning("shadow runs not synchronised: %s: %s", type(exc).__name__, exc)

    def _work(self, seconds: float) -> None:
        with contextlib.suppress(AttributeError, OSError):  # Linux: a thread's own nice value, so inference
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # keeps the CPU when both want it
        while not self._stop.is_set():
            try:
                batch = self._queue.get(timeout=seconds)
            except queue.Empty:
                continue
            try:
                self.score(batch)
            except Exception as exc:  # a failed batch is lost to the comparison, never to the served path
                logger.warning("shadow batch not compared: %s: %s", type(exc).__name__, exc)

    def score(self, batch: Offered) -> int:
        """Compare the run's version with the active one on the share of the batch drawn; rows written."""
        current = self._runs.get(batch.kind)
        if current is None:
            return 0
        run, model = current
        rows = np.flatnonzero(self._rng.random(len(batch.flows)) < run.share)
        if not len(rows):
            return 0
        flows = take(batch.flows, rows)
        classes, scores = predicted(model, flows)
        active_classes, active_scores = batch.classes[rows], batch.scores[rows]
        differ = (classes != active_classes).tolist()
        features = flows.feature_dicts()
        now = time.time()
        values = zip(
            active_classes.tolist(),
            classes.tolist(),
            active_scores.tolist(),
            scores.tolist(),
            _bin(active_scores).tolist(),
            _bin(scores).tolist(),
            flows.context["flow_id"],
            flows.context["src_ip"],
            differ,
            features,
            strict=True,
        )
        written = [
            (run.run_id, now, batch.active_tag, a, s, sa, ss, ba, bs, flow_id, src_ip, json.dumps(f) if d else None)
            for a, s, sa, ss, ba, bs, flow_id, src_ip, d, f in values
        ]
        self.store.insert(written)
        disagreed = sum(differ)
        self.on_compared(batch.kind, len(written) - disagreed, disagreed)
        return len(written)

    def close(self) -> None:
        """Stop scoring and close the shadow runs' connection (a SQLite file is checkpointed and left whole)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self.store is not None:
            self.store.db.close()


def feedback_accuracy(
    active: LoadedModel,
    shadow: LoadedModel,
    kind: Literal["threat", "attack"],
    labelled: Sequence[tuple[dict[str, Any], str]],
) -> FeedbackAccuracy:
    """Both versions on the flows analysts labelled (features as logged, label from the verdict)."""
    if not labelled:
        return FeedbackAccuracy(flows=0, active_accuracy=None, shadow_accuracy=None)
    flows = validate_flows(kind, [features for features, _ in labelled])
    truth = np.array([label for _, label in labelled])
    accuracy = {}
    for side, model in (("active", active), ("shadow", shadow)):
        classes, _ = predicted(model, flows)
        accuracy[side] = round(float(np.mean(np.array(model.class_names)[classes] == truth)), 6)
    return FeedbackAccuracy(flows=len(labelled), active_accuracy=accuracy["active"], shadow_accuracy=accuracy["shadow"])


class Shadows:
    """The shadow operations of the REST paths: start (verified, never the active version), stop, promote through
    the lifecycle's gate, report; each audited in the lifecycle trail."""

    def __init__(self, store: ShadowStore, runner: ShadowRunner, lifecycle: Lifecycle) -> None:
        self.store, self.runner, self.lifecycle = store, runner, lifecycle

    def start(self, model_id: str, share: float, actor: str) -> ShadowRun:
        model = self.lifecycle.model(model_id)  # a tag or the original's integer id
        tag, model_type = str(model.tag), model.tag.name
        active = self.lifecycle.store.active().get(model_type)
        if active is not None and active.tag == tag:
            raise Conflict(f"model {tag} is the active {model_type}: a shadow must be another version")
        note = self.lifecycle.store.notes().get(tag)
        if note is not None and note.retired:
            raise Conflict(f"model {tag} was retired; it cannot run in shadow")
        check_contract(ROLES[model_type], self.runner.loader(tag))  # hashes, reference cases, contract: 422
        run = self.store.start(model_type, tag, share, actor)
        self.lifecycle.audit(actor, "shadow_start", model_type=model_type, to_tag=tag, detail={"share": share})
        self.runner.sync()
        return run

    def stop(self, model_type: str, actor: str, outcome: str = "stopped") -> ShadowRun:
        run = self.store.stop(model_type, actor, outcome)
        self.lifecycle.audit(actor, f"shadow_{outcome}", model_type=model_type, from_tag=run.tag)
        self.runner.sync()
        return run

    def promote(self, model_type: str, actor: str, *, force: bool = False, reason: str | None = None) -> Any:
        """Activate the running shadow through the lifecycle's gate (409 when it refuses), then end the run."""
        run = self.store.running().get(model_type)
        if run is None:
            raise NotFound(f"no shadow run is going for {model_type}")
        entry = self.lifecycle.activate(
            run.tag, actor, force=force, reason=reason or f"promoted from shadow run {run.run_id}"
        )
        self.stop(model_type, actor, "promoted")
        return entry

    def report(self, model_type: str, labelled: Sequence[tuple[dict[str, Any], str]] | None = None) -> ShadowReport:
        run = self.store.latest(model_type)
        shadow = self.runner.model_of(run.tag)
        report = self.store.report(run, shadow.class_names)
        if labelled is not None:
            active = self.lifecycle.registry.active().by_role()[ROLES[model_type]]
            report.feedback = feedback_accuracy(active, shadow, ROLES[model_type], labelled)
        return report
