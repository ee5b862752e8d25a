"""Connections spread over the workers of one `bentoml serve` (several workers, Python's asyncio event loop).

BentoML 1.4.39's workers all accept from one listening socket they inherit. Each new connection wakes every idle
worker, and asyncio's accept callback takes every connection waiting in the queue at once, so connections opened
close together land on whichever worker woke first: two keep-alive clients sending bulk requests were served by
one worker while the other idled (bentoml/BentoML#5426; half the throughput of a split, BENCHMARKS.md).

nids.serving.compat.accept changes how a worker accepts, in the spirit of nginx's `multi_accept off`:
- a worker accepts one connection per wake-up, never the whole queue;
- each worker publishes its number of open connections on a small board shared by the workers (a file of
  int32 slots in the server's private 0700 directory, nids.serving.rundir, opened without following symlinks);
  a worker that holds more open connections than the least loaded other worker leaves the new connection in the
  queue for DEFER_SECONDS, for that worker to take, and then accepts it itself if nobody has. A new connection
  waits at most DEFER_SECONDS; balanced workers never defer.
A worker's count is published whenever a connection waits, is accepted and is closed, so a worker whose clients
just left is seen as free at once. A worker on another event loop (uvloop) keeps the default behaviour (logged).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from nids.serving.rundir import open_private, server_dir

SLOTS = 256  # workers per `bentoml serve` the board can hold
BOARD_FILE = "workers.i32"


class Board:
    """Open-connection counts of the workers of one server, one int32 slot per worker, shared through a file."""

    def __init__(self, path: Path, workers: int, slot: int) -> None:
        if not 0 <= slot < workers <= SLOTS:
            raise ValueError(f"worker slot {slot} of {workers} workers (at most {SLOTS})")
        self.path, self.workers, self.slot = path, workers, slot
        fd = open_private(path, os.O_RDWR | os.O_CREAT)
        try:
            if os.fstat(fd).st_size < 4 * SLOTS:
                os.ftruncate(fd, 4 * SLOTS)
            self._map = mmap.mmap(fd, 4 * SLOTS)
        finally:
            os.close(fd)
        self._counts = memoryview(self._map).cast("i")
        self.publish(0)

    def publish(self, connections: int) -> None:
        self._counts[self.slot] = connections

    def least_of_others(self) -> int:
        return min(self._counts[i] for i in range(self.workers) if i != self.slot)

    def should_defer(self, connections: int) -> bool:
        """Publish this worker's count; True when another worker holds fewer connections."""
        self.publish(connections)
        return connections > self.least_of_others()


def board_for_server(workers: int, slot: int, directory: Path | None = None) -> Board:
    """The board of the `bentoml serve` this worker belongs to, in its private directory (nids.serving.rundir)."""
    return Board((directory or server_dir()) / BOARD_FILE, workers, slot)
