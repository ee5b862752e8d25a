"""A worker of a `bentoml serve` accepts one connection per wake-up and defers to a less loaded worker: a patch of
asyncio's `BaseSelectorEventLoop._accept_connection`, process-wide, in the worker only (nids.serving.balance has the
board of open-connection counts and the why).

Upstream: bentoml/BentoML#5426 ("Uneven request distribution across workers", open); the SO_REUSEPORT fix proposed
there (PR #5557) was closed unmerged. asyncio's accept callback taking the whole backlog per wake-up is its design
(no issue). SO_REUSEPORT is no patch-free alternative on 1.4.39: the arbiter creates the one listening socket
(`CircusSocket` in _bentoml_impl.server.serving.serve_http, no `so_reuseport`, no setting for it) and hands every
worker its fd; the kernel balances only between sockets each bound by its own worker, which needs BentoML's
worker start changed (what PR #5557 did), a larger patch than this one. Fallback: asyncio's own accept
(connections as the kernel and the first worker awake spread them), logged; also on an event loop that is not
asyncio's selector loop (uvloop).
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import selector_events
from typing import Any

from bentoml import server_context

from nids.serving.balance import Board, board_for_server
from nids.serving.compat import applies

logger = logging.getLogger("nids.serving")
DEFER_SECONDS = 0.02
_accept = selector_events.BaseSelectorEventLoop._accept_connection
UPSTREAM = (_accept, "0cc21edb204919f03ae7965b899521fe8d8714b5b6509e95be8920c9fc38192f")  # CPython 3.11


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
    if not applies("balancing connections across workers", "asyncio's own accept", UPSTREAM):
        return False
    board = board_for_server(workers, index - 1)
    selector_events.BaseSelectorEventLoop._accept_connection = balanced_accept(board)  # type: ignore[method-assign]
    return True
