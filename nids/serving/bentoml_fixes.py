"""Workarounds inside BentoML 1.4.39: a per-request cost (measured in BENCHMARKS.md) and dead workers.

BentoML's TimeoutMiddleware schedules a timer per request and never cancels it, so each request's context
(tracing span, futures, locks) stays alive for the whole traffic timeout. At a few hundred requests per second
every full garbage collection then walks 100k+ extra objects and stalls the event loop for 50-130 ms: p99
spikes and 503s from the batcher. `install()` replaces its `__call__` with the same code plus the cancel.
`restart_dead_workers()`: see its docstring.
The patches apply only to the pinned version; any other version is left untouched (and logged).
"""

from __future__ import annotations

import asyncio
import inspect
import logging

import bentoml
import bentoml.serving
from bentoml._internal.server.http import traffic

from nids.serving.asgi import Message, Receive, Scope, Send

logger = logging.getLogger("nids.bentoml_fixes")
PATCHED_VERSION = "1.4.39"


async def _timeout_middleware_call(self: traffic.TimeoutMiddleware, scope: Scope, receive: Receive, send: Send) -> None:
    """BentoML 1.4.39's TimeoutMiddleware.__call__ with its timer cancelled when the request ends."""
    if scope["type"] not in ("http", "websocket"):
        await self.app(scope, receive, send)
        return
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def started(message: Message) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    request = asyncio.ensure_future(self.app(scope, receive, started))
    try:
        await waiter
    except TimeoutError:
        if request.cancel():
            body = f'{{"error": "Not able to process the request in {self.timeout} seconds"}}'.encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 504, "headers": headers})
            await send({"type": "http.response.body", "body": body})
    else:
        await request
    finally:
        timer.cancel()


def install() -> bool:
    """Patch the pinned BentoML version; True when the patch is in place."""
    if bentoml.__version__ != PATCHED_VERSION:
        logger.warning("bentoml %s is not %s: TimeoutMiddleware left as it is", bentoml.__version__, PATCHED_VERSION)
        return False
    traffic.TimeoutMiddleware.__call__ = _timeout_middleware_call  # type: ignore[method-assign]
    return True


# the one use of running_inside_container() in BentoML 1.4.39 (bentoml/serving.py)
_RESPAWN_FLAG = "respawn=not running_inside_container()"


def restart_dead_workers() -> bool:
    """Let circus restart a dead worker inside a container too; True when dead workers are restarted.

    BentoML 1.4.39 creates its watchers with `respawn=not running_inside_container()` (BENTOML_CONTAINERIZED, set
    by every image it builds), leaving restarts to the orchestrator. But the orchestrator sees a live container:
    the arbiter exits only once every worker is gone, so a worker killed for memory stays dead, its capacity lost
    while /readyz answers 200. Here the check answers "not in a container" to create_watcher, its only caller
    (checked in its source), and circus replaces a dead worker at its next check (every 10 s). Called where the
    service module is imported, which `bentoml serve` does before it creates the watchers. Any other version, or
    a create_watcher without that flag, is left as it is and logged; the replica then answers /readyz 503 while
    a worker is missing (nids.serving.workers), so the balancer drains it instead.
    """
    if not bentoml.serving.running_inside_container():
        return True  # BentoML's own default outside a container
    try:
        patchable = bentoml.__version__ == PATCHED_VERSION and _RESPAWN_FLAG in inspect.getsource(
            bentoml.serving.create_watcher
        )
    except (OSError, TypeError):  # no source to check
        patchable = False
    if not patchable:
        logger.warning(
            "bentoml %s: dead workers are not restarted in this container; /readyz answers 503 while one is missing",
            bentoml.__version__,
        )
        return False
    bentoml.serving.running_inside_container = _never_in_a_container  # type: ignore[assignment]
    return True


def _never_in_a_container() -> bool:
    return False
