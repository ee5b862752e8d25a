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


@pytest.mark.parametrize(("cores", "workers"), [(None, 1), (1, 1), (2, 2), (4, 4), (16, 16)])
def test_several_workers_where_the_machine_has_the_cores(
    monkeypatch: pytest.MonkeyPatch, cores: int | None, workers: int
) -> None:
    monkeypatch.delenv("NIDS_WORKERS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert Settings(_env_file=None).workers == workers
