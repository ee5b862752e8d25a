"""Connections spread over the workers of one `bentoml serve` (several workers, Python's asyncio event loop).

BentoML 1.4.39's workers all accept from one listening socket they inherit. Each new connection wakes every idle
worker, and asyncio's accept callback takes every connection waiting in the queue at once, so connections opened
close together land on whichever worker woke first: two keep-alive clients sending bulk requests were served by
one worker while the other idled (bentoml/BentoML#5426; half the throughput of a split, BENCHMARKS.md).

`install(workers)` changes how a worker accepts, in the spirit of nginx's `multi_accept off`:
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

import asyncio
import logging
import mmap
import os
from asyncio import selector_events
from pathlib import Path
from typing import Any

from bentoml._internal.context import server_context

from nids.serving.rundir import open_private, server_dir

logger = logging.getLogger("nids.serving")
DEFER_SECONDS = 0.02
SLOTS = 256  # workers per `bentoml serve` the board can hold
BOARD_FILE = "workers.i32"
_accept = selector_events.BaseSelectorEventLoop._accept_connection


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


def _open_connections(server: Any) -> int:
    return int(getattr(server, "_active_count", 0))  # asyncio.Server: transports attached and not yet closed


def _counted(loop: asyncio.AbstractEventLoop, protocol_factory: Any, server: Any, board: Board) -> Any:
    """`protocol_factory` whose connections publish this worker's count once attached and once closed."""

    def publish() -> None:
        board.publish(_open_connections(server))

    def make() -> Any:
        protocol = protocol_factory()
        lost = protocol.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            lost(exc)
            loop.call_soon(publish)  # the server detaches the transport right after

        protocol.connection_lost = connection_lost
        loop.call_soon(publish)  # the transport attaches right after
        return protocol

    return make


def balanced_accept(board: Board) -> Any:
    """An `_accept_connection` for BaseSelectorEventLoop that accepts one connection per wake-up, deferring to a
    less loaded worker of `board`."""

    def accept(
        loop: selector_events.BaseSelectorEventLoop,
        protocol_factory: Any,
        sock: Any,
        sslcontext: Any = None,
        server: Any = None,
        backlog: int = 100,
        *timeouts: Any,
    ) -> None:
        counted = _counted(loop, protocol_factory, server, board)
        if not board.should_defer(_open_connections(server)):
            _accept(loop, counted, sock, sslcontext, server, 1, *timeouts)
            return
        loop._remove_reader(sock.fileno())  # type: ignore[attr-defined]

        def take_it_if_waiting() -> None:
            if sock.fileno() == -1 or (server is not None and not server.is_serving()):
                return  # the server closed meanwhile
            _accept(loop, counted, sock, sslcontext, server, 1, *timeouts)
            again = (protocol_factory, sock, sslcontext, server, backlog, *timeouts)
            loop._add_reader(sock.fileno(), loop._accept_connection, *again)  # type: ignore[attr-defined]

        loop.call_later(DEFER_SECONDS, take_it_if_waiting)

    return accept


def install(workers: int) -> bool:
    """Balance this worker's accepts with the other workers of its server; True when in place (a worker of a
    `bentoml serve` with several workers, on asyncio's selector loop)."""
    index = server_context.worker_index  # 1..workers in a worker process, None elsewhere
    if workers < 2 or index is None:
        return False
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:  # not started yet: the patch applies to the selector loop the server will run
        loop = None
    if loop is not None and not isinstance(loop, selector_events.BaseSelectorEventLoop):
        logger.warning("connections are not balanced across workers: %s is not asyncio's selector loop", loop)
        return False
    board = board_for_server(workers, index - 1)
    selector_events.BaseSelectorEventLoop._accept_connection = balanced_accept(board)  # type: ignore[method-assign]
    return True
