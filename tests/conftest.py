"""Shared fixtures. The whole test session uses a temporary BentoML store, never the user's ~/bentoml.

BentoML resolves BENTOML_HOME lazily (on first use of the store), so setting it here, when pytest imports
this file and before any test touches the store, isolates every test, and every subprocess a test starts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# one store per session, even if this module is imported twice (as `conftest` and as `tests.conftest`)
_STORE = Path(os.environ.setdefault("NIDS_TEST_SESSION_STORE", tempfile.mkdtemp(prefix="nids-test-bentoml-")))
os.environ["BENTOML_HOME"] = str(_STORE)


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    """Each test reads the settings of its own environment (get_settings caches them per process)."""
    from nids.core.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_STORE, ignore_errors=True)


@dataclass(frozen=True)
class TrainedModels:
    """Both models trained on small real slices into the session's temporary store."""

    home: Path
    threat_tag: str
    attack_tag: str


# small real slices: a few thousand rows, small forests (seconds on 2 cores)
THREAT_SLICE = {"max_train_rows": 4000, "max_test_rows": 2000, "n_estimators": 20, "max_depth": 10}
ATTACK_SLICE = {"max_rows_per_class": 150, "n_estimators": 20, "max_depth": 12}


@pytest.fixture(scope="session")
def training_slices() -> dict[str, dict[str, int]]:
    """Config overrides for training on small real slices: {"threat": {...}, "attack": {...}}."""
    return {"threat": dict(THREAT_SLICE), "attack": dict(ATTACK_SLICE)}


@pytest.fixture(scope="session")
def model_store() -> TrainedModels:
    from bentoml._internal.configuration.containers import BentoMLContainer

    from training.attack import AttackConfig, train_attack
    from training.threat import ThreatConfig, train_threat

    assert Path(BentoMLContainer.bentoml_home.get()) == _STORE, "BentoML store is not the test session's"
    threat = train_threat(ThreatConfig(reports_dir=None, **THREAT_SLICE))
    attack = train_attack(AttackConfig(reports_dir=None, **ATTACK_SLICE))
    return TrainedModels(home=_STORE, threat_tag=threat.model.tag, attack_tag=attack.model.tag)


_AUTO_METADATA = {"files", "library_versions", "git_commit", "created_at", "reference_case_count", "inference_forms"}


def clone_model_version(
    tag: str,
    name: str,
    *,
    reference_cases=None,
    drop_metadata: tuple[str, ...] = (),
    metadata: dict | None = None,
) -> str:
    """Re-save a stored model under `name` (a new version; optionally other reference cases or metadata, e.g.
    edited metrics) into the current store. Returns the copy's tag."""
    import joblib

    from nids.models.artifacts import ESTIMATOR_FILE, ONNX_FILE, get_store_model, load_reference_cases, save_model

    source = get_store_model(tag)
    onnx = Path(source.path_of(ONNX_FILE))
    kept = {k: v for k, v in source.info.metadata.items() if k not in _AUTO_METADATA and k not in drop_metadata}
    model = save_model(
        name,
        estimator=joblib.load(source.path_of(ESTIMATOR_FILE)),
        metadata={**kept, **(metadata or {})},
        reference_cases=load_reference_cases(source) if reference_cases is None else reference_cases,
        onnx_model=onnx.read_bytes() if onnx.is_file() else None,
    )
    return str(model.tag)


@pytest.fixture
def clone_model(model_store: TrainedModels):
    """Factory: re-save a trained model under a new name (optionally with other reference cases), so a test may
    tamper with the copy without touching the session's models. Returns the copy's tag."""
    return clone_model_version
