"""The analyst's routes on a logged prediction (issue 21), part of the /api/v1 observability app:

- `POST /api/v1/predictions/{id}/feedback`: the analyst's verdict (true/false positive/negative), optionally the
  right attack type and a note; who (the token's label) and when are recorded, the write is in the lifecycle
  audit trail; posting again replaces the verdict. 404 for an id the log does not hold.
- `GET /api/v1/predictions/{id}/feedback`: the verdict given (404 if none).
- `GET /api/v1/predictions/{id}/explanation?top=N`: why the version that made the prediction scored it so (its
  features from the log, explained by nids.models.explain), for the dashboard.

Statistics per model version from the verdicts are part of GET /api/v1/predictions/stats and of /metrics
(`nids_feedback_*`, refreshed from the shared table after each verdict and every REFRESH_SECONDS).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from functools import cache
from typing import Annotated

from fastapi import Depends, Query

from nids.core import pipeline
from nids.core.columns import validate_flows
from nids.core.errors import NotFound, Unavailable
from nids.core.model import LoadedModel
from nids.core.schemas import MAX_EXPLAINED_FEATURES, Explanation
from nids.models.artifacts import load_model
from nids.models.lifecycle import Lifecycle
from nids.observability.feedback import FeedbackStore
from nids.observability.feedback_schemas import VERDICTS, Feedback, FeedbackCounts, FeedbackIn
from nids.observability.schemas import TimeWindow
from nids.serving.auth import ANONYMOUS, Caller, RequestCaller, Unauthenticated
from nids.serving.observability import Observability
from nids.serving.routes.observability import api as observability_api
from nids.serving.routes.observability import get_prediction

logger = logging.getLogger("nids.feedback")
router = observability_api  # the routes join the /api/v1 app of nids.serving.routes.observability
REFRESH_SECONDS = 15.0
_bound: dict[str, object] = {}
_closing = threading.Event()


def bind(observability: Observability, lifecycle: Lifecycle) -> None:
    """Called by the service at startup (in the worker): the log, the lifecycle audit trail, the gauges' thread."""
    _bound.update(observability=observability, lifecycle=lifecycle)
    metrics = feedback_metrics()
    threading.Thread(target=metrics.refresh_loop, args=(observability,), name="feedback-gauges", daemon=True).start()


def close() -> None:
    """Stop the gauges' thread (the service's shutdown)."""
    _closing.set()


def bound_observability() -> Observability | None:
    observability = _bound.get("observability")
    return observability if isinstance(observability, Observability) else None


def _observability() -> Observability:
    observability = bound_observability()
    if observability is None:
        raise Unavailable("the service is still starting")
    return observability


def analyst_caller(caller: RequestCaller) -> Caller:
    """Who gives a verdict: a token's label (viewer scope or above), never an anonymous caller of open mode."""
    if caller is None or caller.label == ANONYMOUS:
        raise Unauthenticated(
            "giving a verdict needs a token (viewer scope or above): send 'Authorization: Bearer <token>'"
        )
    return caller


Analyst = Annotated[Caller, Depends(analyst_caller)]


@router.post("/predictions/{prediction_id}/feedback")
def give_feedback(prediction_id: int, feedback: FeedbackIn, caller: Analyst) -> Feedback:
    """Record the analyst's verdict on a logged prediction (replacing an earlier one); audited."""
    observability = _observability()
    store: FeedbackStore = observability.require(observability.feedback)
    given = store.give(get_prediction(prediction_id), feedback, caller.label, time.time())
    lifecycle = _bound.get("lifecycle")
    if isinstance(lifecycle, Lifecycle):
        detail = {"prediction_id": prediction_id, "verdict": given.verdict, "attack_type": given.attack_type}
        lifecycle.audit(caller.label, "prediction_feedback", to_tag=given.model_version, detail=detail)
    metrics = feedback_metrics()
    metrics.given.labels(given.kind, given.verdict).inc()
    metrics.publish(store.stats(TimeWindow(), time.time()))
    return given


