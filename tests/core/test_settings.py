"""Where the service keeps its state: relative on a host, an absolute volume path inside a container."""

from __future__ import annotations

from pathlib import Path

import pytest

from nids.core.settings import CONTAINER_DATA_DIR, SERVER_MEMORY_MIB, WORKER_MEMORY_MIB, Settings, sqlite_path


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


@pytest.fixture
def cgroup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty cgroup folder in place of /sys/fs/cgroup (write cpu.max, memory.max, ... into it)."""
    monkeypatch.delenv("NIDS_WORKERS", raising=False)
    monkeypatch.delenv("NIDS_WORKER_MEMORY_MIB", raising=False)
    monkeypatch.setattr("nids.core.settings.CGROUP", tmp_path)
    return tmp_path


def limit(cgroup: Path, files: dict[str, str]) -> None:
    for name, value in files.items():
        (cgroup / name).parent.mkdir(parents=True, exist_ok=True)
        (cgroup / name).write_text(value + "\n")


@pytest.mark.parametrize(
    ("cores", "quota", "workers"),
    [
        (1, {}, 1),
        (2, {}, 2),
        (16, {}, 16),
        (16, {"cpu.max": "max 100000"}, 16),
        (16, {"cpu.max": "150000 100000"}, 2),
        (2, {"cpu.max": "50000 100000"}, 1),
        (16, {"cpu/cpu.cfs_quota_us": "150000", "cpu/cpu.cfs_period_us": "100000"}, 2),  # cgroup v1
        (16, {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, 16),
    ],
)
def test_one_worker_per_usable_core(
    monkeypatch: pytest.MonkeyPatch, cgroup: Path, cores: int, quota: dict[str, str], workers: int
) -> None:
    """The CPUs the process may run on, capped by a container's CPU quota (`docker run --cpus 1.5`: 2 workers)."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    limit(cgroup, quota)
    assert Settings(_env_file=None).workers == workers


MIB = 2**20


@pytest.mark.parametrize(
    ("memory", "workers"),
    [
        ({}, 4),
        ({"memory.max": "max"}, 4),
        ({"memory.max": str((SERVER_MEMORY_MIB + 2 * WORKER_MEMORY_MIB) * MIB)}, 2),
        ({"memory.max": str((SERVER_MEMORY_MIB + 2 * WORKER_MEMORY_MIB) * MIB - 1)}, 1),
        ({"memory.max": str(64 * MIB)}, 1),  # never none
        ({"memory/memory.limit_in_bytes": str(1536 * MIB)}, 1),  # cgroup v1; the old 1536 Mi limit: 4 OOMed
        ({"memory/memory.limit_in_bytes": "9223372036854771712"}, 4),  # cgroup v1 without a limit
    ],
)
def test_no_more_workers_than_fit_the_memory_limit(
    monkeypatch: pytest.MonkeyPatch, cgroup: Path, memory: dict[str, str], workers: int
) -> None:
    """A worker killed for memory drops its requests and capacity: the default fits the container's limit."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(4)))
    limit(cgroup, memory)
    assert Settings(_env_file=None).workers == workers


def test_the_memory_per_worker_and_an_explicit_count_are_settings(
    monkeypatch: pytest.MonkeyPatch, cgroup: Path
) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    limit(cgroup, {"memory.max": str((SERVER_MEMORY_MIB + 3 * 256) * MIB)})
    monkeypatch.setenv("NIDS_WORKER_MEMORY_MIB", "256")
    assert Settings(_env_file=None).workers == 3
    monkeypatch.setenv("NIDS_WORKERS", "6")  # an explicit count is the operator's call
    assert Settings(_env_file=None).workers == 6
