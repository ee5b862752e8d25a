"""The models a process serves: one immutable pair, swapped atomically.

Requests take one snapshot (`registry.active()`) and use it throughout, so a later version switch (model
lifecycle) never mixes two versions inside a request. A failed load never replaces a working pair; when
nothing is active the registry knows why, and that reason is what /readyz and the APIs report.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from nids.core.errors import ModelsUnavailable
from nids.core.features import ATTACK_CLASSES, ATTACK_FEATURES, THREAT_CLASSES, THREAT_FEATURES
from nids.core.model import ActiveModels
from nids.models.artifacts import ModelLoadError

if TYPE_CHECKING:
    from nids.core.model import LoadedModel

Loader = Callable[[str], "LoadedModel"]
# what the request schemas assume of each role: (feature names in order, class names in order)
CONTRACTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "threat": (THREAT_FEATURES, THREAT_CLASSES),
    "attack": (ATTACK_FEATURES, ATTACK_CLASSES),
}


def check_contract(role: str, model: LoadedModel) -> LoadedModel:
    """The model, if its features and classes are the ones the API serves for `role`; ModelLoadError if not."""
    features, classes = CONTRACTS[role]
    if model.feature_names != features or model.class_names != classes:
        raise ModelLoadError(
            f"model {model.tag} cannot serve as the {role} model: its features or classes differ from the "
            f"{role} contract in nids/core/features.py ({len(model.feature_names)} features, {len(model.class_names)} "
            f"classes; expected {len(features)} and {len(classes)})"
        )
    return model


class ModelRegistry:
    """Holds the active (threat, attack) pair, or the reason there is none."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: ActiveModels | None = None
        self._reason = "models are not loaded yet"
        # why this process does not serve the versions recorded as active ('' when it does); set by the lifecycle
        self.mismatch = ""
        # since when (time.monotonic()) the lifecycle has seen a recorded version this process does not serve yet
        self.behind_since: float | None = None
        self.sync_deadline = 60.0  # seconds a process may take to serve a recorded version before it is unready

    def load(self, threat_tag: str, attack_tag: str, loader: Loader) -> ActiveModels:
        """Load both tags with `loader` (verifies hashes and reference cases) and activate the pair.

        The loader's exception propagates; when nothing was active, its message becomes the unready reason.
        """
        try:
            models = ActiveModels(
                threat=check_contract("threat", loader(threat_tag)),
                attack=check_contract("attack", loader(attack_tag)),
            )
        except Exception as exc:
            with self._lock:
                if self._active is None:
                    self._reason = f"{type(exc).__name__}: {exc}"
            raise
        self.activate(models)
        return models

    def unavailable(self, reason: str) -> None:
        """Why nothing can be served yet (the lifecycle state cannot be read), while nothing is served."""
        with self._lock:
            if self._active is None:
                self._reason = reason

    def unready_reason(self) -> str:
        """Why /readyz must answer 503 ('' when ready): nothing served, a recorded version that cannot be served
        here, or one still not served NIDS_MODEL_SYNC_DEADLINE_SECONDS after this process first saw it."""
        if self._active is None:
            return f"no verified models are being served: {self._reason}"
        if self.mismatch:
            return f"not serving the versions recorded as active: {self.mismatch}"
        since = self.behind_since
        if since is not None and time.monotonic() - since > self.sync_deadline:
            return (
                f"not serving the versions recorded as active {time.monotonic() - since:.0f} s after they were "
                f"recorded (NIDS_MODEL_SYNC_DEADLINE_SECONDS={self.sync_deadline:g})"
            )
        return ""

    def activate(self, models: ActiveModels) -> None:
        with self._lock:
            self._active = models
            self._reason = ""

    @property
    def current(self) -> ActiveModels | None:
        return self._active

    def active(self) -> ActiveModels:
        """The pair to serve this request with; ModelsUnavailable (503) naming the reason when there is none."""
        models = self._active
        if models is None:
            raise ModelsUnavailable(f"no verified models are being served: {self._reason}")
        return models

    @property
    def ready(self) -> bool:
        return self._active is not None

    @property
    def reason(self) -> str:
        """Why the registry is not ready ('' when it is)."""
        return self._reason


# The pair this process serves; the service loads into it at startup.
REGISTRY = ModelRegistry()
