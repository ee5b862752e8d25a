"""The board through which workers tell each other how many connections they hold (nids.serving.balance)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nids.serving.balance import Board, board_for_server


def test_a_worker_defers_only_to_one_holding_fewer_connections(tmp_path: Path) -> None:
    path = tmp_path / "board.i32"
    first, second = Board(path, 2, 0), Board(path, 2, 1)
    assert not first.should_defer(0), "balanced: take it"
    assert first.should_defer(1), "the other worker holds none"
    assert not second.should_defer(0)
    second.publish(1)
    assert not first.should_defer(1), "both hold one"
    second.publish(3)
    assert not first.should_defer(2) and second.should_defer(3)


def test_boards_of_servers_that_are_gone_are_removed(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"nids-workers-{gone.stdout.strip()}.i32"
    stale.write_bytes(b"\0" * 16)
    board = board_for_server(2, 0, tmp_path)
    assert not stale.exists() and board.path.exists()


def test_a_slot_outside_the_workers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="slot 2 of 2 workers"):
        Board(tmp_path / "board.i32", 2, 2)
