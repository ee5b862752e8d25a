"""The private directory of one `bentoml serve`, shared by its workers: the connection board
(nids.serving.balance) and the used WebSocket tickets (nids.serving.tickets).

`<tmp>/nids-<uid>/<pid of the server>/`, both levels created 0700 and checked before use: a directory that is a
symlink, belongs to another user or is open to others is refused (RuntimeError: the feature using it does not
start), so nobody else on the host can plant or read what the workers share. Directories of servers that are gone
are removed. Files inside are opened with O_NOFOLLOW.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path


def private_dir(path: Path) -> Path:
    """`path` as a directory only this user can use (created 0700 if absent); RuntimeError if it is not one."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise RuntimeError(
            f"{path} is not a private directory of this user (a symlink, another user's, or open to others): "
            "remove it, or set TMPDIR to a directory of your own"
        )
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def server_dir(base: Path | None = None, server_pid: int | None = None) -> Path:
    """The private directory of the `bentoml serve` this worker belongs to (its parent process)."""
    root = private_dir((base or Path(tempfile.gettempdir())) / f"nids-{os.getuid()}")
    for stale in root.iterdir():
        if stale.name.isdigit() and not _alive(int(stale.name)):
            shutil.rmtree(stale, ignore_errors=True)
    return private_dir(root / str(server_pid or os.getppid()))


def open_private(path: Path, flags: int) -> int:
    """os.open of a file in a private directory, never through a symlink, created 0600."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
