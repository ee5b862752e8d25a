"""The lifecycle state (SQLite, PostgreSQL for concurrent schema creation) and the gate metric, in-process."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from nids.models.lifecycle import gate_metric
from nids.models.state import Heartbeat, StateUnavailable, open_lifecycle_store

from ..healing.conftest import PG_URL, postgres_reachable


def test_switch_is_a_compare_and_set_and_keeps_the_history(tmp_path: Path) -> None:
    store = open_lifecycle_store(f"sqlite:///{tmp_path / 'state.sqlite3'}", "t_")
    try:
        assert store.initialise("threat_detector", "threat_detector:a", "initial")
        assert not store.initialise("threat_detector", "threat_detector:other", "a second worker starting")
        state = store.active()["threat_detector"]
        assert (state.tag, state.history, state.activated_by) == ("threat_detector:a", (), "startup")
        assert store.switch(state, "threat_detector:b", [state.tag], "admin", "better")
        assert not store.switch(state, "threat_detector:c", [state.tag], "admin", "stale view: refused")
        now = store.active()["threat_detector"]
        assert (now.tag, now.history, now.reason, now.generation) == (
            "threat_detector:b",
            ("threat_detector:a",),
            "better",
            2,
        )
        store.record(
            "admin", "activate", model_type="threat_detector", from_tag="a", to_tag="b", detail={"forced": False}
        )
        (event,) = store.events("threat_detector")
        assert (event.actor, event.detail) == ("admin", {"forced": False})
        store.note("threat_detector:b", description="first")
        store.note("threat_detector:b", retired=True)
        note = store.notes()["threat_detector:b"]
        assert (note.description, note.retired) == ("first", True)
    finally:
        store.close()


def test_gate_metric_of_each_type() -> None:
    threat = gate_metric("threat_detector", {"metrics": {"kddtest": {"f1": 0.8}}})
    attack = gate_metric(
        "attack_classifier", {"metrics": {"holdout": {"a": {"macro_f1": 0.9}, "b": {"macro_f1": 0.7}}}}
    )
    assert (threat.name, threat.value) == ("kddtest.f1", 0.8)
    assert attack.value is not None and abs(attack.value - 0.8) < 1e-9
    assert gate_metric("threat_detector", {}).value is None


def test_integer_ids_are_stable_aliases_never_reused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.sqlite3'}"
    store = open_lifecycle_store(url, "t_")
    try:
        assert store.aliases(["threat_detector:a", "attack_classifier:b"]) == {
            "threat_detector:a": 1,
            "attack_classifier:b": 2,
        }
        assert store.aliases(["attack_classifier:b", "threat_detector:c"])["threat_detector:c"] == 3
        store.forget("threat_detector:a")  # a version removed from the store keeps its id, unused
        assert store.tag_of(1) == "threat_detector:a" and store.tag_of(4) is None
    finally:
        store.close()
    reopened = open_lifecycle_store(url, "t_")  # another worker, or a restart: the same ids
    try:
        assert reopened.aliases(["threat_detector:d"]) == {
            "threat_detector:a": 1,
            "attack_classifier:b": 2,
            "threat_detector:c": 3,
            "threat_detector:d": 4,
        }
    finally:
        reopened.close()


def test_a_corrupt_row_is_named_and_reading_recovers_once_it_is_fixed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.sqlite3'}"
    store = open_lifecycle_store(url, "t_")
    try:
        assert store.initialise("threat_detector", "threat_detector:a", "initial")
        store.db.execute([("UPDATE t_active SET history = 'not json'", {})])
        with pytest.raises(StateUnavailable, match=r"row 'threat_detector' of table t_active is corrupt"):
            store.active()
        store.db.execute([("UPDATE t_active SET history = '[]'", {})])
        assert store.active()["threat_detector"].tag == "threat_detector:a"
    finally:
        store.close()


def test_a_state_that_cannot_be_opened_names_the_database_and_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the data directory should be")
    with pytest.raises(StateUnavailable, match=r"cannot be opened at sqlite:///.*not-a-directory.*NIDS_DATA_DIR"):
        open_lifecycle_store(f"sqlite:///{blocker / 'state.sqlite3'}", "t_", "NIDS_DATA_DIR")


def test_a_package_is_kept_once_and_checked_when_read(tmp_path: Path) -> None:
    store = open_lifecycle_store(f"sqlite:///{tmp_path / 'state.sqlite3'}", "t_")
    try:
        assert store.store_package("threat_detector:a", b"signed bytes", "admin@r1")
        assert not store.store_package("threat_detector:a", b"other bytes", "admin@r2")  # the first one stays
        assert store.package("threat_detector:a") == b"signed bytes"
        assert store.package("threat_detector:b") is None
        assert store.packages()["threat_detector:a"].stored_by == "admin@r1"
        store.db.execute([("UPDATE t_packages SET package = :p", {"p": b"altered"})])
        with pytest.raises(StateUnavailable, match="does not match its sha256"):
            store.package("threat_detector:a")
    finally:
        store.close()


def test_heartbeats_are_one_row_per_process_and_old_ones_are_forgotten(tmp_path: Path) -> None:
    store = open_lifecycle_store(f"sqlite:///{tmp_path / 'state.sqlite3'}", "t_")
    try:
        served = {"threat_detector": "threat_detector:a"}
        store.heartbeat(Heartbeat("r1", 1, served, True, None, 100.0, 200.0))
        store.heartbeat(Heartbeat("r1", 1, served, False, "cannot fetch", 100.0, 300.0))
        store.heartbeat(Heartbeat("r2", 1, served, True, None, 100.0, 50.0))
        assert [(b.replica_id, b.in_sync, b.error) for b in store.heartbeats()] == [
            ("r1", False, "cannot fetch"),
            ("r2", True, None),
        ]
        store.forget_replicas(older_than=100.0)
        assert [b.replica_id for b in store.heartbeats()] == ["r1"]
    finally:
        store.close()


def test_replicas_creating_the_tables_on_an_empty_postgresql_at_once_all_succeed() -> None:
    """Two workers creating the same tables at once raised UniqueViolation on pg_type; the advisory lock serialises."""
    if reason := postgres_reachable():
        pytest.skip(reason)
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def start() -> None:
        barrier.wait()
        try:
            open_lifecycle_store(PG_URL, prefix).close()
        except BaseException as error:  # collected: the assertion below names them
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    store = open_lifecycle_store(PG_URL, prefix)
    tables = [store.active_table, store.versions_table, store.events_table, store.aliases_table]
    tables += [store.packages_table, store.replicas_table]
    store.db.execute([(f"DROP TABLE IF EXISTS {', '.join(tables)}", {})])
    store.close()
    assert errors == []
