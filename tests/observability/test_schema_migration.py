"""The prediction log's schema version 2 (action_params, attack_probability) migrates a version-1 log in place."""

from __future__ import annotations

from pathlib import Path

from nids.core.database import open_database
from nids.observability.records import COLUMNS
from nids.observability.store import SCHEMA_VERSION, PredictionStore


def test_a_version_one_log_gains_the_new_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    store = PredictionStore(open_database(url), "m_")
    old = [c for c in COLUMNS if c not in ("action_params", "attack_probability")]
    store.db.execute(
        [
            *((f"ALTER TABLE m_predictions DROP COLUMN {c}", {}) for c in ("action_params", "attack_probability")),
            ("DELETE FROM m_predictions_schema WHERE version = 2", {}),
            (
                f"INSERT INTO m_predictions ({', '.join(old)}) VALUES ({', '.join(':' + c for c in old)})",
                {**dict.fromkeys(old), "created_at": 1.0, "source": "api", "batch_id": "b", "kind": "threat",
                 "is_attack": 1, "features": "{}", "action_type": "log_only"},
            ),
        ]
    )  # fmt: skip
    assert store.schema_version() == 1
    store.close()
    again = PredictionStore(open_database(url), "m_")  # a service of this version starting on the old log
    try:
        assert again.schema_version() == SCHEMA_VERSION == 2
        (kept,) = again.tail(0, 10)
        assert kept.self_healing_action.action_params == {} and kept.threat_prediction.attack_probability is None
        row = {**dict.fromkeys(COLUMNS), "created_at": 2.0, "source": "csv", "batch_id": "c", "kind": "threat"}
        row |= {"is_attack": 0, "features": "{}", "action_type": "log_only", "action_params": '{"service": "x"}'}
        (new_id,) = again.insert_returning([tuple(row[c] for c in COLUMNS)])
        assert again.get(new_id).self_healing_action.action_params == {"service": "x"}
    finally:
        again.close()
