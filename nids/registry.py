"""The models a process serves: one immutable pair, swapped atomically.

Requests take one snapshot (`registry.active()`) and use it throughout, so a later version switch (model
lifecycle) never mixes two versions inside a request. A failed load never replaces a working pair; when
nothing is active the registry knows why, and that reason is what /readyz and the APIs report.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nids.validation import ModelsUnavailable

if TYPE_CHECKING:
    from nids.artifacts import LoadedModel

Loader = Callable[[str], "LoadedModel"]


@dataclass(frozen=True)
class ActiveModels:
    threat: LoadedModel
    attack: LoadedModel

    def by_role(self) -> dict[str, LoadedModel]:
        return {"threat": self.threat, "attack": self.attack}


class ModelRegistry:
    """Holds the active (threat, attack) pair, or the reason there is none."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: ActiveModels | None = None
        self._reason = "models are not loaded yet"

    def load(self, threat_tag: str, attack_tag: str, loader: Loader) -> ActiveModels:
        """Load both tags with `loader` (verifies hashes and reference cases) and activate the pair.

        The loader's exception propagates; when nothing was active, its message becomes the unready reason.
        """
        try:
            models = ActiveModels(threat=loader(threat_tag), attack=loader(attack_tag))
        except Exception as exc:
            with self._lock:
                if self._active is None:
                    self._reason = f"{type(exc).__name__}: {exc}"
            raise
        self.activate(models)
        return models

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

    def categories(self, feature: str) -> list[str] | None:
        """Categories of a threat feature in the active model (None when no model is active)."""
        models = self._active
        return None if models is None else models.threat.encoders.get(feature)


# The pair this process serves; the service loads into it at startup.
REGISTRY = ModelRegistry()