@router.get("/predictions/{prediction_id}/feedback")
def get_feedback(prediction_id: int) -> Feedback:
    given = _observability().require(_observability().feedback).get(prediction_id)
    if given is not None:
        return given
    raise NotFound(f"no feedback on prediction {prediction_id}")


@router.get("/predictions/{prediction_id}/explanation")
def explain_prediction(
    prediction_id: int, top: Annotated[int, Query(ge=1, le=MAX_EXPLAINED_FEATURES)] = 5
) -> Explanation:
    """The features that moved a logged prediction's score most, by the model version that made it."""
    observability = _observability()
    prediction = get_prediction(prediction_id)
    version = (
        prediction.attack_prediction.model_version
        if prediction.kind == "attack" and prediction.attack_prediction is not None
        else prediction.threat_prediction.model_version
    )
    model = _model(observability, prediction.kind, version)
    flows = validate_flows(prediction.kind, [prediction.features or {}])
    return pipeline.explain_predicted(model, flows, top)[0]


_loaded: OrderedDict[str, LoadedModel] = OrderedDict()
_loaded_lock = threading.Lock()
KEPT_VERSIONS = 4


def _model(observability: Observability, kind: str, version: str | None) -> LoadedModel:
    """The version that made a prediction: the served one, or loaded (verified) from the store and kept."""
    served = observability.registry.active().by_role()[kind]
    if version is None or version == served.tag:
        return served
    with _loaded_lock:
        if version not in _loaded:
            _loaded[version] = load_model(version)
            while len(_loaded) > KEPT_VERSIONS:
                _loaded.popitem(last=False)
        return _loaded[version]


# --- Prometheus --------------------------------------------------------------------------------------------
class FeedbackMetrics:
    def __init__(self) -> None:
        import prometheus_client as prom  # deferred: see nids.serving.metrics

        self.given = prom.Counter(
            "nids_feedback", "Analysts' verdicts given, by flow kind and verdict", ["kind", "verdict"]
        )
        for kind in ("threat", "attack"):  # exported at 0 before any verdict
            for verdict in VERDICTS:
                self.given.labels(kind, verdict)
        self.verdicts = prom.Gauge(
            "nids_feedback_verdicts",
            "Verdicts on each model version's predictions (shared table), by verdict",
            ["model_version", "verdict"],
            multiprocess_mode="livemax",
        )
        self.rates: dict[str, Callable[[FeedbackCounts], float | None]] = {
            "precision": lambda c: c.precision,
            "false_positive_rate": lambda c: c.false_positive_rate,
            "false_negative_rate": lambda c: c.false_negative_rate,
        }
        self.gauges = {
            name: prom.Gauge(
                f"nids_feedback_{name}",
                f"{name.replace('_', ' ')} of each model version from analysts' verdicts",
                ["model_version"],
                multiprocess_mode="livemax",
            )
            for name in self.rates
        }

    def publish(self, stats: list[FeedbackCounts]) -> None:
        for counts in stats:
            for verdict in VERDICTS:
                self.verdicts.labels(counts.model_version, verdict).set(getattr(counts, verdict))
            for name, rate in self.rates.items():
                value = rate(counts)
                if value is not None:
                    self.gauges[name].labels(counts.model_version).set(value)

    def refresh_loop(self, observability: Observability) -> None:
        """Every REFRESH_SECONDS, the gauges from the shared table (other workers' and replicas' verdicts too)."""
        while not _closing.wait(REFRESH_SECONDS):
            if observability.feedback is None:  # the log is not open (yet): nothing to publish
                continue
            try:
                self.publish(observability.feedback.stats(TimeWindow(), time.time()))
            except Exception as error:  # the next round tries again
                logger.warning("feedback gauges not updated: %s: %s", type(error).__name__, error)


@cache
def feedback_metrics() -> FeedbackMetrics:
    return FeedbackMetrics()
