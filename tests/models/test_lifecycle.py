"""The lifecycle state (SQLite) and the gate metric, in-process."""

from __future__ import annotations

from pathlib import Path

from nids.models.lifecycle import gate_metric
from nids.models.state import open_lifecycle_store


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
