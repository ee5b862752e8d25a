"""The board through which workers tell each other how many connections they hold (nids.serving.balance)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from nids.serving.balance import BOARD_FILE, Board, board_for_server
from nids.serving.rundir import server_dir


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


def test_the_board_lives_in_the_private_directory_of_its_server(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = server_dir(tmp_path, int(gone.stdout))
    (stale / BOARD_FILE).write_bytes(b"\0" * 16)
    directory = server_dir(tmp_path)
    board = board_for_server(2, 0, directory)
    assert not stale.exists(), "the directory of a server that is gone is removed"
    assert board.path.parent == directory and stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(directory.parent.stat().st_mode) == 0o700


def test_a_planted_symlink_is_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    directory = server_dir(tmp_path)
    (directory / BOARD_FILE).symlink_to(target)
    with pytest.raises(OSError):
        board_for_server(2, 0, directory)
    assert target.read_bytes() == b"precious"


@pytest.mark.parametrize("kind", ["symlink", "open to others"])
def test_a_directory_that_is_not_private_is_refused(tmp_path: Path, kind: str) -> None:
    root = tmp_path / f"nids-{os.getuid()}"
    if kind == "symlink":
        (tmp_path / "elsewhere").mkdir()
        root.symlink_to(tmp_path / "elsewhere")
    else:
        root.mkdir(mode=0o777)
        root.chmod(0o777)
    with pytest.raises(RuntimeError, match="not a private directory"):
        server_dir(tmp_path)


def test_a_slot_outside_the_workers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="slot 2 of 2 workers"):
        Board(tmp_path / "board.i32", 2, 2)
