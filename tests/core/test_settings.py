"""Where the service keeps its state: relative on a host, an absolute volume path inside a container."""

from __future__ import annotations

from pathlib import Path

import pytest

from nids.core.settings import CONTAINER_DATA_DIR, Settings, sqlite_path


def test_the_data_dir_is_relative_on_a_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENTOML_CONTAINERIZED", raising=False)
    monkeypatch.delenv("NIDS_DATA_DIR", raising=False)
    assert Settings(_env_file=None).data_dir == Path("var")


def test_a_container_keeps_its_state_at_an_absolute_volume_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENTOML_CONTAINERIZED", "true")  # set by every image `bentoml containerize` builds
    monkeypatch.delenv("NIDS_DATA_DIR", raising=False)
    settings = Settings(_env_file=None)
    assert settings.data_dir == CONTAINER_DATA_DIR == Path("/var/lib/nids")
    assert sqlite_path(settings.audit_url) == Path("/var/lib/nids/healing-audit.sqlite3")


def test_nids_data_dir_still_wins_in_a_container(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENTOML_CONTAINERIZED", "true")
    monkeypatch.setenv("NIDS_DATA_DIR", "/srv/nids")
    assert Settings(_env_file=None).data_dir == Path("/srv/nids")


@pytest.mark.parametrize(
    ("cores", "quota", "workers"),
    [
        (1, None, 1),
        (2, None, 2),
        (16, None, 16),
        (16, "max 100000", 16),
        (16, "150000 100000", 2),
        (2, "50000 100000", 1),
    ],
)
def test_one_worker_per_usable_core(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cores: int, quota: str | None, workers: int
) -> None:
    """The CPUs the process may run on, capped by a container's CPU quota (`docker run --cpus 1.5`: 2 workers)."""
    monkeypatch.delenv("NIDS_WORKERS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    cpu_max = tmp_path / "cpu.max"
    if quota is not None:
        cpu_max.write_text(quota + "\n")
    monkeypatch.setattr("nids.core.settings.CPU_QUOTA_FILE", cpu_max)
    assert Settings(_env_file=None).workers == workers
