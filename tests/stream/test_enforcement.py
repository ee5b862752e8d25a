"""The stream worker's events are enforced only where NIDS_STREAM_ENFORCE says so, as a sensor token would be."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from nids.core.actions import AttackEvent
from nids.core.settings import Settings
from nids.healing.audit import SqliteAuditStore
from nids.healing.engine import NOT_AUTHORISED, HealingEngine
from nids.healing.executors import default_executors
from nids.models.registry import ModelRegistry
from nids.stream.worker import STREAM_CALLER, StreamWorker
from tests.healing.conftest import RecordingRunner, make_policy

EVENT = AttackEvent(attack_type="PortScan", confidence=0.99, src_ip="203.0.113.7")


def decide(tmp_path: Path, **settings: Any) -> Any:
    policy = make_policy(enforce=["alert_admin"], webhook={"url": "http://127.0.0.1:9/none"})
    engine = HealingEngine(
        policy,
        SqliteAuditStore(tmp_path / "audit.sqlite3"),
        default_executors(policy, RecordingRunner()),
        sweep_seconds=None,
    )

    async def build() -> StreamWorker:  # aiokafka's clients belong to a running event loop
        return StreamWorker(Settings(data_dir=tmp_path, **settings), ModelRegistry(), engine)

    try:
        (action,) = asyncio.run(build()).heal([EVENT])
        return action
    finally:
        engine.close()


def test_without_the_setting_nothing_the_stream_decides_is_enforced(tmp_path: Path) -> None:
    action = decide(tmp_path)
    assert action.action_type == "alert_admin" and action.mode == "dry_run"
    assert action.reason == NOT_AUTHORISED


def test_with_the_setting_the_stream_enforces_as_itself(tmp_path: Path) -> None:
    action = decide(tmp_path, stream_enforce=True)
    assert action.mode == "enforce" and action.action_params["authorised_by"] == STREAM_CALLER
