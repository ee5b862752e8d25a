"""Shared fixtures. The whole test session uses temporary BentoML stores, never the user's ~/bentoml.

BentoML resolves BENTOML_HOME lazily (on first use of the store), so setting it here, when pytest imports
this file and before any test touches the store, isolates every test, and every subprocess a test starts.

Under pytest-xdist (`make test` runs `-n 2 --dist loadgroup`) every worker process has a store of its own
(tests add and delete versions in their worker's store, unseen by the others) and the models are trained once
per session: the first worker to ask trains them under a file lock, the others copy them into their store.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# one directory per session, even if this module is imported twice (as `conftest` and as `tests.conftest`);
# the xdist workers inherit it from the controller's environment, and only the process that made it removes it
if "NIDS_TEST_SESSION_DIR" not in os.environ:
    os.environ["NIDS_TEST_SESSION_DIR"] = tempfile.mkdtemp(prefix="nids-test-session-")
    os.environ["NIDS_TEST_SESSION_OWNER"] = str(os.getpid())
_SESSION = Path(os.environ["NIDS_TEST_SESSION_DIR"])
_STORE = _SESSION / os.environ.get("PYTEST_XDIST_WORKER", "main") / "bentoml"
_STORE.mkdir(parents=True, exist_ok=True)
os.environ["BENTOML_HOME"] = str(_STORE)
_TRAINED = _SESSION / "trained"  # the session's models, trained once, and their tags


_LOST_GROUPS = pytest.StashKey[str]()


@pytest.hookimpl(wrapper=True)  # its first half before xdist's own hook reads the groups, its second half after
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """How `make test` spreads the tests over xdist workers (`--dist loadgroup --no-loadscope-reorder`):
    - a module's tests run on one worker, so that its module-scoped fixtures (a server, a broker) start once;
      a module marked `spread` shares no such fixture, and its tests go to whichever worker is free;
    - modules with a `long_running` test are handed out first, so that no long test starts last and runs alone.
    xdist groups by a suffix it writes into each node id; pytest 9.2 ignores that write (pytest-dev/pytest-xdist#1386,
    hence `pytest<9.2` in pyproject.toml), and every test then went to any worker: module fixtures started twice,
    tests that build on the one before failed every run. Should an upgrade lose the groups again, every test fails
    at setup saying so (pytest_runtest_setup below).
    """
    for item in items:
        if item.get_closest_marker("xdist_group") is None and item.get_closest_marker("spread") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    long_modules = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("long_running")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in long_modules)  # stable: modules stay together
    result = yield
    if getattr(config.option, "loadgroup", False):  # set on xdist workers under --dist loadgroup only
        lost = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
        if lost:
            config.stash[_LOST_GROUPS] = (
                f"pytest-xdist's --dist loadgroup lost the groups of {len(lost)} tests (e.g. {lost[0]}): their modules "
                "would be split over workers (pytest-dev/pytest-xdist#1386); install pytest<9.2 (make install)"
            )
    return result


def pytest_runtest_setup(item: pytest.Item) -> None:
    if lost := item.config.stash.get(_LOST_GROUPS, ""):
        pytest.fail(lost, pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI (CI=true, set by .ci/run) a skipped test fails: CI installs every tool the tests need, so a skip
    there means a tool is missing, which must not pass unnoticed."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI", "").lower() == "true" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every tool the tests need is installed: {reason}"


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    """Each test reads the settings of its own environment (get_settings caches them per process)."""
    from nids.core.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def pytest_unconfigure(config: pytest.Config) -> None:
    if os.environ.get("NIDS_TEST_SESSION_OWNER") == str(os.getpid()):  # the xdist controller, after its workers
        shutil.rmtree(_SESSION, ignore_errors=True)


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

    assert Path(BentoMLContainer.bentoml_home.get()) == _STORE, "BentoML store is not the test session's"
    tags = _TRAINED / "tags.json"
    with (_SESSION / "trained.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if tags.is_file():
            shutil.copytree(_TRAINED, _STORE / "models", dirs_exist_ok=True, ignore=shutil.ignore_patterns("tags.json"))
        else:
            from training.attack import AttackConfig, train_attack
            from training.threat import ThreatConfig, train_threat

            threat = train_threat(ThreatConfig(reports_dir=None, **THREAT_SLICE))
            attack = train_attack(AttackConfig(reports_dir=None, **ATTACK_SLICE))
            for tag in (threat.model.tag, attack.model.tag):
                name = tag.split(":")[0]
                shutil.copytree(_STORE / "models" / name, _TRAINED / name)
            tags.write_text(json.dumps({"threat": threat.model.tag, "attack": attack.model.tag}))
    trained = json.loads(tags.read_text())
    return TrainedModels(home=_STORE, threat_tag=trained["threat"], attack_tag=trained["attack"])


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
